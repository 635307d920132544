"""scripts/bench_emulation.py's summary: the figures it prints against the
targets are the ones its overhead lines measured (a real small CNN on the
emulated board, a few requests)."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

from vfpga.runtime import tenants

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench_emulation.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_emulation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _p50s(line: str) -> tuple[int, int]:
    both = re.search(r"both halves of a request p50 (\d+) us", line)
    fixed = re.search(r"without the input marshalling p50 (\d+) us", line)
    return int(both.group(1)), int(fixed.group(1))


def test_summary_repeats_the_measured_overheads(bench):
    targets = bench.Targets()
    ov = tenants.open("u200")
    try:
        lines = bench.small_cnn_overhead(ov, 5, "u200", targets)
    finally:
        ov.close()
    measured = {}
    for line in lines:
        m = re.match(r"  host overhead( on a timing-only board)?, (int8|float) input", line)
        if m:
            measured["timing-only" if m.group(1) else "C-sim", m.group(2)] = _p50s(line)
    assert set(measured) == {(b, k) for b in ("timing-only", "C-sim") for k in ("int8", "float")}
    summary = targets.lines()
    row = next(ln for ln in summary if ln.strip().startswith("small_cnn"))
    for board in ("timing-only", "C-sim"):
        part = row.split(f"{board} board ")[1].split(";")[0]
        for kind in ("int8", "float"):
            both, fixed = measured[board, kind]
            assert re.search(rf"{kind} {both} / {fixed}\b", part), (board, kind, row)
            assert 0 < fixed <= both


def test_summary_gives_each_ratio(bench):
    targets = bench.Targets()
    targets.ratios["resnet50"] = {1: 2.54, 2: 1.86}
    targets.recorder("resnet50", "timing-only")("int8", 181.4, 75.2)
    lines = targets.lines()
    assert "  resnet50 emulation: k=1 2.5x, k=2 1.9x" in lines
    assert any(ln.strip() == "resnet50    timing-only board int8 181 / 75" for ln in lines)
