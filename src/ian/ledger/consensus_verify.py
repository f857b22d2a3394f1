"""Offline check of a node's consensus log against its genesis and its chain store
(``ian node verify`` on a network of several authorities).

What it proves, from the files alone (no peer is asked), reading the log a chunk at a time (it
holds one chunk of blocks and a hash per chain block, never the whole log):

- the consensus log is one hash-linked chain from the genesis (every block hashes to what it
  claims, each names its parent);
- every stored commit certificate verifies: a majority of the authorities in force at its
  height (the genesis's, changed only by the log's own authority-change blocks) signed that
  block in that term;
- every chain block in the store is the payload of a certified data block, in order, signed by
  an authority in force at its height — so every contribution the node serves was committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ian.chain.blocks import InvalidBlockError
from ian.chain.genesis import Genesis
from ian.consensus import (
    Block,
    BlockKind,
    CertificateError,
    CommitCertificate,
    genesis_hash,
    verify_commit_certificate,
)
from ian.ledger.consensus_chain import block_from_payload

__all__ = ["CertifiedLog", "CertifiedReport", "verify_certified_chain"]

CHUNK = 256
"""Blocks read at a time: the check holds one chunk of the log, never all of it."""


class CertifiedLog(Protocol):
    """What the check reads (the node's :class:`~ian.storage.consensus_log.ConsensusLog`)."""

    def last_height(self) -> int: ...

    def blocks(self, first: int, last: int, max_bytes: int | None = None) -> list[Block]: ...

    def certificates(self, low: int, high: int) -> list[CommitCertificate]: ...

    def certified_heights(self, low: int, high: int) -> list[int]: ...


@dataclass
class CertifiedReport:
    ok: bool
    certified_height: int = 0  # highest consensus height a certificate proves committed
    certificates: int = 0
    chain_blocks: int = 0  # chain blocks in the store found certified
    problem: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "certified_height": self.certified_height,
            "certificates": self.certificates,
            "chain_blocks": self.chain_blocks,
            "problem": self.problem,
        }


def verify_certified_chain(
    log: CertifiedLog, genesis: Genesis, store_hashes: list[bytes]
) -> CertifiedReport:
    """Check ``log`` (a node's consensus log, read a chunk at a time) against ``genesis`` and
    the chain store's block hashes (``store_hashes[k]`` is the hash of chain block ``k + 1``)."""
    chain_id = genesis.chain_id()
    report = CertifiedReport(ok=True)

    def fail(problem: str) -> CertifiedReport:
        report.ok = False
        report.problem = problem
        return report

    top = log.last_height()
    beyond = log.certified_heights(top + 1, 2**62)
    if beyond:
        return fail(f"a certificate for height {beyond[0]} is beyond the log")
    members = {a.node_id: a.public_key_bytes for a in genesis.authorities}
    parent = genesis_hash(chain_id)
    # Chain height -> (consensus height, hash) of the data blocks that carry one. Usually one
    # per height; more when a payload that failed re-execution was skipped by every node and
    # the next leader built that height again. Only those under the last certificate count.
    carried: dict[int, list[tuple[int, bytes]]] = {}
    for first in range(1, top + 1, CHUNK):
        last = min(top, first + CHUNK - 1)
        certs = {c.height: c for c in log.certificates(first, last)}
        for block in log.blocks(first, last):
            height = block.height
            if block.hash != block.computed_hash(chain_id) or block.parent_hash != parent:
                return fail(f"consensus block {height} does not hash-link to the one before it")
            parent = block.hash
            if block.change is not None:
                members = block.change.apply(members)
            cert = certs.get(height)
            if cert is not None:
                try:
                    verify_commit_certificate(cert, block, members, chain_id)
                except CertificateError as exc:
                    return fail(str(exc))
                report.certificates += 1
                report.certified_height = height
            if block.kind is not BlockKind.DATA:
                continue
            try:
                chain_block = block_from_payload(block.payload)
            except InvalidBlockError:
                continue  # skipped by every node when it was applied
            if members.get(chain_block.header.sequencer) != chain_block.header.sequencer_key:
                continue  # not an authority's: skipped when applied
            carried.setdefault(chain_block.height, []).append((height, chain_block.hash))
    for k, digest in enumerate(store_hashes, start=1):
        certified = {d for h, d in carried.get(k, ()) if h <= report.certified_height}
        if digest not in certified:
            return fail(
                f"chain block {k} is not a certified block of this node's consensus log"
                + ("" if certified else " (none is certified at that height)")
            )
        report.chain_blocks += 1
    return report
