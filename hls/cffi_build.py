"""cffi builders for the emulation libraries (used by setup.py).

* ``vfpga.driver._isa``: the ISA header alone. API mode makes the C compiler
  check every struct layout Python derives from the header.
* ``vfpga.driver._marshal`` (and ``_marshal_<level>``): the host's
  marshalling of request tensors (hls/host), on a board's host as in
  emulation, built and chosen per ISA level as the emulation libraries are.
* ``vfpga.driver._emu_<board>``: the CNN and RNN cores' and the level-1
  dispatcher's HLS C++ compiled for the host with that board's macros -- the
  C-simulation the emulated device runs -- for the compiler's default target
  (portable);
* ``vfpga.driver._emu_<board>_<level>``: the same for the installing host's
  ISA level (driver/host_isa.py: which level, and which build is loaded),
  unless VFPGA_PORTABLE=1 or the compiler does not take the level's flags.
"""

import copy
import functools
import importlib.util
import os
import re
import subprocess
import sysconfig
import tempfile

from cffi import FFI
from setuptools.command.build_ext import build_ext

HLS_DIR = os.path.dirname(os.path.abspath(__file__))
INCLUDE_DIR = os.path.join(HLS_DIR, "include")
ROOT = os.path.dirname(HLS_DIR)

# Paths are given relative to setup.py's directory, as setuptools requires.
_REL_HLS = os.path.relpath(HLS_DIR, os.getcwd())
CORE_SOURCES = [os.path.join(_REL_HLS, name) for name in ("cnn_core.cpp", "rnn_core.cpp", "dispatcher.cpp")]
# The emulated dispatcher's event loop: host C++ (threads, std containers), in the emulation library only.
EMU_DIR = os.path.join(HLS_DIR, "emu")
EMU_SOURCES = [os.path.join(_REL_HLS, "emu", "emu_loop.cpp")]
# The driver's host-side C (request tensors' marshalling): every host, board or not.
HOST_DIR = os.path.join(HLS_DIR, "host")
HOST_SOURCES = [os.path.join(_REL_HLS, "host", "vfpga_marshal.c")]
CXXFLAGS = ["-std=c++14", "-O3", "-Wno-unknown-pragmas"]
# g++'s static branch guesses mark the element-wise loops inside the unit
# scheduler cold, which leaves them scalar; without the guesses they vectorise.
OPTIONAL_CXXFLAGS = ["-fno-guess-branch-probability"]

