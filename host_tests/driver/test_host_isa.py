"""Which emulation library a host loads (vfpga.driver.host_isa): the build
for the installing host's ISA level only where the CPU has every feature
of that level, the portable one otherwise or with VFPGA_PORTABLE=1."""

import importlib

import pytest

from vfpga.driver import host_isa
from vfpga.driver.emulated import EmulatedDevice

V4_VNNI = frozenset(host_isa.LEVELS[0][2])


def test_levels_need_their_cpu_features():
    assert host_isa.host_level(V4_VNNI) == "avx512vnni"
    assert host_isa.host_level(V4_VNNI - {"avx512_vnni"}) == "avx2"  # AVX-512 without VNNI: the AVX2 build
    assert host_isa.host_level(frozenset(host_isa.LEVELS[2][2]) | {"avx_vnni"}) == "avxvnni"
    assert host_isa.host_level(V4_VNNI - {"avx2"}) is None  # an older CPU: only the portable build
    assert host_isa.host_level(frozenset()) is None  # no /proc/cpuinfo: only the portable build


def test_the_portable_build_is_always_there_and_selectable(monkeypatch):
    portable = importlib.import_module("vfpga.driver._emu_u200")
    assert host_isa.build_name(portable) == "portable"
    monkeypatch.setenv("VFPGA_PORTABLE", "1")
    assert host_isa.emulation_module("u200") is portable
    assert EmulatedDevice("u200", bank_capacity=1 << 20).build == "portable"


def test_a_cpu_without_the_level_loads_the_portable_build(monkeypatch):
    monkeypatch.delenv("VFPGA_PORTABLE", raising=False)
    monkeypatch.setattr(host_isa, "cpu_flags", lambda: frozenset({"sse2"}))
    assert host_isa.build_name(host_isa.emulation_module("u200")) == "portable"


def test_this_host_runs_its_level_where_it_was_built_for_it(monkeypatch):
    monkeypatch.delenv("VFPGA_PORTABLE", raising=False)
    level = host_isa.host_level()
    if level is None:
        pytest.skip("this CPU has no ISA level above the portable build")
    try:
        importlib.import_module(f"vfpga.driver._emu_u200_{level}")
    except ImportError:
        pytest.skip(f"installed without the {level} build (VFPGA_PORTABLE=1 or another install host)")
    assert host_isa.build_name(host_isa.emulation_module("u200")) == level
