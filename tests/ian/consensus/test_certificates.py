"""The pure certificate checks reject every way a certificate can fail to prove its claim."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.ian.consensus.cluster import CHAIN, Cluster

from ian.consensus import (
    AuthorityChange,
    Block,
    BlockKind,
    CertificateError,
    genesis_hash,
    verify_commit_certificate,
    verify_election_certificate,
)
from ian.consensus.simulator import KeyedSigner, keyed_verifier


@pytest.fixture
def cluster() -> Cluster:
    return Cluster(5)


def _block(term: int = 1) -> Block:
    return Block.build(
        CHAIN,
        height=1,
        term=term,
        parent_hash=genesis_hash(CHAIN),
        kind=BlockKind.DATA,
        payload=b"p",
    )


def test_a_majority_of_signed_acks_certifies(cluster: Cluster) -> None:
    block = _block()
    verify_commit_certificate(
        cluster.certify(block, ["a0", "a1", "a2"]), block, cluster.genesis, CHAIN
    )


def test_a_minority_does_not(cluster: Cluster) -> None:
    block = _block()
    with pytest.raises(CertificateError, match="need 3"):
        verify_commit_certificate(
            cluster.certify(block, ["a0", "a1"]), block, cluster.genesis, CHAIN
        )


def test_the_same_signer_twice_counts_once(cluster: Cluster) -> None:
    block = _block()
    cert = cluster.certify(block, ["a0", "a1"])
    cert = replace(cert, acks=(*cert.acks, cert.acks[0]))
    with pytest.raises(CertificateError, match="2 distinct"):
        verify_commit_certificate(cert, block, cluster.genesis, CHAIN)


def test_a_forged_signature_is_rejected(cluster: Cluster) -> None:
    block = _block()
    cert = cluster.certify(block, ["a0", "a1", "a2"])
    forged = replace(cert.acks[2], signature=bytes(64))
    with pytest.raises(CertificateError, match="signature"):
        verify_commit_certificate(
            replace(cert, acks=(*cert.acks[:2], forged)), block, cluster.genesis, CHAIN
        )


def test_another_chain_id_is_rejected(cluster: Cluster) -> None:
    block = _block()
    cert = cluster.certify(block, ["a0", "a1", "a2"])
    with pytest.raises(CertificateError, match="another chain"):
        verify_commit_certificate(replace(cert, chain_id="other"), block, cluster.genesis, CHAIN)
    with pytest.raises(CertificateError):
        verify_commit_certificate(cert, block, cluster.genesis, "other")


def test_acks_for_another_block_or_term_are_rejected(cluster: Cluster) -> None:
    block, other = _block(), _block(term=2)
    cert = cluster.certify(block, ["a0", "a1", "a2"])
    with pytest.raises(CertificateError, match="another block"):
        verify_commit_certificate(cert, other, cluster.genesis, CHAIN)
    tampered = replace(block, payload=b"changed")  # hash no longer matches the contents
    with pytest.raises(CertificateError, match="does not hash"):
        verify_commit_certificate(cert, tampered, cluster.genesis, CHAIN)


def test_signers_of_an_old_authority_set_do_not_count(cluster: Cluster) -> None:
    block = _block()
    cert = cluster.certify(block, ["a0", "a1", "a2"])
    current = dict(cluster.genesis)
    for name in ("a0", "a1"):
        current = AuthorityChange("remove", cluster.id(name)).apply(current)
    with pytest.raises(CertificateError, match="not an authority"):
        verify_commit_certificate(cert, block, current, CHAIN)


def test_election_certificate_checks(cluster: Cluster) -> None:
    cert = cluster.election(3, "a0", ["a0", "a1", "a2"])
    verify_election_certificate(cert, cluster.genesis, CHAIN)
    with pytest.raises(CertificateError, match="need 3"):
        verify_election_certificate(replace(cert, votes=cert.votes[:2]), cluster.genesis, CHAIN)
    with pytest.raises(CertificateError, match="something else"):
        verify_election_certificate(replace(cert, term=4), cluster.genesis, CHAIN)
    with pytest.raises(CertificateError, match="another chain"):
        verify_election_certificate(cert, cluster.genesis, "other")
    pre = replace(cert, votes=tuple(replace(v, kind="pre_vote") for v in cert.votes))
    with pytest.raises(CertificateError, match="something else"):
        verify_election_certificate(pre, cluster.genesis, CHAIN)  # pre-votes elect nobody
    bad = replace(cert.votes[0], signature=bytes(64))
    with pytest.raises(CertificateError, match="signature"):
        verify_election_certificate(
            replace(cert, votes=(bad, *cert.votes[1:])), cluster.genesis, CHAIN
        )


def test_the_keyed_stand_in_rejects_forgeries_too() -> None:
    signer = KeyedSigner("n", b"s" * 32)
    sig = signer.sign(b"data")
    assert keyed_verifier(signer.public_key, sig, b"data")
    assert not keyed_verifier(signer.public_key, sig, b"other")
    assert not keyed_verifier(signer.public_key, bytes(32), b"data")
    assert not keyed_verifier(b"unknown key", sig, b"data")
