"""Offline check of a node's consensus log against its genesis and its chain store
(``ian node verify`` on a network of several authorities).

What it proves, from the files alone (no peer is asked):

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
from typing import Any

from ian.chain.blocks import InvalidBlockError
from ian.chain.genesis import Genesis
from ian.consensus import (
    BlockKind,
    CertificateError,
    DurableState,
    genesis_hash,
    verify_commit_certificate,
)
from ian.ledger.consensus_chain import block_from_payload

__all__ = ["CertifiedReport", "verify_certified_chain"]


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
    durable: DurableState, genesis: Genesis, store_hashes: list[bytes]
) -> CertifiedReport:
    """Check ``durable`` (a loaded consensus log) against ``genesis`` and the chain store's
    block hashes (``store_hashes[k]`` is the hash of chain block ``k + 1``)."""
    chain_id = genesis.chain_id()
    report = CertifiedReport(ok=True)

    def fail(problem: str) -> CertifiedReport:
        report.ok = False
        report.problem = problem
        return report

    members = {a.node_id: a.public_key_bytes for a in genesis.authorities}
    sets: list[dict[str, bytes]] = []  # the authority set in force at each height
    parent = genesis_hash(chain_id)
    for height, block in enumerate(durable.log, start=1):
        if block.hash != block.computed_hash(chain_id) or block.parent_hash != parent:
            return fail(f"consensus block {height} does not hash-link to the one before it")
        if block.change is not None:
            members = block.change.apply(members)
        sets.append(members)
        parent = block.hash
    for height, cert in sorted(durable.certificates.items()):
        if height > len(durable.log):
            return fail(f"a certificate for height {height} is beyond the log")
        try:
            verify_commit_certificate(cert, durable.log[height - 1], sets[height - 1], chain_id)
        except CertificateError as exc:
            return fail(str(exc))
        report.certificates += 1
        report.certified_height = height
    # Chain height -> the certified payloads for it. Usually one; more when a payload that
    # failed re-execution was skipped by every node and the next leader built that height again.
    certified: dict[int, set[bytes]] = {}
    for height in range(1, report.certified_height + 1):
        block = durable.log[height - 1]
        if block.kind is not BlockKind.DATA:
            continue
        try:
            chain_block = block_from_payload(block.payload)
        except InvalidBlockError:
            continue  # skipped by every node when it was applied
        if sets[height - 1].get(chain_block.header.sequencer) != chain_block.header.sequencer_key:
            continue  # not an authority's: skipped when applied
        certified.setdefault(chain_block.height, set()).add(chain_block.hash)
    for k, digest in enumerate(store_hashes, start=1):
        if digest not in certified.get(k, ()):
            return fail(
                f"chain block {k} is not a certified block of this node's consensus log"
                + ("" if k in certified else " (none is certified at that height)")
            )
        report.chain_blocks += 1
    return report
