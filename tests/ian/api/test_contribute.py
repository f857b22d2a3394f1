"""POST /api/v1/contribute: accepted, rejected and refused submissions (ARCHITECTURE §5, §8)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading

import httpx
import pytest

from ian.chain import mmr
from ian.chain.hashing import canonical_json, pack_hash
from ian.ledger.recovery import verify_store

pytestmark = pytest.mark.anyio

DEMO = "DEMO_TRADING_AGENT"
TRIVIAL = "TRIVIAL_GOAL"


async def test_accepted_contribution_is_durable_and_provable(api, packs) -> None:
    body = packs.body(1)
    r = await api.contribute(body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["accepted"] is True
    assert doc["rejection_type"] is None
    assert doc["log_index"] == 0
    assert isinstance(doc["score"], float)
    assert set(doc["metrics"]) >= {"reward", "risk", "complexity", "sharpe_ratio", "max_drawdown"}
    chash = doc["contribution_hash"]
    assert len(chash) == 64 and bytes.fromhex(chash)

    # Durable before the answer: the store itself already holds it.
    assert api.node.store.log_size(DEMO) == 1
    assert api.node.store.log_entry(DEMO, 0).contribution_hash.hex() == chash

    status = (await api.client.get(f"/api/v1/status/{DEMO}")).json()
    root, size = bytes.fromhex(status["log_root"]), status["log_size"]
    assert size == 1

    p = (await api.client.get(f"/api/v1/proof/{DEMO}/0")).json()
    assert p["size"] == size and p["root"] == status["log_root"]
    leaf = bytes.fromhex(p["leaf"])
    assert leaf == mmr.leaf_hash(bytes.fromhex(chash))
    proof = mmr.InclusionProof(
        leaf_index=p["log_index"],
        size=p["size"],
        path=tuple(bytes.fromhex(h) for h in p["path"]),
        peaks=tuple(bytes.fromhex(h) for h in p["peaks"]),
    )
    assert mmr.verify_inclusion(root, leaf, proof, size=size)


async def test_contribution_hash_recomputes_from_log_entry(api, packs) -> None:
    """A third party recomputes pack_hash and contribution_hash from documented encodings."""
    body = packs.body(5, seed=123456789)
    r = await api.contribute(body)
    assert r.json()["accepted"] is True
    entry = (await api.client.get(f"/api/v1/log/{DEMO}")).json()["entries"][0]

    pack = body["agent_pack"]
    expected_pack = hashlib.sha256(
        canonical_json(
            {
                "metadata": pack["metadata"],
                "parameters": pack["parameters"],
                "version": pack["version"],
            }
        )
    ).hexdigest()
    assert entry["pack_hash"] == expected_pack
    assert (
        entry["pack_hash"]
        == pack_hash(pack["version"], base64.b64decode(pack["parameters"]), pack["metadata"]).hex()
    )

    doc = {
        "contributor_id": entry["contributor_id"],
        "goal_id": entry["goal_id"],
        "metrics": entry["metrics"],
        "pack_hash": entry["pack_hash"],
        "score": entry["score"],
        "seed": entry["seed"],
    }
    recomputed = hashlib.sha256(
        json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    ).hexdigest()
    assert recomputed == entry["contribution_hash"] == r.json()["contribution_hash"]
    assert entry["seed"] == 123456789
    assert entry["contributor_id"] == body["contributor_id"]
    assert entry["version"] == "1.0"


async def test_every_proof_verifies_against_the_status_root(api, packs) -> None:
    for n in range(7):  # 7 leaves: three peaks, so proofs carry other peaks too
        r = await api.contribute(packs.body(n, goal_id=TRIVIAL))
        assert r.json()["log_index"] == n
    status = (await api.client.get(f"/api/v1/status/{TRIVIAL}")).json()
    root, size = bytes.fromhex(status["log_root"]), status["log_size"]
    assert size == 7
    log = (await api.client.get(f"/api/v1/log/{TRIVIAL}")).json()["entries"]
    for i in range(size):
        p = (await api.client.get(f"/api/v1/proof/{TRIVIAL}/{i}")).json()
        assert p["entry"] == log[i]
        leaf = mmr.leaf_hash(bytes.fromhex(log[i]["contribution_hash"]))
        proof = mmr.InclusionProof(
            leaf_index=i,
            size=size,
            path=tuple(bytes.fromhex(h) for h in p["path"]),
            peaks=tuple(bytes.fromhex(h) for h in p["peaks"]),
        )
        assert mmr.verify_inclusion(root, leaf, proof, size=size), i
        # The same proof must not verify another leaf or index.
        other = mmr.leaf_hash(bytes.fromhex(log[(i + 1) % size]["contribution_hash"]))
        assert not mmr.verify_inclusion(root, other, proof, size=size)


async def test_proof_outside_the_log_is_404(api, packs, error_of) -> None:
    await api.contribute(packs.body(1))
    for index in (1, 99):
        err = error_of(await api.client.get(f"/api/v1/proof/{DEMO}/{index}"), 404, "not_found")
        assert err["field"] == "log_index"
    # An index no log can have is bad input (400), like ?from=-1 on the log.
    err = error_of(await api.client.get(f"/api/v1/proof/{DEMO}/-1"), 400)
    assert err["field"] == "log_index"
    error_of(await api.client.get("/api/v1/proof/NOPE/0"), 404, "not_found")
    err = error_of(await api.client.get(f"/api/v1/proof/{DEMO}/abc"), 400)
    assert err["field"] == "log_index"


async def test_threshold_rejection_is_200_not_accepted(api, packs) -> None:
    r = await api.contribute(packs.body(1, params=packs.rejected_params))
    assert r.status_code == 200
    doc = r.json()
    assert doc["accepted"] is False
    assert doc["rejection_type"] == "threshold"
    assert "min_reward" in doc["reason"]
    assert doc["log_index"] is None and doc["contribution_hash"] is None
    assert doc["metrics"]["reward"] < -0.01
    assert api.node.store.log_size(DEMO) == 0
    assert api.node.height == 0  # no block for a batch without accepted entries


async def test_duplicate_pack_is_409(api, packs, error_of) -> None:
    assert (await api.contribute(packs.body(1))).json()["accepted"] is True
    # Same pack, different contributor and seed: still the same agent pack.
    again = packs.body(1, contributor="copycat", seed=99)
    err = error_of(await api.contribute(again), 409, "duplicate")
    assert err["field"] == "agent_pack"
    # The same parameters with other metadata are a different pack.
    assert (await api.contribute(packs.body(2))).json()["accepted"] is True


async def test_duplicates_in_one_batch_only_one_wins(api, packs) -> None:
    import anyio

    results: list[httpx.Response] = []

    async def send(i: int) -> None:
        results.append(await api.contribute(packs.body(1, contributor=f"racer-{i}")))

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(send, i)
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409, 409, 409, 409], [r.text for r in results]
    assert api.node.store.log_size(DEMO) == 1


class GatedCountingEvaluator:
    """The goal's real evaluator, counting the packs it evaluates; the pack ``gate`` waits
    (in the sequencer's worker thread) until :attr:`release` is set."""

    def __init__(self, inner, gate: bytes) -> None:
        self.inner = inner
        self.name = inner.name
        self.costly = inner.costly
        self.gate = gate
        self.entered = threading.Event()
        self.release = threading.Event()
        self.evaluated: list[bytes] = []

    def check(self, parameters, metadata):
        return self.inner.check(parameters, metadata)

    def evaluate(self, parsed):
        self.evaluated.append(parsed)
        if parsed == self.gate:
            self.entered.set()
            self.release.wait(timeout=20)
        return self.inner.evaluate(parsed)


@pytest.mark.parametrize("workers", [1, 2])  # sealed in series; with a pool, pipelined
async def test_duplicates_are_not_evaluated_and_still_409(
    start_api, packs, error_of, workers
) -> None:
    import anyio

    api = await start_api(evaluation_workers=workers)
    goal = api.node.state.goals[TRIVIAL]
    counting = GatedCountingEvaluator(goal.evaluator, gate=b"trivial pack 0")
    goal.evaluator = counting
    ok = await api.contribute(packs.body(1, goal_id=TRIVIAL))
    assert ok.status_code == 200 and ok.json()["accepted"] is True
    assert counting.evaluated == [b"trivial pack 1"]

    # Already stored: refused as before (409 duplicate, on agent_pack), not evaluated.
    dup = await api.contribute(packs.body(1, goal_id=TRIVIAL, contributor="copycat", seed=9))
    err = error_of(dup, 409, "duplicate")
    assert err["field"] == "agent_pack"
    pack1 = pack_hash("1.0", b"trivial pack 1", {"n": 1})
    assert err["message"] == f"agent pack {pack1.hex()} was already accepted for {TRIVIAL}"
    assert counting.evaluated == [b"trivial pack 1"]

    # Three copies of one pack in one batch: queued while the block before them is being
    # evaluated (held at the gate), so the sequencer takes them together.
    results: dict[str, httpx.Response] = {}

    async def send(name: str, body: dict) -> None:
        results[name] = await api.contribute(body)

    receive = api.node.sequencer._receive
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, "gate", packs.body(0, goal_id=TRIVIAL))
            assert await anyio.to_thread.run_sync(counting.entered.wait, 10)
            for i in range(3):
                tg.start_soon(send, f"twin{i}", packs.body(2, goal_id=TRIVIAL, contributor=f"t{i}"))
            for _ in range(1000):  # queued: nothing to wait on but the stream's state
                if receive.statistics().current_buffer_used == 3:
                    break
                await anyio.sleep(0.01)
            assert receive.statistics().current_buffer_used == 3
            counting.release.set()
    finally:
        counting.release.set()
    assert results["gate"].json()["accepted"] is True
    twins = sorted((r.status_code for k, r in results.items() if k != "gate"))
    assert twins == [200, 409, 409]
    for r in results.values():
        if r.status_code == 409:
            assert error_of(r, 409, "duplicate")["field"] == "agent_pack"
    assert counting.evaluated == [b"trivial pack 1", b"trivial pack 0", b"trivial pack 2"]

    # Each duplicate counted once, as a refusal.
    text = (await api.client.get("/metrics")).text
    line = re.search(r'^ian_contributions_rejected_total\{reason="duplicate"\} (\S+)$', text, re.M)
    assert line is not None and float(line.group(1)) == 3
    assert api.node.intake.total.rejected == 3 and api.node.intake.total.accepted == 3
    assert api.node.intake.counters[TRIVIAL].rejected == 3
    assert api.node.store.log_size(TRIVIAL) == 3


