"""Runs bench/chaos.py and reads its result, for the chaos tests: the
script must end normally with its last line, 0 violations, at least
`faults` faults and every kind of part killed at least once."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_chaos(args: list[str], *, faults: int, timeout: float) -> dict[str, int]:
    """The faults by kind of the run, once it passed."""
    done = subprocess.run(
        [sys.executable, "bench/chaos.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = done.stdout + done.stderr
    found = re.search(r"chaos_faults=(\d+) chaos_violations=(\d+) seed=(\d+)", done.stdout)
    assert done.returncode == 0 and found, out[-3000:]
    made, violations = int(found[1]), int(found[2])
    assert violations == 0, "\n".join(
        line for line in done.stdout.splitlines() if not line.startswith("  ")
    )[-3000:]
    assert made >= faults, done.stdout[-2000:]
    kinds = re.search(r"faults by part: (\{[^}]*\})", done.stdout)
    assert kinds, done.stdout[-2000:]
    by_kind: dict[str, int] = ast.literal_eval(kinds[1])
    assert all(n >= 1 for n in by_kind.values()), by_kind
    return by_kind
