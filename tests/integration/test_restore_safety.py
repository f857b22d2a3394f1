"""A sequencer restored from an old backup catches up with its followers before it sequences
(CONSENSUS.md, N = 1): it never gives a committed height or log index to anything else."""

from __future__ import annotations

import pytest
from tests.support.nodes import NETWORK_ENV, TRIVIAL_GOAL, contribution, run_ian, wait_same_chain

pytestmark = pytest.mark.integration


def submit(node, body: dict) -> dict:
    r = node.post("/api/v1/contribute", body)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def test_a_restored_sequencer_catches_up_before_it_sequences(ian_nodes, tmp_path) -> None:
    seq, fol = ian_nodes.start_network(2, NETWORK_ENV)
    for i in range(2):
        submit(seq, contribution(i, tag="before-backup"))
    archive = tmp_path / "old.tar.zst"
    made = run_ian("backup", "--data-dir", str(seq.data_dir), "-o", str(archive))
    assert made.returncode == 0, made.stderr
    answers = [submit(seq, contribution(i, tag="after-backup")) for i in range(2, 6)]
    assert [a["log_index"] for a in answers] == [2, 3, 4, 5]
    wait_same_chain(seq, [fol])
    height = seq.status()["height"]
    assert seq.terminate() == 0

    restored = run_ian("restore", str(archive), "--data-dir", str(seq.data_dir), "--yes")
    assert restored.returncode == 0, restored.stderr
    seq = ian_nodes.restart(seq)
    seq.wait_for_msg("caught up with peers before sequencing")
    assert seq.status()["height"] == height  # the followers' blocks, not re-sequenced ones
    # The next contribution continues the log where the network is: index 6, not 2.
    nxt = submit(seq, contribution(99, tag="after-restore"))
    assert nxt["accepted"] and nxt["log_index"] == 6
    view = wait_same_chain(seq, [fol])
    assert view["goals"][TRIVIAL_GOAL]["log_size"] == 7
    status = fol.status()
    assert status["consensus_state"] == "SYNCED"
    assert not list(fol.data_dir.glob("fork-evidence-*.json"))
