"""Memory and outcome of a node under the hostile-client attacks, against real node processes.

Runs the integration tests that mount each attack on loopback (pytest, real ``ian node run``
processes, real TLS) with ``IAN_ATTACK_REPORT`` set, and prints what each one recorded: the
node's RSS before the attack, its peak during it (sampled every 50 ms) and after, and the
outcome. The tests themselves assert the bounds; this script only collects the figures.

Writes bench/results/hostile.json. Usage: python bench/hostile_bench.py [--json-only]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import base_parser, emit, environment, render_table

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/integration/test_unread_replies.py",
    "tests/integration/test_hostile_peers.py::test_big_frame_before_hello_is_refused_at_once",
    "tests/integration/test_hostile_peers.py::test_junk_in_valid_frames_builds_nothing",
    "tests/integration/test_http_limits.py::test_a_huge_header_is_431_and_memory_stays_flat",
    "tests/integration/test_hostile_floods.py",
]


def run_attacks(report: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "IAN_ATTACK_REPORT": str(report)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    done = subprocess.run([*cmd, *TESTS], cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the attack tests failed (exit {done.returncode}); no figures")
    return [json.loads(line) for line in report.read_text().splitlines() if line.strip()]


def mib(kib: int | None) -> float:
    return float("nan") if kib is None else kib / 1024


def main() -> None:
    args = base_parser(__doc__ or "").parse_args()
    with tempfile.TemporaryDirectory(prefix="ian-hostile-") as tmp:
        rows = run_attacks(Path(tmp) / "report.jsonl")
    table = render_table(
        "node under attack (RSS MiB; one node process on loopback)",
        ["attack", "before", "peak", "after", "outcome"],
        [
            [
                r["attack"],
                mib(r.get("before_kib")),
                mib(r.get("peak_kib")),
                mib(r.get("after_kib")),
                r["outcome"],
            ]
            for r in rows
        ],
    )
    emit(
        "hostile",
        {"environment": environment(), "attacks": rows},
        [table],
        json_only=args.json_only,
    )


if __name__ == "__main__":
    main()