async def test_malformed_json_is_400(api, error_of) -> None:
    for raw in (b"{nope", b"", b"\xff\xfe"):
        r = await api.client.post(
            "/api/v1/contribute", content=raw, headers={"content-type": "application/json"}
        )
        error_of(r, 400, "malformed")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("goal_id"), "goal_id"),
        (lambda b: b.pop("contributor_id"), "contributor_id"),
        (lambda b: b.pop("agent_pack"), "agent_pack"),
        (lambda b: b["agent_pack"].pop("parameters"), "agent_pack.parameters"),
        (lambda b: b["agent_pack"].pop("version"), "agent_pack.version"),
        (lambda b: b.update(seed="soon"), "seed"),
        (lambda b: b.update(seed=1.5), "seed"),
        (lambda b: b.update(seed=-1), "seed"),
        (lambda b: b.update(seed=True), "seed"),
        (lambda b: b.update(seed="5"), "seed"),
        (lambda b: b.update(seed=2**63), "seed"),
        (lambda b: b.update(contributor_id=""), "contributor_id"),
        (lambda b: b.update(contributor_id="x" * 129), "contributor_id"),
        (lambda b: b.update(goal_id=17), "goal_id"),
        (lambda b: b["agent_pack"].update(parameters=12), "agent_pack.parameters"),
        (lambda b: b["agent_pack"].update(version=""), "agent_pack.version"),
        (lambda b: b["agent_pack"].update(version="v" * 65), "agent_pack.version"),
        (lambda b: b["agent_pack"].update(metadata=[1, 2]), "agent_pack.metadata"),
        (
            lambda b: b["agent_pack"].update(metadata={f"k{i}": i for i in range(101)}),
            "agent_pack.metadata",
        ),
        (lambda b: b["agent_pack"].update(extra=1), "agent_pack.extra"),
        (lambda b: b.update(surprise=True), "surprise"),
    ],
    ids=[
        "no-goal_id",
        "no-contributor_id",
        "no-agent_pack",
        "no-parameters",
        "no-version",
        "seed-text",
        "seed-float",
        "seed-negative",
        "seed-bool",
        "seed-numeric-string",
        "seed-2**63",
        "contributor-empty",
        "contributor-too-long",
        "goal_id-int",
        "parameters-int",
        "version-empty",
        "version-too-long",
        "metadata-list",
        "metadata-101-keys",
        "pack-extra-key",
        "body-extra-key",
    ],
)
async def test_invalid_fields_are_400_naming_the_field(api, packs, error_of, mutate, field) -> None:
    body = packs.body(1)
    mutate(body)
    err = error_of(await api.contribute(body), 400)
    assert err["field"] == field, err
    assert err["code"] in ("invalid_input", "malformed")
    assert api.node.store.log_size(DEMO) == 0


