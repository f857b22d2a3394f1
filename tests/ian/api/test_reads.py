"""Status, goals, leaderboard, log, policy and peers (ARCHITECTURE §5)."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

from ian.chain.leaderboard import Leaderboard, LeaderboardEntry

pytestmark = pytest.mark.anyio

DEMO = "DEMO_TRADING_AGENT"
TRIVIAL = "TRIVIAL_GOAL"
ZERO = "0" * 64


async def test_node_status_on_a_fresh_node(api) -> None:
    before = time.time()
    r = await api.client.get("/api/v1/status")
    assert r.status_code == 200
    s = r.json()
    identity = json.loads((api.node.datadir.root / "identity.json").read_text())
    assert s["node_id"] == identity["node_id"]
    assert re.fullmatch(r"[0-9a-f]{40}", s["node_id"])
    assert s["role"] == "sequencer"
    assert s["height"] == 0 and s["network_height"] == 0 and s["sync_lag"] == 0
    assert s["head_hash"] == ZERO
    assert s["consensus_state"] in ("ISOLATED", "SYNCING", "SYNCED", "DIVERGED")
    assert s["peers"] == {"connected": 0, "known": 0, "banned": 0}
    assert 0 <= s["uptime_seconds"] < 60
    assert s["started_at"] <= before
    assert s["contributions"] == {"received": 0, "accepted": 0, "rejected": 0}
    assert set(s["goals"]) == {DEMO, TRIVIAL}
    assert s["tau"]["enabled"] is False and s["tau"]["breaker_state"] == "CLOSED"
    assert s["cert_not_after"]
    demo = s["goals"][DEMO]
    assert demo["log_size"] == 0 and demo["log_root"] == ZERO
    assert demo["leaderboard_size"] == 0 and demo["leaderboard_root"] == ZERO
    assert demo["active_policy"] is None


async def test_status_follows_contributions(api, packs) -> None:
    await api.contribute(packs.body(1))
    await api.contribute(packs.body(2))
    await api.contribute(packs.body(3, params=packs.rejected_params))
    await api.contribute(packs.body(1, contributor="dup"))  # 409
    await api.contribute(packs.body(4, goal_id=TRIVIAL))

    s = (await api.client.get("/api/v1/status")).json()
    assert s["height"] == 3
    assert s["head_hash"] == api.node.state.head_hash.hex() != ZERO
    assert s["contributions"] == {"received": 5, "accepted": 3, "rejected": 2}
    g = (await api.client.get(f"/api/v1/status/{DEMO}")).json()
    assert g == s["goals"][DEMO]
    assert g["goal_id"] == DEMO and g["name"]
    assert g["log_size"] == 2 and g["leaderboard_size"] == 2
    assert g["contributions"] == {"received": 4, "accepted": 2, "rejected": 2}
    log = (await api.client.get(f"/api/v1/log/{DEMO}")).json()
    assert g["log_root"] == log["root"]
    board = (await api.client.get(f"/api/v1/leaderboard/{DEMO}")).json()
    assert g["leaderboard_root"] == board["root"]
    leader = board["entries"][0]
    assert g["active_policy"] == {
        "log_index": leader["log_index"],
        "score": leader["score"],
        "contributor_id": leader["contributor_id"],
    }
    assert s["goals"][TRIVIAL]["contributions"] == {"received": 1, "accepted": 1, "rejected": 0}


async def test_unknown_goal_reads_are_404(api, error_of) -> None:
    for path in (
        "/api/v1/status/NOPE",
        "/api/v1/leaderboard/NOPE",
        "/api/v1/log/NOPE",
        "/api/v1/policy/NOPE",
        "/api/v1/proof/NOPE/0",
    ):
        err = error_of(await api.client.get(path), 404, "not_found")
        assert err["field"] == "goal_id", path


async def test_goals_lists_builtin_and_configured(api) -> None:
    r = await api.client.get("/api/v1/goals")
    assert r.status_code == 200
    goals = {g["id"]: g for g in r.json()["goals"]}
    assert set(goals) == {DEMO, TRIVIAL}
    assert goals[DEMO]["evaluator"] == "demo_trading"
    assert goals[DEMO]["thresholds"]["min_reward"] == -0.01
    assert goals[TRIVIAL]["evaluator"] == "trivial"
    assert goals[TRIVIAL]["name"] == "Trivial goal"
    assert goals[TRIVIAL]["description"] == "hash-based metrics"
    assert goals[TRIVIAL]["leaderboard_capacity"] == 100
    assert goals[TRIVIAL]["log_size"] == 0
    assert set(goals[TRIVIAL]["weights"]) == {"reward", "risk", "complexity"}


async def test_leaderboard_is_ranked_by_score_then_log_index(start_api, packs) -> None:
    from ian.chain.goals import GoalSpec

    small = GoalSpec(id="SMALL", evaluator="trivial", leaderboard_capacity=5)
    api = await start_api(goals=[small])
    for n in range(12):
        r = await api.contribute(packs.body(n, goal_id="SMALL"))
        assert r.json()["accepted"] is True
    board = (await api.client.get("/api/v1/leaderboard/SMALL")).json()
    assert board["goal_id"] == "SMALL" and board["capacity"] == 5 and board["size"] == 5
    entries = board["entries"]
    assert [e["rank"] for e in entries] == [1, 2, 3, 4, 5]

    log = (await api.client.get("/api/v1/log/SMALL")).json()["entries"]
    best = sorted(log, key=lambda e: (-e["score"], e["log_index"]))[:5]
    assert [e["log_index"] for e in entries] == [e["log_index"] for e in best]
    assert [e["contribution_hash"] for e in entries] == [e["contribution_hash"] for e in best]
    assert [e["contributor_id"] for e in entries] == [e["contributor_id"] for e in best]
    # The root is that of the documented leaderboard over exactly these entries.
    expected = Leaderboard.from_entries(
        5,
        [
            LeaderboardEntry(
                e["log_index"],
                e["score"],
                bytes.fromhex(e["contribution_hash"]),
                e["contributor_id"],
            )
            for e in log
        ],
    )
    assert board["root"] == expected.root().hex()


async def test_leaderboard_ties_rank_the_earlier_entry_first(api, packs) -> None:
    # Same demo parameters, different metadata: equal scores, different packs.
    for n in range(3):
        assert (await api.contribute(packs.body(n))).json()["accepted"] is True
    entries = (await api.client.get(f"/api/v1/leaderboard/{DEMO}")).json()["entries"]
    assert len({e["score"] for e in entries}) == 1
    assert [e["log_index"] for e in entries] == [0, 1, 2]


async def test_log_pagination(api, packs, error_of) -> None:
    for n in range(7):
        await api.contribute(packs.body(n, goal_id=TRIVIAL))
    seen: list[dict] = []
    start: int | None = 0
    pages = 0
    while start is not None:
        page = (await api.client.get(f"/api/v1/log/{TRIVIAL}?from={start}&limit=3")).json()
        assert page["size"] == 7
        assert len(page["entries"]) <= 3
        seen.extend(page["entries"])
        start = page["next"]
        pages += 1
    assert pages == 3
    assert [e["log_index"] for e in seen] == list(range(7))
    assert [e["contributor_id"] for e in seen] == [f"contributor-{n}" for n in range(7)]
    assert all(e["goal_id"] == TRIVIAL and e["block_height"] >= 1 for e in seen)

    default = (await api.client.get(f"/api/v1/log/{TRIVIAL}")).json()
    assert default["entries"] == seen and default["next"] is None
    past = (await api.client.get(f"/api/v1/log/{TRIVIAL}?from=50")).json()
    assert past["entries"] == [] and past["next"] is None
    exact = (await api.client.get(f"/api/v1/log/{TRIVIAL}?from=4&limit=3")).json()
    assert [e["log_index"] for e in exact["entries"]] == [4, 5, 6]
    assert exact["next"] is None

    for bad, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("from=-1", "from")):
        err = error_of(await api.client.get(f"/api/v1/log/{TRIVIAL}?{bad}"), 400)
        assert err["field"] == field, (bad, err)
    err = error_of(await api.client.get(f"/api/v1/log/{TRIVIAL}?limit=lots"), 400)
    assert err["field"] == "limit"
    # Beyond what the store can hold (a signed 64-bit index): 400 naming the range, not 500.
    too_big = 2**63
    err = error_of(await api.client.get(f"/api/v1/log/{TRIVIAL}?from={too_big}"), 400)
    assert err["field"] == "from" and str(too_big - 1) in err["message"], err
    err = error_of(await api.client.get(f"/api/v1/proof/{TRIVIAL}/{too_big}"), 400)
    assert err["field"] == "log_index" and str(too_big - 1) in err["message"], err
    last = (await api.client.get(f"/api/v1/log/{TRIVIAL}?from={too_big - 1}")).json()
    assert last["entries"] == [] and last["next"] is None


async def test_policy_returns_the_leaders_pack(api, packs, error_of) -> None:
    err = error_of(await api.client.get(f"/api/v1/policy/{TRIVIAL}"), 404, "not_found")
    assert "no accepted contribution" in err["message"]
    bodies = [packs.body(n, goal_id=TRIVIAL) for n in range(6)]
    for b in bodies:
        await api.contribute(b)
    board = (await api.client.get(f"/api/v1/leaderboard/{TRIVIAL}")).json()["entries"]
    p = (await api.client.get(f"/api/v1/policy/{TRIVIAL}")).json()
    leader = board[0]
    assert p["goal_id"] == TRIVIAL
    assert p["log_index"] == leader["log_index"]
    assert p["score"] == leader["score"]
    assert p["contributor_id"] == leader["contributor_id"]
    assert p["contribution_hash"] == leader["contribution_hash"]
    submitted = bodies[leader["log_index"]]["agent_pack"]
    assert p["agent_pack"] == submitted
    assert base64.b64decode(p["agent_pack"]["parameters"]) == packs.raw(
        TRIVIAL, leader["log_index"], None
    )


async def test_peers_lists_nobody_on_a_lone_node(api) -> None:
    r = await api.client.get("/api/v1/peers")
    assert r.status_code == 200
    body = r.json()
    assert body["connected"] == [] and body["known"] == 0 and body["banned"] == 0


async def test_a_log_page_is_the_document_the_model_describes(api, packs) -> None:
    """The log route encodes its page itself (metrics JSON copied from the store): the bytes
    decode to exactly what ``LogResponse`` makes of the same entries, content type included."""
    from ian.api import models as m

    for n in range(6):
        await api.contribute(packs.body(n))  # demo goal: real metrics, some rejected
        await api.contribute(packs.body(n, goal_id=TRIVIAL, contributor=f'ü"\\{n}'))
    for goal in (DEMO, TRIVIAL):
        view = api.node.views[goal]
        for start, limit in ((0, 100), (1, 2), (view.log_size - 1, 5), (view.log_size, 5)):
            r = await api.client.get(f"/api/v1/log/{goal}?from={start}&limit={limit}")
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            entries = api.node.store.log_entries(goal, start, limit)
            nxt = start + len(entries)
            expected = m.LogResponse(
                goal_id=goal,
                size=view.log_size,
                root=view.log_root.hex(),
                entries=entries,
                next=nxt if nxt < view.log_size else None,
            ).model_dump(mode="json")
            assert r.json() == expected, (goal, start, limit)
            assert m.LogResponse.model_validate_json(r.content).model_dump(mode="json") == expected
            # the fields in the model's order too (a client may print them as they come)
            keys = [list(e) for e in json.loads(r.content)["entries"]]
            assert keys == [list(e) for e in expected["entries"]]
