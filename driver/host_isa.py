"""Which build of the emulation library (and of the host's marshalling
helpers) this host runs.

``pip install`` builds every board's emulation library (the HLS C++ through
cffi, hls/cffi_build.py) twice:

* ``vfpga.driver._emu_<board>``: portable, the compiler's default target
  (x86-64 baseline on x86), so a wheel imports and runs on any host;
* ``vfpga.driver._emu_<board>_<level>``: for the installing host, the best
  ISA level of :data:`LEVELS` that its CPU and compiler have (on a host with
  AVX-512 VNNI, the C-sim's int8 GEMM becomes vpdpbusd), tuned with
  ``-mtune=native``.

:func:`emulation_module` loads the host build when the CPU it runs on has
every feature of its level (checked against /proc/cpuinfo before anything
of it is loaded), else the portable one; so a wheel built on one machine
still imports elsewhere. ``vfpga.driver._marshal`` (the request tensors'
marshalling, hls/host) is built and chosen the same way
(:func:`best_module`). ``VFPGA_PORTABLE=1`` at install builds only the
portable libraries; at run time it makes the portable ones the ones loaded.

This file imports nothing of vfpga: hls/cffi_build.py loads it by path.
"""

from __future__ import annotations

import functools
import importlib
import os

# Linux /proc/cpuinfo flag names of the x86-64 micro-architecture levels.
_V2 = ("cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3")
_V3 = _V2 + ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")
_V4 = _V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")

# (level, compiler flags, CPU flags the build needs), best first.
LEVELS = (
    ("avx512vnni", ("-march=x86-64-v4", "-mavx512vnni", "-mprefer-vector-width=512"), _V4 + ("avx512_vnni",)),
    ("avxvnni", ("-march=x86-64-v3", "-mavxvnni"), _V3 + ("avx_vnni",)),
    ("avx2", ("-march=x86-64-v3",), _V3),
)


def portable_requested() -> bool:
    """VFPGA_PORTABLE set to 1 / true / yes."""
    return os.environ.get("VFPGA_PORTABLE", "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo does not say)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def supported(level: str, flags: frozenset[str] | None = None) -> bool:
    """Whether a CPU with ``flags`` (default: this one) runs a build of ``level``."""
    flags = cpu_flags() if flags is None else flags
    need = {name: cpu for name, _, cpu in LEVELS}[level]
    return all(f in flags for f in need)


def host_level(flags: frozenset[str] | None = None) -> str | None:
    """The best level this CPU runs (None: only the portable build)."""
    return next((name for name, _, _ in LEVELS if supported(name, flags)), None)


def best_module(base: str):
    """``vfpga.driver.<base>_<level>`` for the best level this host runs
    that was built, else the portable ``vfpga.driver.<base>`` (see the module doc)."""
    if not portable_requested():
        for name, _, _ in LEVELS:
            if supported(name):
                try:
                    return importlib.import_module(f"vfpga.driver.{base}_{name}")
                except ImportError:
                    continue  # not built for this level (another install host, or VFPGA_PORTABLE)
    return importlib.import_module(f"vfpga.driver.{base}")


def emulation_module(board: str):
    """The emulation library of ``board`` for this host."""
    return best_module(f"_emu_{board}")


def build_name(module) -> str:
    """'portable' or the level of a module :func:`emulation_module` returned."""
    tail = module.__name__.rsplit(".", 1)[-1]
    return next((name for name, _, _ in LEVELS if tail.endswith(f"_{name}")), "portable")