async def test_body_that_is_not_an_object_is_400_with_a_readable_message(api, error_of) -> None:
    for raw in (b"[]", b"42", b'"text"', b"null"):
        err = error_of(await api.client.post("/api/v1/contribute", content=raw), 400)
        assert not err["message"].startswith("None"), err


@pytest.mark.parametrize("parameters", ["not base64!", "abc", "YWJj\n", "", "////====x"])
async def test_bad_base64_is_400_on_parameters(api, packs, error_of, parameters) -> None:
    body = packs.body(1)
    body["agent_pack"]["parameters"] = parameters
    err = error_of(await api.contribute(body), 400, "invalid_input")
    assert err["field"] == "agent_pack.parameters"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (
            {**{"strategy": "momentum", "threshold": 0.0, "position_size": 0.5}, "lookback": 500},
            "agent_pack.parameters.lookback",
        ),
        (
            {"strategy": "momentum", "lookback": 1, "threshold": 0.0, "position_size": 0.5},
            "agent_pack.parameters.lookback",
        ),
        (
            {"strategy": "yolo", "lookback": 5, "threshold": 0.0, "position_size": 0.5},
            "agent_pack.parameters.strategy",
        ),
        (
            {"strategy": "momentum", "lookback": 5, "threshold": -1, "position_size": 0.5},
            "agent_pack.parameters.threshold",
        ),
        (
            {"strategy": "momentum", "lookback": 5, "threshold": 0.0, "position_size": 0},
            "agent_pack.parameters.position_size",
        ),
        (
            {"strategy": "momentum", "lookback": 5, "threshold": 0.0, "position_size": 1.5},
            "agent_pack.parameters.position_size",
        ),
        (
            {"strategy": "momentum", "threshold": 0.0, "position_size": 0.5},
            "agent_pack.parameters.lookback",
        ),
    ],
)
async def test_invalid_demo_parameters_are_400_naming_the_key(
    api, packs, error_of, params, field
) -> None:
    err = error_of(await api.contribute(packs.body(1, params=params)), 400, "invalid_input")
    assert err["field"] == field, err


