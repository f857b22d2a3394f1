"""Benchmark: pruning a big peer_scores.json: `ian peers prune` vs the runbook's snippet.

Generates a file in the documented format (``--peers`` peers, last seen uniformly 0..60 days ago,
2 % actively banned), then runs, each in a fresh process on its own copy, ``--runs`` times:

* ``runbook``: the Python prune snippet from OPERATOR_RUNBOOK.md, verbatim but for the path;
* ``ian peers prune``: the real command, offline on a data dir holding the file
  (``ian peers prune --older-than 30d --json --data-dir DIR``: streamed, see ian.p2p.peer_prune);
* ``peer_book``: ``PeerBook.load`` -> ``prune(30 d)`` -> ``save`` (atomic, fsynced), timed per
  step: what offline commands that change one peer cost on such a book.

Wall time, CPU (user + sys) and peak RSS are per child process (``os.wait4``), start-up
included. Prints a table of medians and writes the figures as JSON (``--out``). Also checks
that every run kept the runbook's peers plus the actively banned ones (which ian never drops),
and that the command's file equals PeerBook's byte for byte (apart from ``saved_at``).

    .venv/bin/python bench/prune_bench.py --peers 1000000 [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUNBOOK_PRUNE = """
import json, time
with open('/data/ian/peer_scores.json') as f:
    data = json.load(f)

cutoff = time.time() - 30*24*3600
data['peers'] = {k:v for k,v in data['peers'].items() if v['last_seen'] > cutoff}

with open('/data/ian/peer_scores.json', 'w') as f:
    json.dump(data, f, indent=2)
print(f'Kept {len(data[\"peers\"])} peers')
"""

PEER_BOOK_PRUNE = """
import json, resource, sys, time
from pathlib import Path
from ian.p2p.peer_book import PeerBook