_DEFINE_WITH_VALUE = re.compile(r"^\s*#\s*define\s+\w+\s+(0x[0-9a-fA-F]+|\d+)\s*(/\*.*)?$")
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def _load_by_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compiler_takes(flags):
    """Whether the C++ compiler cffi builds with compiles (and assembles) with ``flags``."""
    cxx = (os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++").split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("int vf_probe(const signed char *a, const unsigned char *b, int n)"
                    " { int s = 0; for (int i = 0; i < n; ++i) s += a[i] * b[i]; return s; }\n")
        try:
            proc = subprocess.run(cxx + ["-O3", "-Werror", *flags, "-c", src, "-o", os.path.join(tmp, "probe.o")],
                                  capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return False
        return proc.returncode == 0


@functools.cache
def _base_flags():
    return CXXFLAGS + [f for f in OPTIONAL_CXXFLAGS if _compiler_takes([f])]


def _host_isa():
    return _load_by_path("_vfpga_host_isa", os.path.join(ROOT, "driver", "host_isa.py"))


def level_flags(level):
    """Compiler flags of a build for ISA ``level`` (driver/host_isa.py's LEVELS), tuned for this host."""
    return [*next(f for n, f, _ in _host_isa().LEVELS if n == level), "-mtune=native"]


def host_level():
    """The installing host's ISA level, or None: VFPGA_PORTABLE=1, a CPU
    without any level, or a compiler that does not take the level's flags."""
    host_isa = _host_isa()
    if host_isa.portable_requested():
        return None
    level = host_isa.host_level()
    return level if level is not None and _compiler_takes(level_flags(level)) else None


def _board_config():
    return _load_by_path("_vfpga_board_config", os.path.join(ROOT, "overlay", "config.py"))


def cdef_text(*headers, macros=()):
    """The headers as cffi's cdef parser accepts them: preprocessor lines
    other than integer #defines are dropped, except that a header's
    ``#include "x.h"`` of another header of hls/include is replaced by that
    header's text (each header once, as include guards would); ``macros``
    (name, value) come first as #defines (array lengths the headers take from
    the board). A header given by absolute path is read from there."""
    out = [f"#define {name} {value}\n" for name, value in macros]
    seen = set()

    def add(name):
        if name in seen:
            return
        seen.add(name)
        with open(os.path.join(INCLUDE_DIR, name)) as f:
            for line in f:
                included = _LOCAL_INCLUDE.match(line)
                if included and os.path.isfile(os.path.join(INCLUDE_DIR, included.group(1))):
                    add(included.group(1))
                elif not line.lstrip().startswith("#") or _DEFINE_WITH_VALUE.match(line):
                    out.append(line)

    for name in headers:
        add(name)
    return "".join(out)


def isa_builder():
    ffi = FFI()
    ffi.cdef(cdef_text("vfpga_isa.h"))
    ffi.set_source("vfpga.driver._isa", '#include "vfpga_isa.h"', include_dirs=[INCLUDE_DIR])
    return ffi


def marshal_builder(level=None, flags=()):
    """The host's marshalling helpers: portable, or for ISA ``level`` with ``flags``."""
    ffi = FFI()
    ffi.cdef(cdef_text(os.path.join(HOST_DIR, "vfpga_marshal.h")))
    ffi.set_source("vfpga.driver._marshal" + (f"_{level}" if level else ""), '#include "vfpga_marshal.h"',
                   sources=HOST_SOURCES, include_dirs=[HOST_DIR],
                   # without trapping math the clamps become selects and the loops vectorise; no result changes
                   extra_compile_args=["-O3", "-fno-trapping-math", *flags])
    return ffi


def emu_builder(board, level=None, flags=()):
    """The emulation library of ``board``: portable, or for ISA ``level`` with ``flags``."""
    config = _board_config()
    macros = config.c_macros(config.load(board))
    ffi = FFI()
    board_sizes = [(name, macros[name])
                   for name in ("VF_DISP_TENANTS", "VF_CNN_CORES", "VF_RNN_CORES", "VF_DISP_INFLIGHT")]
    board_sizes.append(("VF_POOL_CORES", macros["VF_CNN_CORES"] + macros["VF_RNN_CORES"]))
    ffi.cdef(cdef_text("vfpga_isa.h", "vfpga_cnn_core.h", "vfpga_rnn_core.h", "vfpga_dispatcher.h",
                       os.path.join(EMU_DIR, "vfpga_emu.h"), macros=board_sizes))
    ffi.set_source(
        f"vfpga.driver._emu_{board}" + (f"_{level}" if level else ""),
        '#include "vfpga_dispatcher.h"\n#include "vfpga_emu.h"',
        sources=CORE_SOURCES + EMU_SOURCES,
        source_extension=".cpp",
        include_dirs=[INCLUDE_DIR, EMU_DIR],
        define_macros=[(k, str(v)) for k, v in macros.items()],
        extra_compile_args=[*_base_flags(), *flags, "-pthread"],
        extra_link_args=["-pthread"],
    )
    return ffi


class BuildExtApart(build_ext):
    """setup.py's build_ext: each extension's objects in a directory of its
    own. The emulation libraries compile the same HLS sources with each
    board's macros and each ISA level's flags, and build_ext names an object
    after its source alone, so libraries built side by side (``parallel``)
    would link each other's objects. They build on every host thread: set
    as setup()'s options, that did not reach pip's editable build, which
    built one library at a time (2 min 16 s on 2 threads, now 1 min 11 s)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def build_extension(self, ext):
        apart = copy.copy(self)  # the worker threads share this command: the directory goes on a copy
        apart.build_temp = os.path.join(self.build_temp, ext.name)
        build_ext.build_extension(apart, ext)


def boards():
    return _board_config().available()


def module_names():
    """The builders setup.py lists (``cffi_modules``): isa, and the portable
    and (where the host has a level) the host-level marshalling helpers and
    emulation library of each board."""
    level = host_level()
    portable = ["isa", "marshal"] + [f"emu_{b}" for b in boards()]
    return portable + ([f"marshal_{level}"] + [f"emu_{b}_{level}" for b in boards()] if level else [])


isa = isa_builder
marshal = marshal_builder
for _level, _, _ in _host_isa().LEVELS:
    globals()[f"marshal_{_level}"] = functools.partial(marshal_builder, _level, level_flags(_level))
for _board in boards():
    globals()[f"emu_{_board}"] = functools.partial(emu_builder, _board)
    for _level, _, _ in _host_isa().LEVELS:
        globals()[f"emu_{_board}_{_level}"] = functools.partial(emu_builder, _board, _level, level_flags(_level))