async def test_demo_parameters_that_are_not_json_are_400(api, packs, error_of) -> None:
    body = packs.body(1)
    body["agent_pack"]["parameters"] = base64.b64encode(b"\x00not json").decode()
    err = error_of(await api.contribute(body), 400, "invalid_input")
    assert err["field"] == "agent_pack.parameters"


async def test_unknown_goal_is_404(api, packs, error_of) -> None:
    err = error_of(await api.contribute(packs.body(1, goal_id="NO_SUCH_GOAL")), 404, "not_found")
    assert err["field"] == "goal_id"


async def test_oversize_requests_are_413(start_api, packs, error_of) -> None:
    api = await start_api(max_request_bytes=1024, max_parameters_bytes=64)
    big_params = packs.body(1)
    big_params["agent_pack"]["parameters"] = base64.b64encode(b"p" * 100).decode()
    err = error_of(await api.contribute(big_params), 413, "payload_too_large")
    assert err["field"] == "agent_pack.parameters"

    big_body = packs.body(2, goal_id=TRIVIAL)
    big_body["agent_pack"]["metadata"] = {"pad": "x" * 2000}
    error_of(await api.contribute(big_body), 413, "payload_too_large")

    # Without a Content-Length header (chunked upload) the limit holds too.
    async def chunks():
        for _ in range(4):
            yield b" " * 600

    r = await api.client.post(
        "/api/v1/contribute", content=chunks(), headers={"content-type": "application/json"}
    )
    error_of(r, 413, "payload_too_large")

    # Just under the limits is fine.
    ok = packs.body(3, goal_id=TRIVIAL)
    ok["agent_pack"]["parameters"] = base64.b64encode(b"q" * 64).decode()
    r = await api.contribute(ok)
    assert r.status_code == 200 and r.json()["accepted"] is True


