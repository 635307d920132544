"""vf_mul2 (hls/include/vfpga_mac.h): two int8 products from one 27 x 8
multiply, the DSP48E2 packing the MAC beats use. Checked for all 2^24
(a, w_hi, w_lo) triples, in a plain and an UBSan build."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from harness import REPO_ROOT

INCLUDE = os.path.join(REPO_ROOT, "hls", "include")

PROGRAM = r"""
#include <stdio.h>
#include "vfpga_mac.h"
int main(void) {
    long bad = 0, n = 0;
    for (int a = -128; a < 128; ++a)
        for (int h = -128; h < 128; ++h)
            for (int l = -128; l < 128; ++l) {
                int32_t hi, lo;
                vf_mul2(a, h, l, &hi, &lo);
                bad += hi != a * h || lo != a * l;
                ++n;
            }
    printf("%ld %ld\n", n, bad);
    return bad != 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
@pytest.mark.parametrize("flags", [["-O2"], ["-O1", "-fsanitize=undefined", "-fno-sanitize-recover=all"]],
                         ids=["plain", "ubsan"])
def test_every_int8_triple_unpacks_exactly(tmp_path, flags):
    src, exe = tmp_path / "mac.cpp", tmp_path / "mac"
    src.write_text(PROGRAM)
    build = subprocess.run(["g++", "-std=c++14", *flags, f"-I{INCLUDE}", str(src), "-o", str(exe)],
                           capture_output=True, text=True, timeout=120)
    if build.returncode != 0 and "sanitize" in " ".join(flags) and "libubsan" in build.stderr:
        pytest.skip("no UBSan runtime")
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == [str(1 << 24), "0"], run.stdout + run.stderr


def test_the_packed_field_holds_every_low_product():
    """The 18-bit field's signed range holds every int8 x int8 product (the
    packing's only condition), and the 27-bit operand every packed pair."""
    shift = 18
    products = [a * w for a in (-128, 127) for w in (-128, 127)]
    assert all(-(1 << (shift - 1)) <= p < (1 << (shift - 1)) for p in products)
    assert all(-(1 << 26) <= h * (1 << shift) + lo < (1 << 26) for h in (-128, 127) for lo in (-128, 127))
