"""Many concurrent submissions: every one answered, grouped into blocks, roots verifiable."""

from __future__ import annotations

import anyio
import httpx
import pytest

from ian.ledger.recovery import load_chain_state, verify_store

pytestmark = pytest.mark.anyio

TRIVIAL = "TRIVIAL_GOAL"
N = 200


async def test_200_concurrent_submissions_group_commit(start_api, packs) -> None:
    api = await start_api(client_burst=10_000)
    answers: dict[int, httpx.Response] = {}

    async def send(n: int) -> None:
        answers[n] = await api.contribute(packs.body(n, goal_id=TRIVIAL))

    async with anyio.create_task_group() as tg:
        for n in range(N):
            tg.start_soon(send, n)

    assert len(answers) == N
    bad = {n: r.text for n, r in answers.items() if r.status_code != 200}
    assert not bad, bad
    docs = [r.json() for r in answers.values()]
    assert all(d["accepted"] for d in docs)
    assert sorted(d["log_index"] for d in docs) == list(range(N))
    assert len({d["contribution_hash"] for d in docs}) == N

    node = api.node
    # Group commit: at least one block held more than one entry.
    assert 1 <= node.height < N
    status = (await api.client.get("/api/v1/status")).json()
    assert status["height"] == node.height
    assert status["contributions"]["accepted"] == N
    goal = status["goals"][TRIVIAL]
    assert goal["log_size"] == N

    # Each answer's log_index holds exactly that contribution.
    entries: list[dict] = []
    start: int | None = 0
    while start is not None:
        page = (await api.client.get(f"/api/v1/log/{TRIVIAL}?from={start}&limit=1000")).json()
        entries.extend(page["entries"])
        start = page["next"]
    by_index = {e["log_index"]: e for e in entries}
    for n, r in answers.items():
        d = r.json()
        assert by_index[d["log_index"]]["contribution_hash"] == d["contribution_hash"]
        assert by_index[d["log_index"]]["contributor_id"] == f"contributor-{n}"

    report = verify_store(node.store, node.settings.all_goals())
    assert report.ok, report.problem
    assert report.blocks == node.height and report.contributions == N
    assert report.roots[TRIVIAL]["log_root"] == goal["log_root"]
    assert report.roots[TRIVIAL]["log_size"] == N
    assert report.roots[TRIVIAL]["leaderboard_root"] == goal["leaderboard_root"]
    reloaded = load_chain_state(node.store, node.settings.all_goals())
    assert reloaded.goals[TRIVIAL].roots() == node.state.goals[TRIVIAL].roots()
    assert reloaded.head_hash == node.state.head_hash


async def test_block_size_is_bounded(start_api, packs) -> None:
    api = await start_api(client_burst=10_000, block_max_entries=7)
    async with anyio.create_task_group() as tg:
        for n in range(40):
            tg.start_soon(api.contribute, packs.body(n, goal_id=TRIVIAL))
    node = api.node
    assert node.state.goals[TRIVIAL].mmr.size == 40
    assert node.height >= 40 // 7 + 1
    sizes = [
        node.store.block_header(h)[0].goals[TRIVIAL].log_size for h in range(1, node.height + 1)
    ]
    growth = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert sizes[-1] == 40
    assert all(1 <= g <= 7 for g in growth), growth