async def test_contributor_rate_limit_burst_then_429(api, packs, error_of) -> None:
    answers = [
        await api.contribute(packs.body(n, goal_id=TRIVIAL, contributor="eager")) for n in range(11)
    ]
    assert [r.status_code for r in answers[:10]] == [200] * 10
    err = error_of(answers[10], 429, "rate_limited")
    assert err["field"] == "contributor_id"
    retry = int(answers[10].headers["retry-after"])
    assert retry >= 1
    # Another contributor from the same address is not limited.
    r = await api.contribute(packs.body(11, goal_id=TRIVIAL, contributor="patient"))
    assert r.status_code == 200
    metrics = (await api.client.get("/metrics")).text
    assert 'ian_contributions_rejected_total{reason="rate_limited"} 1.0' in metrics
    assert "ian_rate_limit_violations_total 1.0" in metrics


async def test_client_address_rate_limit(start_api, packs, error_of) -> None:
    api = await start_api(client_burst=3, client_rate=0.01)
    a = await api.client_from("192.0.2.10")
    b = await api.client_from("192.0.2.11")
    codes = [
        (await a.post("/api/v1/contribute", json=packs.body(n, goal_id=TRIVIAL))).status_code
        for n in range(3)
    ]
    assert codes == [200, 200, 200]
    r = await a.post("/api/v1/contribute", json=packs.body(3, goal_id=TRIVIAL))
    error_of(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    # Limited before the body is read: even garbage gets 429, not 400.
    error_of(await a.post("/api/v1/contribute", content=b"{garbage"), 429, "rate_limited")
    r = await b.post("/api/v1/contribute", json=packs.body(4, goal_id=TRIVIAL))
    assert r.status_code == 200, r.text


async def test_forwarded_for_is_ignored_from_untrusted_clients(start_api, packs, error_of) -> None:
    api = await start_api(client_burst=1, client_rate=0.01)
    c = await api.client_from("198.51.100.7")
    r = await c.post(
        "/api/v1/contribute",
        json=packs.body(0, goal_id=TRIVIAL),
        headers={"x-forwarded-for": "203.0.113.1"},
    )
    assert r.status_code == 200
    r = await c.post(
        "/api/v1/contribute",
        json=packs.body(1, goal_id=TRIVIAL),
        headers={"x-forwarded-for": "203.0.113.2"},
    )
    error_of(r, 429, "rate_limited")


async def test_forwarded_for_is_believed_from_a_trusted_proxy(start_api, packs, error_of) -> None:
    api = await start_api(client_burst=1, client_rate=0.01, trusted_proxies=["10.0.0.0/8"])
    proxy = await api.client_from("10.9.8.7")
    for n, client_ip in enumerate(("203.0.113.1", "203.0.113.2")):
        r = await proxy.post(
            "/api/v1/contribute",
            json=packs.body(n, goal_id=TRIVIAL),
            headers={"x-forwarded-for": client_ip},
        )
        assert r.status_code == 200, r.text
    r = await proxy.post(
        "/api/v1/contribute",
        json=packs.body(5, goal_id=TRIVIAL),
        headers={"x-forwarded-for": "203.0.113.1"},
    )
    error_of(r, 429, "rate_limited")


async def test_api_token_guards_contribute_when_set(start_api, packs, error_of) -> None:
    api = await start_api(api_token="s3cret-token")
    r = await api.contribute(packs.body(1))
    error_of(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    error_of(
        await api.contribute(packs.body(1), headers={"authorization": "Bearer wrong"}),
        403,
        "forbidden",
    )
    error_of(
        await api.contribute(packs.body(1), headers={"authorization": "Basic czNjcmV0"}),
        401,
        "unauthorized",
    )
    r = await api.contribute(packs.body(1), headers={"authorization": "Bearer s3cret-token"})
    assert r.status_code == 200 and r.json()["accepted"] is True
    # Reads stay open.
    assert (await api.client.get("/api/v1/status")).status_code == 200


async def test_contribute_is_open_without_a_configured_token(api, packs) -> None:
    # The data dir's generated api_token is for admin routes only (§5).
    assert api.node.admin_token
    r = await api.contribute(packs.body(1))
    assert r.status_code == 200


async def test_shutting_down_sequencer_answers_503(api, packs, error_of) -> None:
    api.node.sequencer.close()
    r = await api.contribute(packs.body(1))
    error_of(r, 503, "unavailable")
    assert int(r.headers["retry-after"]) >= 1


async def test_no_request_gets_a_500(api, packs) -> None:
    """A grab bag of hostile bodies: each is answered with a 4xx JSON error."""
    bodies: list[bytes] = [
        b'{"goal_id": null}',
        b'{"goal_id": "DEMO_TRADING_AGENT", "agent_pack": null, "contributor_id": "a"}',
        b'{"goal_id": "DEMO_TRADING_AGENT", "agent_pack": {"version": "1", "parameters": "'
        + base64.b64encode(b"[1,2,3]")
        + b'", "metadata": {}}, "contributor_id": "a"}',
        b'{"goal_id": "DEMO_TRADING_AGENT", "agent_pack": {"version": "1", "parameters": "'
        + base64.b64encode(b'{"strategy": "momentum", "lookback": 2.5}')
        + b'", "metadata": {}}, "contributor_id": "b"}',
        b'{"goal_id": "DEMO_TRADING_AGENT", "agent_pack": {"version": "1", "parameters": "'
        + base64.b64encode(b"1e999")
        + b'", "metadata": {}}, "contributor_id": "c"}',
        b'{"goal_id": "DEMO_TRADING_AGENT", "agent_pack": {"version": "1", "parameters": "'
        + base64.b64encode(
            b'{"strategy":"momentum","lookback":5,"threshold":NaN,"position_size":0.5}'
        )
        + b'", "metadata": {}}, "contributor_id": "d"}',
        b'{"goal_id": "TRIVIAL_GOAL", "agent_pack": {"version": "1", "parameters": "AA==", '
        b'"metadata": {"x": NaN}}, "contributor_id": "e"}',
        b'{"goal_id": "' + b"G" * 5000 + b'"}',
        b"[" * 10000 + b"]" * 10000,
    ]
    for raw in bodies:
        r = await api.client.post("/api/v1/contribute", content=raw)
        assert 400 <= r.status_code < 500, (raw[:80], r.status_code, r.text)
        assert set(r.json()["error"]) == {"code", "message", "field"}
    report = verify_store(api.node.store, api.node.settings.all_goals())
    assert report.ok


async def test_an_unexpected_error_is_a_500_counted_as_rejected(
    api, packs, error_of, monkeypatch
) -> None:
    """A contribution stopped by a bug (not a request error) gets the JSON 500, and is counted
    as rejected (``reason="internal"``): received = accepted + rejected still holds."""

    async def broken(c) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api.node.sequencer, "submit", broken)
    total = api.node.intake.total
    received, accepted, rejected = total.received, total.accepted, total.rejected
    r = await api.contribute(packs.body(1))
    error_of(r, 500, "internal")
    assert (total.received, total.accepted, total.rejected) == (
        received + 1,
        accepted,
        rejected + 1,
    )
    goal = api.node.intake.counters[DEMO]
    assert goal.received == goal.accepted + goal.rejected == 1
    metrics = (await api.client.get("/metrics")).text
    assert 'ian_contributions_rejected_total{reason="internal"} 1.0' in metrics


async def test_an_unexpected_error_after_admission_elsewhere_is_counted_too(
    api, packs, monkeypatch
) -> None:
    """The path of the API fronts' requests (admitted at once, decided later): a bug when the
    contribution is queued, or in the answer that comes back, is a 500 counted as rejected."""
    from ian.api.routes.contribute import Admitted, admit_now, decide_soon

    total = api.node.intake.total
    answers: list = []

    def refuse_to_queue(c, on_done) -> None:
        raise RuntimeError("a bug")

    def answer_with_a_bug(c, on_done) -> None:
        on_done(None, RuntimeError("a bug"))

    for n, submit_soon in enumerate((refuse_to_queue, answer_with_a_bug)):
        monkeypatch.setattr(api.node, "submit_soon", submit_soon)
        body = json.dumps(packs.body(10 + n)).encode()
        admitted = admit_now(api.node, "127.0.0.1", {}, body)
        assert isinstance(admitted, Admitted)
        decide_soon(api.node, admitted, answers.append)
        assert answers[-1].status_code == 500
        assert json.loads(answers[-1].body)["error"]["code"] == "internal"
        assert total.received == total.accepted + total.rejected == n + 1


async def test_a_client_that_leaves_mid_body_is_malformed_not_an_error(api, packs, caplog) -> None:
    """A client can close its connection in the middle of its body at any rate: that is a
    malformed request (counted so), not the node's error (no ERROR line, no 500 counted)."""
    body = json.dumps(packs.body(1)).encode()
    parts = [
        {"type": "http.request", "body": body[:20], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return parts.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/contribute",
        "raw_path": b"/api/v1/contribute",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 40000),
        "server": ("ian.test", 80),
    }
    total = api.node.intake.total
    with caplog.at_level("ERROR", logger="ian.api"):
        await api.app(scope, receive, send)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "malformed"
    assert (total.received, total.rejected) == (1, 1)
    metrics = (await api.client.get("/metrics")).text
    assert 'ian_contributions_rejected_total{reason="malformed"} 1.0' in metrics
    assert 'ian_contributions_rejected_total{reason="internal"} 0.0' in metrics


async def test_the_fast_path_answers_as_the_documented_route(api, packs) -> None:
    """The node serves ``POST /api/v1/contribute`` in front of the framework; the route the
    OpenAPI document describes answers the same requests the same way (an accepted pack, a
    duplicate, a malformed body, a banned client)."""
    from ian.api.app import create_app

    route = create_app(api.node)  # the framework app alone: the route answers
    assert api.app.app is not route and type(api.app).__name__ == "ContributeFastPath"
    api.node.peer_book.ban("203.0.113.9", seconds=600, reason="test")
    answers = []
    for app, n in ((api.app, 1), (route, 2)):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ian.test"
        ) as client:
            ok = await client.post("/api/v1/contribute", json=packs.body(n))
            again = await client.post("/api/v1/contribute", json=packs.body(n))
            bad = await client.post("/api/v1/contribute", content=b"{")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 5000)),
            base_url="http://ian.test",
        ) as banned_client:
            banned = await banned_client.post("/api/v1/contribute", json=packs.body(n + 10))
        answers.append(
            [
                (ok.status_code, sorted(ok.json())),
                (again.status_code, again.json()["error"]["code"]),
                (bad.status_code, bad.json()["error"]["code"]),
                (banned.status_code, banned.json()["error"]["code"]),
            ]
        )
    assert answers[0] == answers[1]
    assert answers[0][0][0] == 200 and answers[0][1][0] == 409 and answers[0][3][0] == 403
