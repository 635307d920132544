"""Running a compiled RNN model on the RNN core's C-simulation directly
(hls/rnn_core.cpp through cffi), without the dispatcher."""

from __future__ import annotations

import numpy as np

from vfpga import overlay
from vfpga.driver import isa

from .host import read_outputs, request_image
from .model import CompiledRnn, RnnCompileError
from .plan import FRAME_OP, RnnPlan

# ------------------------------------------------------ C-simulation executor

_MODULES: dict = {}


def core_module(board: str = "u200", build_dir: str | None = None):
    """hls/rnn_core.cpp compiled for ``board`` into a cffi module (cached per
    source, board and process; built under the temp dir by default). The
    RNN core is not yet part of the installed emulation library."""
    import hashlib
    import importlib.util
    import os
    import tempfile

    from cffi import FFI

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # the repository
    hls = os.path.join(root, "hls")
    if not os.path.isdir(hls):  # installed package: the sources stay in the repository
        raise RnnCompileError("the RNN core executor needs the repository's hls/ sources")
    macros = overlay.c_macros(overlay.load(board))
    srcs = [os.path.join(hls, "rnn_core.cpp")] + [os.path.join(hls, "include", f) for f in
                                                  ("vfpga_isa.h", "vfpga_core.h", "vfpga_rnn_core.h",
                                                   "vfpga_unit_scheduler.h")]
    h = hashlib.sha256(repr(sorted(macros.items())).encode())
    for s in srcs:
        with open(s, "rb") as f:
            h.update(f.read())
    key = h.hexdigest()[:16]
    if key in _MODULES:
        return _MODULES[key]
    spec = importlib.util.spec_from_file_location("_vfpga_cffi_build_rnn", os.path.join(hls, "cffi_build.py"))
    cb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cb)
    name = f"_vfpga_rnn_core_{key}"
    build = build_dir or os.path.join(tempfile.gettempdir(), f"vfpga_rnn_core_{os.getuid()}_{key}")
    os.makedirs(build, exist_ok=True)
    found = [f for f in os.listdir(build) if f.startswith(name) and f.endswith((".so", ".pyd"))]
    if found:
        path = os.path.join(build, found[0])
    else:
        ffi = FFI()
        ffi.cdef(cb.cdef_text("vfpga_isa.h", "vfpga_rnn_core.h"))
        ffi.set_source(name, '#include "vfpga_rnn_core.h"', sources=[srcs[0]], source_extension=".cpp",
                       include_dirs=[os.path.join(hls, "include")],
                       define_macros=[(k, str(v)) for k, v in macros.items()],
                       extra_compile_args=["-std=c++14", "-O3", "-Wno-unknown-pragmas"])
        path = ffi.compile(tmpdir=build)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _MODULES[key] = mod
    return mod


class RnnCoreSim:
    """k C-simulated RNN cores walking a dispatch program on one segment,
    frame by frame in program order (a phase's frames, then its barrier):
    the functional behaviour of the level-1 dispatcher for one RNN tenant,
    without its timing. For tests, scripts and the accuracy figures."""

    def __init__(self, board: str = "u200", seed: int | None = 0):
        self.mod = core_module(board)
        self.ffi, self.lib = self.mod.ffi, self.mod.lib
        self.geo = self.ffi.new("vf_rnn_geometry_t *")
        self.lib.vf_rnn_core_geometry(self.geo)
        self.rng = np.random.default_rng(seed)
        self.cores: list = []

    def _core(self):
        g, rng = self.geo, self.rng
        arrays = {"wbuf": rng.integers(-128, 128, g.wbuf_bytes, dtype=np.int8),
                  "vbuf": rng.integers(-128, 128, g.vbuf_bytes, dtype=np.int8),
                  "acc": rng.integers(-2**31, 2**31, g.acc_words, dtype=np.int32),
                  "param": rng.integers(-2**31, 2**31, g.param_entries * 3, dtype=np.int32),
                  "state": rng.integers(-2**31, 2**31, g.state_words, dtype=np.int32),
                  "act": rng.integers(-2**31, 2**31, g.act_buffer_words, dtype=np.int32)}
        bufs = self.ffi.new("vf_rnn_buffers_t *")
        keep = []
        for name, arr in arrays.items():
            ptr = self.ffi.from_buffer("int8_t[]" if arr.dtype == np.int8 else "int32_t[]", arr)
            keep.append(ptr)
            setattr(bufs, name, ptr)
        return {"arrays": arrays, "bufs": bufs, "keep": keep, "counters": self.ffi.new("vf_rnn_counters_t *")}

    def run(self, compiled: CompiledRnn, plan: RnnPlan, feeds: dict, seg: np.ndarray | None = None,
            iters: dict | None = None) -> list[np.ndarray]:
        """One request: uploads the image (unless ``seg`` is given, already
        deployed), writes the request data, walks ``plan`` and returns the
        graph outputs. ``iters`` (a dict) receives {frame offset: per
        instruction C-sim iteration counts} of every frame run."""
        if seg is None:
            seg = np.zeros(compiled.segment_size, np.int8)
            for at, data in compiled.segment_image().items():
                seg[at:at + len(data)] = np.frombuffer(data, np.int8)
        for at, data in request_image(compiled, feeds).items():
            seg[at:at + len(data)] = np.frombuffer(data, np.int8)
        while len(self.cores) < plan.k:
            self.cores.append(self._core())
        self.seg = seg
        ptr = self.ffi.from_buffer("int8_t[]", seg)
        state = self.ffi.new("vf_rnn_state_t *")
        for e in plan.program.tolist():
            off, n, slot, op = e
            if op != FRAME_OP:
                continue
            c = self.cores[slot]
            self.ffi.memmove(state, bytes(self.ffi.sizeof("vf_rnn_state_t")), self.ffi.sizeof("vf_rnn_state_t"))
            it = self.ffi.NULL
            buf = None
            if iters is not None:
                buf = np.zeros(n, np.uint32)
                it = self.ffi.from_buffer("uint32_t[]", buf)
            r = self.lib.vf_rnn_core_step(ptr, seg.size, off, n, c["bufs"], state, c["counters"], it)
            if r == self.lib.VF_RNN_STEP_FAULT or state.fault:
                raise RuntimeError(f"RNN core slot {slot}: fault {isa.FAULT_NAMES.get(state.fault, state.fault)} at "
                                   f"instruction {state.fault_insn} of the frame at {off}, addr {state.fault_addr}")
            if r != self.lib.VF_RNN_STEP_END:
                raise RuntimeError(f"frame at {off} did not run to its end (step result {r})")
            if buf is not None:
                iters[off] = buf
        return read_outputs(compiled, seg)

    def counters(self) -> dict:
        """Summed C-sim counters of every core so far."""
        keys = ("insns", "frames", "load_iters", "compute_iters", "save_iters", "load_bytes", "save_bytes", "macs")
        return {k: sum(int(getattr(c["counters"], k)) for c in self.cores) for k in keys}
