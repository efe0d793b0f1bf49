"""Benchmark: how long each job takes to answer ``--help`` (a fresh interpreter each time, wall clock).

The jobs import torch, Ray and the model only once their arguments are parsed, so ``--help`` and argument errors
answer at once. Baselines in the same run: the bare interpreter (``python -c pass``) and ``import torch`` alone.

Usage: ``python bench/cli.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted(p.name for p in (ROOT / "jobs").glob("*.py"))


def wall(cmd: list[str], repeats: int) -> float:
    """Median wall time of ``cmd`` over ``repeats`` runs, after one run that warms the file cache."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-500:]}")
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = [
        ("`python -c pass` (the interpreter)", wall([sys.executable, "-c", "pass"], args.repeats)),
        ("`python -c 'import torch'`", wall([sys.executable, "-c", "import torch"], args.repeats)),
    ]
    for job in JOBS:
        rows.append((f"`python jobs/{job} --help`", wall([sys.executable, f"jobs/{job}", "--help"], args.repeats)))
    print(f"# --help, median of {args.repeats} runs: {machine()}\n\n| command | wall time (s) |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
