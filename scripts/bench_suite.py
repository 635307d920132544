#!/usr/bin/env python3
"""The default test suite's wall time against an earlier commit's, on the tests both have.

A commit's suite changes as tests are added, so the comparison runs the
tests both suites hold (by node id) under each checkout's own default pytest
options (its pyproject.toml: the earlier one may run in one process, this
one on every host thread), rounds alternating so that both see the same
load. The earlier commit is checked out in a temporary git worktree with a
venv of its own (``pip install -e .[test]``, which builds its emulation
libraries: about a minute). Also the whole default suite of this checkout.

    python scripts/bench_suite.py [--against 13d05b6] [--rounds 2]

13d05b6 is main when the emulation-speed issue was filed ("the default test
suite at least 2x faster than today"). Wall times are this host's: on a
shared machine compare the ratio of one run, not times across runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)


def _checkout(rev: str, where: str) -> str:
    """A worktree of ``rev`` at ``where`` with its venv installed; returns its python."""
    r = _run(["git", "worktree", "add", "--detach", where, rev], ROOT)
    if r.returncode != 0:
        raise SystemExit(f"git worktree add {rev} failed: {r.stderr.strip()}")
    venv = os.path.join(where, ".venv")
    py = os.path.join(venv, "bin", "python")
    for cmd in ([sys.executable, "-m", "venv", venv], [py, "-m", "pip", "install", "-q", "-e", ".[test]"]):
        r = _run(cmd, where)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed in the {rev} checkout:\n{r.stderr[-2000:]}")
    return py


def _collected(py: str, cwd: str) -> set[str]:
    """The node ids the default suite selects (in one process, so the list is plain)."""
    with open(os.path.join(cwd, "pyproject.toml")) as f:
        one_process = ["-n", "0"] if "-n auto" in f.read() else []  # (xdist's own flag where it is on)
    r = _run([py, "-m", "pytest", "--collect-only", "-q", *one_process], cwd)
    ids = {ln for ln in r.stdout.splitlines() if "::" in ln}
    if not ids:
        raise SystemExit(f"no tests collected in {cwd}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return ids


def _timed(py: str, cwd: str, args: list[str]) -> tuple[float, str]:
    """(wall seconds, pytest's summary line) of ``pytest -q args`` with cwd's own defaults."""
    t0 = time.perf_counter()
    r = _run([py, "-m", "pytest", "-q", *args], cwd)
    wall = time.perf_counter() - t0
    summary = next((ln.strip() for ln in reversed(r.stdout.splitlines()) if " passed" in ln or " failed" in ln),
                   "no summary")
    if r.returncode != 0:
        summary += f" (exit {r.returncode})"
    return wall, summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default="13d05b6", help="the earlier commit (default: 13d05b6)")
    p.add_argument("--rounds", type=int, default=2, help="alternating timed runs of each suite")
    a = p.parse_args(argv)
    here_py = sys.executable
    with tempfile.TemporaryDirectory(prefix="vfpga-suite-") as tmp:
        where = os.path.join(tmp, "before")
        print(f"checking out and installing {a.against} ...", flush=True)
        before_py = _checkout(a.against, where)
        try:
            common = sorted(_collected(before_py, where) & _collected(here_py, ROOT))
            ids = os.path.join(tmp, "common.txt")
            with open(ids, "w") as f:
                f.write("\n".join(common) + "\n")
            print(f"{len(common)} tests in both suites (node ids; skipped ones included); host threads "
                  f"{os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
            _timed(before_py, where, [f"@{ids}"])  # builds what the first run builds (pytest's cache)
            _timed(here_py, ROOT, [f"@{ids}"])
            walls: dict[str, list[float]] = {"before": [], "now": []}
            for k in range(a.rounds):
                for label, py, cwd in (("before", before_py, where), ("now", here_py, ROOT)):
                    wall, summary = _timed(py, cwd, [f"@{ids}"])
                    walls[label].append(wall)
                    print(f"  round {k + 1}, {label:6s} ({a.against if label == 'before' else 'this checkout'}): "
                          f"{wall:5.1f} s wall, {summary}; load {os.getloadavg()[0]:.1f}", flush=True)
            ratios = [b / n for b, n in zip(walls["before"], walls["now"])]
            print(f"the common tests: {min(walls['before']):.1f}-{max(walls['before']):.1f} s before, "
                  f"{min(walls['now']):.1f}-{max(walls['now']):.1f} s now: {min(ratios):.2f}-{max(ratios):.2f}x "
                  f"(each round's ratio)")
            for label, py, cwd in (("before", before_py, where), ("now", here_py, ROOT)):
                wall, summary = _timed(py, cwd, [])
                print(f"whole default suite {label}: {wall:.1f} s wall, {summary}", flush=True)
        finally:
            _run(["git", "worktree", "remove", "--force", where], ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
