"""The HLS C-simulation testbench (hls/tb) run from pytest, as `make csim`
runs it: both the vectorised C-sim bodies and the literal HLS loop nests.
The default run builds them for the u200; the slow run for every other
board too (tests that only failed on the 8-tenant boards once went
unseen). test_csim_bodies_agree.py compares the CNN core's two bodies on
random programs for u200 and pynq_z2 in the default run.

The objects and binaries go to pytest's cache directory, so a run after
no change to hls/ rebuilds nothing (make's dependencies: every source and
header) and only runs the testbenches; without the cache plugin
(-p no:cacheprovider) they go to a fresh temporary directory."""

import os
import shutil
import subprocess
import sys

import pytest
from harness import REPO_ROOT as ROOT

from vfpga import overlay

HLS = os.path.join(ROOT, "hls")

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                                reason="needs g++ and make to build the C-sim testbench")


def _make(target, board, build_dir):
    proc = subprocess.run(
        ["make", "-C", HLS, f"-j{os.cpu_count() or 1}", "-O", f"{target}-cnn", f"{target}-dispatcher",
         f"BOARD={board}", f"BUILD={build_dir}", f"PYTHON={sys.executable}"],
        capture_output=True, text=True, timeout=1200)
    return proc.returncode, proc.stdout + proc.stderr


def _summaries(output, bench="tb_cnn_core"):
    return [line for line in output.splitlines() if line.startswith(f"{bench}:") and "passed" in line]


@pytest.mark.parametrize("board", ["u200"] + [pytest.param(b, marks=pytest.mark.slow)
                                               for b in overlay.available() if b != "u200"])
def test_csim_testbench_passes(board, request, tmp_path):
    cache = getattr(request.config, "cache", None)
    rc, out = _make("csim", board, cache.mkdir("hls-csim") if cache is not None else tmp_path)
    assert rc == 0, out[-4000:]
    lines = _summaries(out) + _summaries(out, "tb_dispatcher")
    # both testbenches, vectorised and literal-HLS builds, and the dispatcher's Vitis kernel top
    assert len(lines) == 5, out[-4000:]
    assert "(Vitis kernel top)" in out
    for line in lines:
        assert line.rstrip().endswith(", 0 failed"), line
        assert int(line.split(":")[1].split()[0]) > 0, line


@pytest.mark.slow
@pytest.mark.sanitize
def test_csim_testbench_under_asan_ubsan(tmp_path):
    rc, out = _make("csim-sanitize", "u200", tmp_path)
    assert rc == 0, out[-4000:]
    lines = _summaries(out) + _summaries(out, "tb_dispatcher")
    assert len(lines) == 4 and all(line.rstrip().endswith(", 0 failed") for line in lines), out[-4000:]
    assert "runtime error" not in out and "AddressSanitizer" not in out
