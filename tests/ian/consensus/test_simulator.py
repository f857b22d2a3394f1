"""The simulator over a fixed set of seeds, its determinism, and proof that its invariant
checker catches a broken core."""

from __future__ import annotations

import pytest

from ian.consensus import ConsensusCore, InvariantViolation, VoteRequest
from ian.consensus.simulator import SimConfig, main, run

SEEDS = range(10)


@pytest.mark.parametrize("authorities", [1, 3, 5, 7])
def test_fixed_seeds_keep_every_invariant(authorities: int) -> None:
    acknowledged = 0
    for seed in SEEDS:
        config = SimConfig(
            seed=seed,
            steps=2500,
            authorities=authorities,
            learners=2,
            membership=seed % 2 == 1,
        )
        result = run(config)
        assert result.violation is None
        assert result.elections >= 1 and result.faults > 0
        assert result.leader_after_heal_s is not None
        acknowledged += result.acknowledged
    assert acknowledged > 0  # some seeds are harsh enough (50% loss) that nothing commits


def test_real_ed25519_signatures_run_too() -> None:
    result = run(SimConfig(seed=3, steps=1500, authorities=3, learners=1, ed25519=True))
    assert result.violation is None and result.acknowledged > 0


def test_a_seed_replays_exactly() -> None:
    config = SimConfig(seed=42, steps=2000, authorities=5, learners=1, membership=True)
    assert run(config) == run(config)


class VotesTwicePerTerm(ConsensusCore):
    """Broken on purpose: forgets that a vote is given at most once per term."""

    def _may_grant_vote(self, request: VoteRequest) -> bool:
        return self._log_is_up_to_date(request.last_term, request.last_height)


class IgnoresLogAge(ConsensusCore):
    """Broken on purpose: votes for candidates whose log is behind (Raft §5.4.1)."""

    def _log_is_up_to_date(self, last_term: int, last_height: int) -> bool:
        return True


def _first_violation(core: type[ConsensusCore]) -> InvariantViolation:
    for seed in range(60):
        config = SimConfig(seed=seed, steps=2000, authorities=[3, 5, 7][seed % 3], learners=1)
        try:
            run(config, core)
        except InvariantViolation as exc:
            return exc
    raise AssertionError(f"the checker never caught {core.__name__}")


def test_checker_catches_double_voting_as_an_election_safety_violation() -> None:
    exc = _first_violation(VotesTwicePerTerm)
    assert "election safety" in exc.message
    assert exc.fix is not None and "python -m ian.consensus.simulator --seed" in exc.fix


def test_checker_catches_votes_for_stale_logs_as_lost_committed_blocks() -> None:
    exc = _first_violation(IgnoresLogAge)
    assert "leader completeness" in exc.message or "committed" in exc.message


def test_command_line_prints_one_json_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "7", "--steps", "800", "--authorities", "3"]) == 0
    out = capsys.readouterr().out
    assert '"violation": null' in out and '"seed": 7' in out


def test_soak_prints_a_table_and_a_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--soak", "--seeds", "4", "--steps", "600"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["seed", "N", "M"]
    assert len(lines) == 6 and lines[-1].startswith("{") and '"failures": 0' in lines[-1]
