"""Start-up time of the `ian` CLI: what an operator waits for before anything happens.

Runs each command N times as a fresh process (subprocess + time.perf_counter, wall clock) and
reports median / min / p90 in milliseconds, plus the CPU time the children used (less sensitive
to a busy machine than wall time). Each command first runs once untimed, with bytecode writing
allowed (``PYTHONDONTWRITEBYTECODE`` is dropped from the children's environment): an installed
``ian`` has its ``.pyc`` files, and an editable checkout would otherwise compile every module it
imports on every run.

- ``ian --help`` and ``ian status --help`` (Typer + Rich help formatting, no node needed);
- ``python -c "import typer"`` and ``python -c "import typer.rich_utils"``: the floor that
  Typer and its Rich help formatting cost before any `ian` code runs;
- ``ian status --json --node-url URL`` against a running ``ian node run`` on free loopback
  ports, and ``ian status --json (config)``: the same without ``--node-url``, with only
  ``IAN_DATA_DIR`` set, so the API port comes from the data dir's ``config.toml`` (what
  ``ian config init`` writes, with ``api_port`` uncommented);
- ``ian doctor --quick --json`` on that node's data dir.

Writes bench/results/cli.json. Usage: python bench/cli_bench.py [--quick] [--runs N]
"""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import base_parser, emit, environment, median, percentile, render_table

BIN = Path(sys.executable).parent
IAN = BIN / "ian"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IAN_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update({"NO_COLOR": "1", "COLUMNS": "120"})
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(argv: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    walls: list[float] = []
    cpus: list[float] = []
    codes: set[int] = set()
    subprocess.run(argv, env=env, capture_output=True, check=False)  # warm-up: .pyc files
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, check=False)
        walls.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
        codes.add(proc.returncode)
    ordered = sorted(walls)
    return {
        "runs": runs,
        "median_ms": median(walls),
        "min_ms": ordered[0],
        "p90_ms": percentile(ordered, 90),
        "cpu_median_ms": median(cpus),
        "exit_codes": sorted(codes),
    }


def write_config(data_dir: Path, api_port: str) -> None:
    """``ian config init`` in ``data_dir``, with ``api_port`` set (uncommented)."""
    subprocess.run(
        [str(IAN), "config", "init", "--data-dir", str(data_dir)],
        env=clean_env(),
        capture_output=True,
        check=True,
    )
    path = data_dir / "config.toml"
    text = path.read_text()
    assert "\n# api_port = 8000\n" in text
    path.write_text(text.replace("\n# api_port = 8000\n", f"\napi_port = {api_port}\n"))


def start_node(data_dir: Path, ports: dict[str, str]) -> subprocess.Popen[str]:
    env = clean_env(
        {
            "IAN_DATA_DIR": str(data_dir),
            "IAN_API_HOST": "127.0.0.1",
            "IAN_P2P_HOST": "127.0.0.1",
            "IAN_LOG_FORMAT": "json",
            **ports,
        }
    )
    proc = subprocess.Popen(
        [str(IAN), "node", "run"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    for line in proc.stderr:
        if re.search(r"serving the API on http://", line):
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the node did not start")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per command (default 15)")
    args = parser.parse_args()
    runs = args.runs or (5 if args.quick else 15)

    env = clean_env()
    python = str(BIN / "python")
    cases: list[tuple[str, list[str], dict[str, str]]] = [
        ("python -c pass", [python, "-c", "pass"], env),
        ("import typer", [python, "-c", "import typer"], env),
        ("import typer.rich_utils", [python, "-c", "import typer.rich_utils"], env),
        ("ian --help", [str(IAN), "--help"], env),
        ("ian status --help", [str(IAN), "status", "--help"], env),
    ]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ian-cli-bench-") as tmp:
        ports = {
            "IAN_API_PORT": str(free_port()),
            "IAN_P2P_PORT": str(free_port()),
            "IAN_WS_PORT": str(free_port()),
        }
        data_dir = Path(tmp) / "data"
        write_config(data_dir, ports["IAN_API_PORT"])
        node = start_node(data_dir, ports)
        try:
            url = f"http://127.0.0.1:{ports['IAN_API_PORT']}"
            node_env = clean_env(
                {"IAN_DATA_DIR": str(data_dir), "IAN_API_HOST": "127.0.0.1", **ports}
            )
            cases += [
                ("ian status --json", [str(IAN), "status", "--json", "--node-url", url], env),
                (
                    "ian status --json (config)",
                    [str(IAN), "status", "--json"],
                    clean_env({"IAN_DATA_DIR": str(data_dir)}),
                ),
                ("ian doctor --quick", [str(IAN), "doctor", "--quick", "--json"], node_env),
            ]
            for name, argv, case_env in cases:
                results[name] = measure(argv, case_env, runs)
        finally:
            node.terminate()
            node.wait(15)

    rows = [
        [
            name,
            r["median_ms"],
            r["min_ms"],
            r["p90_ms"],
            r["cpu_median_ms"],
            ",".join(map(str, r["exit_codes"])),
        ]
        for name, r in results.items()
    ]
    table = render_table(
        f"CLI start-up, {runs} runs each (ms, wall clock; cpu = user+sys of the child)",
        ["command", "median", "min", "p90", "cpu", "exit"],
        rows,
    )
    doc = {"environment": environment(), "runs": runs, "results": results}
    emit("cli", doc, [table], json_only=args.json_only)


if __name__ == "__main__":
    main()
