"""Shared pieces of the benchmarks: options, inputs, tables, the JSON result file.

Every benchmark prints a table and writes ``bench/results/<name>.json`` (git-ignored). Figures
are medians over a few short runs: the benchmarks share a small machine with test runs, so a
single run is noise. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

STRATEGIES = ("momentum", "mean_reversion", "breakout")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short run (smoke test, ~10 s)")
    parser.add_argument(
        "--json-only", action="store_true", help="print only the JSON document, no table"
    )
    return parser


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100.0 * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def trivial_parameters(i: int) -> bytes:
    """Distinct parameter bytes for the trivial evaluator (any non-empty bytes are valid)."""
    return b"bench-trivial-%d" % i


def demo_parameters(i: int) -> bytes:
    """Distinct, valid demo_trading parameters spread over the whole parameter grid.

    ``nonce`` is an extra key the evaluator ignores: it makes every pack distinct (no dedup)
    without changing the back-test, so roughly the goal's usual share is accepted.
    """
    doc = {
        "strategy": STRATEGIES[i % 3],
        "lookback": 2 + (i * 7) % 199,
        "threshold": ((i * 13) % 51) / 1000.0,
        "position_size": 0.1 + ((i * 3) % 10) / 10.0 * 0.9,
        "nonce": i,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (fsync cost depends on it), from /proc/mounts."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best, kind = "", "unknown"
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and target.startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def environment(tmp_dir: Path | None = None) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": load,
        "tmp_filesystem": filesystem_of(tmp_dir) if tmp_dir else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def render_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table (no dependencies, readable in CI logs)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for k, v in enumerate(row):
            widths[k] = max(widths[k], len(v))
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    for row in cells:
        out.append(
            "  ".join(
                v.ljust(w) if k == 0 else v.rjust(w)
                for k, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_result(name: str, doc: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def emit(name: str, doc: dict[str, Any], tables: Sequence[str], *, json_only: bool) -> None:
    """Write the result file, then print either the tables or the JSON document."""
    path = write_result(name, doc)
    if json_only:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    for table in tables:
        print(table)
        print()
    print(f"results: {path}")


def summarise_py_spy(raw: Path, markers: Sequence[str]) -> dict[str, Any] | None:
    """Read a py-spy ``--format raw`` file: over busy samples (idle waits dropped), own time by
    function, time under each of ``markers`` (frame names), and busy samples per thread."""
    import re
    from collections import Counter

    if not raw.exists():
        return None
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [re.sub(r"\s*\(.*\)$", "", f) for f in stack.split(";")]
        if re.search(r"(?i)idle|select|epoll|poll|wait$|_wait|sleep|acquire", frames[-1]):
            continue  # a thread waiting, not working
        n = int(count)
        total += n
        threads[frames[0] if frames[0].startswith("thread") else "?"] += n
        own[frames[-1]] += n
        for marker in {f for f in frames if f in markers}:
            under[marker] += n

    def share(c: Counter[str], k: int | None = None) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": n, "share_of_busy": n / total if total else 0.0}
            for f, n in c.most_common(k)
        ]

    return {
        "busy_samples": total,
        "own_top": share(own, 15),
        "inclusive": share(under),
        "threads": share(threads),
    }
