"""Pure checks of election and commit certificates, usable by any node (followers included).

A check takes the authority set the caller knows to be in force and the ``chain_id``; it trusts
nothing else in the certificate. It raises :class:`~ian.consensus.errors.CertificateError` naming
the first reason the certificate proves nothing: wrong chain, a statement about something else,
a signer outside the set, a forged signature, or fewer than a majority of distinct authorities.
"""

from __future__ import annotations

from dataclasses import dataclass

from ian.consensus.errors import CertificateError
from ian.consensus.types import (
    AuthoritySet,
    Block,
    CommitCertificate,
    ElectionCertificate,
    Verifier,
)
from ian.identity import Identity, verify_signature

__all__ = [
    "IdentitySigner",
    "majority",
    "verify_commit_certificate",
    "verify_election_certificate",
]


def majority(size: int) -> int:
    """Smallest number of members that is more than half of ``size``."""
    return size // 2 + 1


@dataclass(frozen=True)
class IdentitySigner:
    """A :class:`~ian.consensus.types.Signer` backed by the node's Ed25519 identity."""

    identity: Identity

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def sign(self, data: bytes) -> bytes:
        return self.identity.sign(data)


def _check_quorum(
    signers: list[str], authorities: AuthoritySet, what: str, valid: list[bool]
) -> None:
    seen: set[str] = set()
    for signer, ok in zip(signers, valid, strict=True):
        if signer not in authorities:
            raise CertificateError(f"{what}: {signer} is not an authority at that height")
        if not ok:
            raise CertificateError(f"{what}: the signature of {signer} is invalid")
        seen.add(signer)
    if len(seen) < majority(len(authorities)):
        raise CertificateError(
            f"{what}: {len(seen)} distinct authorities of {len(authorities)}, "
            f"need {majority(len(authorities))}"
        )


def verify_election_certificate(
    cert: ElectionCertificate,
    authorities: AuthoritySet,
    chain_id: str,
    *,
    verifier: Verifier = verify_signature,
) -> None:
    """Check that ``cert`` proves ``cert.candidate`` won ``cert.term`` on ``chain_id``.

    ``authorities`` must be the set in force at ``cert.last_height`` (the candidate's log when it
    ran). Every vote must be a real vote (not a pre-vote) for exactly this candidate, term and
    log position, signed by a distinct member of ``authorities``; together a majority of them.
    """
    what = f"election certificate for term {cert.term}"
    if cert.chain_id != chain_id:
        raise CertificateError(f"{what}: made for another chain")
    valid: list[bool] = []
    for vote in cert.votes:
        if (
            vote.kind != "vote"
            or vote.chain_id != chain_id
            or vote.term != cert.term
            or vote.candidate != cert.candidate
            or vote.last_term != cert.last_term
            or vote.last_height != cert.last_height
        ):
            raise CertificateError(f"{what}: a vote by {vote.voter} is for something else")
        key = authorities.get(vote.voter)
        valid.append(key is not None and verifier(key, vote.signature, vote.signed_bytes()))
    _check_quorum([v.voter for v in cert.votes], authorities, what, valid)


def verify_commit_certificate(
    cert: CommitCertificate,
    block: Block,
    authorities: AuthoritySet,
    chain_id: str,
    *,
    verifier: Verifier = verify_signature,
) -> None:
    """Check that ``cert`` proves ``block`` committed on ``chain_id``.

    ``authorities`` must be the set in force at ``block.height`` (after the changes at heights up
    to and including it). The block must hash to what it claims and be of the certificate's
    term; every ack must be for exactly this block in that term, signed by a distinct member;
    together a majority.
    """
    what = f"commit certificate for height {cert.height}"
    if cert.chain_id != chain_id:
        raise CertificateError(f"{what}: made for another chain")
    if block.hash != block.computed_hash(chain_id):
        raise CertificateError(f"{what}: the block does not hash to {block.hash.hex()[:16]}")
    if (cert.height, cert.block_hash, cert.term) != (block.height, block.hash, block.term):
        raise CertificateError(f"{what}: certifies another block or term")
    valid: list[bool] = []
    for ack in cert.acks:
        if (ack.chain_id, ack.term, ack.height, ack.block_hash) != (
            chain_id,
            cert.term,
            cert.height,
            cert.block_hash,
        ):
            raise CertificateError(f"{what}: an ack by {ack.signer} is for something else")
        key = authorities.get(ack.signer)
        valid.append(key is not None and verifier(key, ack.signature, ack.signed_bytes()))
    _check_quorum([a.signer for a in cert.acks], authorities, what, valid)