path = Path(sys.argv[1])
cpu = time.process_time
t0, c0 = time.perf_counter(), cpu()
book = PeerBook.load(path)
t1, c1 = time.perf_counter(), cpu()
result = book.prune(30 * 86400)
t2, c2 = time.perf_counter(), cpu()
book.save()
t3, c3 = time.perf_counter(), cpu()
print(json.dumps({"load_s": t1 - t0, "prune_s": t2 - t1, "save_s": t3 - t2,
                  "load_cpu_s": c1 - c0, "prune_cpu_s": c2 - c1, "save_cpu_s": c3 - c2,
                  "kept": result.kept, "removed": len(result.removed),
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(path: Path, n: int, seed: int = 7) -> None:
    """Write ``n`` peers in the documented format, as the node would (compact JSON)."""
    rng = random.Random(seed)
    now = time.time()
    peers = {}
    for i in range(n):
        age_days = rng.uniform(0, 60)
        if abs(age_days - 30) < 1 / 24:  # keep clear of the cutoff: the runs start seconds apart
            age_days += 0.1
        last = now - age_days * 86400
        banned = rng.random() < 0.02
        peers[f"{i:040x}"] = {
            "score": round(rng.uniform(0, 200), 3),
            "banned_until": now + 86400 if banned else None,
            "ban_reason": "bench" if banned else None,
            "valid_messages": rng.randrange(10_000),
            "valid_contributions": rng.randrange(100),
            "successful_syncs": rng.randrange(100),
            "invalid_messages": rng.randrange(5),
            "invalid_contributions": rng.randrange(5),
            "rate_limit_violations": rng.randrange(5),
            "protocol_violations": rng.randrange(3),
            "failed_syncs": rng.randrange(5),
            "first_seen": last - 86400,
            "last_seen": last,
            "last_connected": last,
            "addresses": [f"tcp://10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:9000"],
            "score_updated_at": last,
        }
    doc = {"version": 1, "saved_at": now, "peers": peers, "ip_bans": {}}
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


def run(cmd: list[str]) -> dict[str, Any]:
    """Wall seconds, CPU seconds (user + sys), peak RSS (MB) and stdout of one child."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[:3]} failed: {err.read().decode()[-2000:]}")
        return {
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_mb": usage.ru_maxrss / 1024,
            "stdout": out.read().decode(),
        }


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def body_after_saved_at(path: Path) -> bytes:
    """The file without its saved_at (the only byte difference two writers may have)."""
    data = path.read_bytes()
    return data[data.index(b',"peers":') :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="runs per contender (median)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "prune.json"
    )
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.peers)
        return
    ian = str(Path(sys.executable).parent / "ian")

    with tempfile.TemporaryDirectory(prefix="prune-bench-") as tmp:
        # The big work happens in children only: a child's peak RSS counts what it inherited
        # from this process before exec, so this one stays small until the runs are done.
        base = Path(tmp) / "base.json"
        t0 = time.perf_counter()
        gen = [sys.executable, __file__, "--peers", str(args.peers), "--generate", str(base)]
        subprocess.run(gen, check=True)
        gen_s = time.perf_counter() - t0
        size_mb = base.stat().st_size / 1e6

        def fresh(name: str) -> Path:
            target = Path(tmp) / name / "peer_scores.json"
            shutil.rmtree(target.parent, ignore_errors=True)
            target.parent.mkdir()
            shutil.copyfile(base, target)
            return target

        runs: dict[str, list[dict[str, Any]]] = {"runbook": [], "cli": [], "peer_book": []}
        outputs: dict[str, Path] = {}
        for _ in range(args.runs):
            theirs = outputs["runbook"] = fresh("runbook")
            snippet = RUNBOOK_PRUNE.replace("/data/ian/peer_scores.json", str(theirs))
            runs["runbook"].append(run([sys.executable, "-c", snippet]))

            cli = outputs["cli"] = fresh("cli")
            argv = [ian, "peers", "prune", "--older-than", "30d", "--json"]
            runs["cli"].append(run([*argv, "--data-dir", str(cli.parent)]))

            ours = outputs["peer_book"] = fresh("peer_book")
            one = run([sys.executable, "-c", PEER_BOOK_PRUNE, str(ours)])
            one.update(json.loads(one["stdout"]))
            runs["peer_book"].append(one)

        # checks on the last run's files
        now = time.time()
        banned_old = {
            k
            for k, v in json.loads(base.read_text())["peers"].items()
            if v["banned_until"] is not None and v["banned_until"] > now
        }
        kept = {name: set(json.loads(path.read_text())["peers"]) for name, path in outputs.items()}
        same_bytes = body_after_saved_at(outputs["cli"]) == body_after_saved_at(
            outputs["peer_book"]
        )
        output_mb = outputs
        expected = kept["runbook"] | banned_old
        result: dict[str, Any] = {
            "peers": args.peers,
            "file_mb": round(size_mb, 1),
            "generate_s": round(gen_s, 2),
            "runs": args.runs,
            "loadavg_at_end": os.getloadavg(),
        }
        for name, rows in runs.items():
            result[name] = {
                "wall_s": median_of(rows, "wall_s"),
                "wall_s_all": [round(r["wall_s"], 2) for r in rows],
                "cpu_s": median_of(rows, "cpu_s"),
                "max_rss_mb": round(median_of(rows, "max_rss_mb")),
                "kept": len(kept[name]),
                "output_mb": round(output_mb[name].stat().st_size / 1e6, 1),
            }
        for step in ("load", "prune", "save"):
            for unit in ("s", "cpu_s"):
                key = f"{step}_{unit}"
                result["peer_book"][key] = median_of(runs["peer_book"], key)
        rb = result["runbook"]
        for name in ("cli", "peer_book"):
            result[name]["speedup_wall"] = round(rb["wall_s"] / result[name]["wall_s"], 2)
            result[name]["memory_share"] = round(result[name]["max_rss_mb"] / rb["max_rss_mb"], 2)
        result["same_kept_set_except_active_bans"] = (
            kept["cli"] == expected and kept["peer_book"] == expected
        )
        result["cli_file_equals_peer_book_file"] = same_bytes

    rb, cl, pb = result["runbook"], result["cli"], result["peer_book"]
    print(
        f"peers {args.peers:,}  file {result['file_mb']} MB  medians of {args.runs} runs "
        "(whole processes, start-up included)"
    )
    head = ("", "wall s", "CPU s", "RSS MB", "kept", "x faster", "RSS share")
    fmt = "{:<18}{:>8}{:>8}{:>8}{:>9}{:>10}{:>11}"
    print(fmt.format(*head))
    print(
        fmt.format(
            "runbook snippet", rb["wall_s"], rb["cpu_s"], rb["max_rss_mb"], rb["kept"], "", ""
        )
    )
    for label, row in (("ian peers prune", cl), ("PeerBook l/p/s", pb)):
        print(
            fmt.format(
                label,
                row["wall_s"],
                row["cpu_s"],
                row["max_rss_mb"],
                row["kept"],
                row["speedup_wall"],
                row["memory_share"],
            )
        )
    steps = ", ".join(f"{k} {pb[k + '_s']}/{pb[k + '_cpu_s']}" for k in ("load", "prune", "save"))
    print(f"PeerBook steps (wall/CPU s): {steps}")
    print(f"walls: runbook {rb['wall_s_all']}, ian {cl['wall_s_all']}, PeerBook {pb['wall_s_all']}")
    print(
        f"same kept set (runbook's + active bans): {result['same_kept_set_except_active_bans']}; "
        f"command's file == PeerBook's: {result['cli_file_equals_peer_book_file']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
