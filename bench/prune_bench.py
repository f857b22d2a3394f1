"""Benchmark: load + prune + save of a big peer_scores.json, PeerBook vs the runbook's snippet.

Generates a file in the documented format (``--peers`` peers, last seen uniformly 0..60 days ago,
2 % actively banned), then runs, each in a fresh interpreter on its own copy:

* ``runbook``: the Python prune snippet from OPERATOR_RUNBOOK.md, verbatim but for the path;
* ``peer_book``: ``PeerBook.load`` → ``prune(30 d)`` → ``save`` (atomic, fsynced), timed per step.

Prints a table and writes the figures as JSON (``--out``). Also checks that both kept the same
peers apart from the actively banned ones PeerBook never drops.

    .venv/bin/python bench/prune_bench.py --peers 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

WRAP_RSS = """
import resource, runpy, sys
code = sys.argv[1]
exec(compile(code, "<runbook>", "exec"), {"__name__": "__main__"})
print("max_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
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


def run(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + sys of the child) and stdout of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1_000_000)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "prune.json"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="prune-bench-") as tmp:
        base = Path(tmp) / "base.json"
        t0 = time.perf_counter()
        generate(base, args.peers)
        gen_s = time.perf_counter() - t0
        size_mb = base.stat().st_size / 1e6

        theirs = Path(tmp) / "runbook" / "peer_scores.json"
        ours = Path(tmp) / "peer_book" / "peer_scores.json"
        for target in (theirs, ours):
            target.parent.mkdir()
            shutil.copyfile(base, target)

        snippet = RUNBOOK_PRUNE.replace("/data/ian/peer_scores.json", str(theirs))
        runbook_s, runbook_cpu, out = run([sys.executable, "-c", WRAP_RSS, snippet])
        runbook_rss = float(out.split("max_rss_mb")[1])
        kept_runbook = json.loads(theirs.read_text())["peers"]

        peer_book_s, peer_book_cpu, out = run([sys.executable, "-c", PEER_BOOK_PRUNE, str(ours)])
        steps = json.loads(out)
        kept_ours = json.loads(ours.read_text())["peers"]

        now = time.time()
        banned_old = {
            k
            for k, v in json.loads(base.read_text())["peers"].items()
            if v["banned_until"] is not None and v["banned_until"] > now
        }
        same = set(kept_ours) == set(kept_runbook) | banned_old
        result = {
            "peers": args.peers,
            "file_mb": round(size_mb, 1),
            "generate_s": round(gen_s, 2),
            "runbook_snippet": {
                "wall_s": round(runbook_s, 2),
                "cpu_s": round(runbook_cpu, 2),
                "max_rss_mb": round(runbook_rss),
                "kept": len(kept_runbook),
                "output_mb": round(theirs.stat().st_size / 1e6, 1),
            },
            "peer_book": {
                "wall_s": round(peer_book_s, 2),
                "cpu_s": round(peer_book_cpu, 2),
                **{k: round(v, 2) if isinstance(v, float) else v for k, v in steps.items()},
                "output_mb": round(ours.stat().st_size / 1e6, 1),
            },
            "speedup_wall": round(runbook_s / peer_book_s, 2),
            "speedup_cpu": round(runbook_cpu / peer_book_cpu, 2),
            "same_kept_set_except_active_bans": same,
        }

    rb, pb = result["runbook_snippet"], result["peer_book"]
    print(f"peers {args.peers:,}  file {result['file_mb']} MB  (whole runs include start-up)")
    head = ("", "wall s", "CPU s", "load", "prune", "save", "RSS MB", "kept")
    print("{:<16}{:>8}{:>8}{:>12}{:>12}{:>12}{:>8}{:>9}".format(*head))
    print(
        "{:<16}{:>8}{:>8}{:>12}{:>12}{:>12}{:>8}{:>9}".format(
            "runbook snippet", rb["wall_s"], rb["cpu_s"], "", "", "", rb["max_rss_mb"], rb["kept"]
        )
    )
    steps = [f"{pb[k + '_s']}/{pb[k + '_cpu_s']}" for k in ("load", "prune", "save")]
    print(
        "{:<16}{:>8}{:>8}{:>12}{:>12}{:>12}{:>8}{:>9}".format(
            "PeerBook", pb["wall_s"], pb["cpu_s"], *steps, round(pb["max_rss_mb"]), pb["kept"]
        )
    )
    print("(step columns: wall/CPU seconds)")
    print(
        f"speedup: {result['speedup_wall']}x wall, {result['speedup_cpu']}x CPU; "
        f"same kept set (plus active bans): {same}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
