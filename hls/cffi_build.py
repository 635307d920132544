"""cffi builders for the emulation libraries (used by setup.py).

* ``vfpga.driver._isa``: the ISA header alone. API mode makes the C compiler
  check every struct layout Python derives from the header.
* ``vfpga.driver._emu_<board>``: the CNN and RNN cores' and the level-1
  dispatcher's HLS C++ compiled for the host with that board's macros -- the
  C-simulation the emulated device runs.
"""

import importlib.util
import os
import re

from cffi import FFI

HLS_DIR = os.path.dirname(os.path.abspath(__file__))
INCLUDE_DIR = os.path.join(HLS_DIR, "include")
ROOT = os.path.dirname(HLS_DIR)

# Paths are given relative to setup.py's directory, as setuptools requires.
_REL_HLS = os.path.relpath(HLS_DIR, os.getcwd())
CORE_SOURCES = [os.path.join(_REL_HLS, name) for name in ("cnn_core.cpp", "rnn_core.cpp", "dispatcher.cpp")]
CXXFLAGS = ["-std=c++14", "-O3", "-Wno-unknown-pragmas"]

_DEFINE_WITH_VALUE = re.compile(r"^\s*#\s*define\s+\w+\s+(0x[0-9a-fA-F]+|\d+)\s*(/\*.*)?$")
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def _board_config():
    spec = importlib.util.spec_from_file_location(
        "_vfpga_board_config", os.path.join(ROOT, "overlay", "config.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cdef_text(*headers, macros=()):
    """The headers as cffi's cdef parser accepts them: preprocessor lines
    other than integer #defines are dropped, except that a header's
    ``#include "x.h"`` of another header of hls/include is replaced by that
    header's text (each header once, as include guards would); ``macros``
    (name, value) come first as #defines (array lengths the headers take from
    the board)."""
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


def emu_builder(board):
    config = _board_config()
    macros = config.c_macros(config.load(board))
    ffi = FFI()
    board_sizes = [(name, macros[name]) for name in ("VF_DISP_TENANTS", "VF_CNN_CORES", "VF_RNN_CORES")]
    board_sizes.append(("VF_POOL_CORES", macros["VF_CNN_CORES"] + macros["VF_RNN_CORES"]))
    ffi.cdef(cdef_text("vfpga_isa.h", "vfpga_cnn_core.h", "vfpga_rnn_core.h", "vfpga_dispatcher.h",
                       macros=board_sizes))
    ffi.set_source(
        f"vfpga.driver._emu_{board}",
        '#include "vfpga_dispatcher.h"',
        sources=CORE_SOURCES,
        source_extension=".cpp",
        include_dirs=[INCLUDE_DIR],
        define_macros=[(k, str(v)) for k, v in macros.items()],
        extra_compile_args=CXXFLAGS,
    )
    return ffi


def boards():
    return _board_config().available()


isa = isa_builder()
for _board in boards():
    globals()[f"emu_{_board}"] = emu_builder(_board)
