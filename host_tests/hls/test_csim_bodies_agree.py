"""The CNN core's C-sim bodies agree on random programs.

hls/cnn_core.cpp has two bodies: the literal HLS loop nests (VF_HLS_LITERAL,
what Vitis synthesises, counting its beats as it runs) and the vectorised
body the emulator runs (blocked int8 GEMM for CONV, contiguous runs for the
other units, loop counts from the cycle model's formulas). The literal body
is built here as a small cffi module; the installed emulation libraries are
the portable build and, where this host has an ISA level, the host build
(driver/host_isa.py). Every random program -- all opcodes, edge shapes
(cin_g not a multiple of ICP, groups and depthwise, padding, strides,
partial tiles), dependency tokens, and faults of every kind -- runs on each
from the same random segment and on-chip buffers; the segment bytes, every
buffer, the state (fault, fault address and instruction, pc), the counters
and the per-instruction iteration counts must be identical."""

from __future__ import annotations

import importlib
import importlib.util
import mmap
import os
import shutil

import numpy as np
import pytest
from harness import REPO_ROOT

from vfpga import overlay
from vfpga.driver import host_isa, isa

HLS = os.path.join(REPO_ROOT, "hls")
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the literal CNN core")

SEG_BYTES = 1 << 16
EDGES = (0.0, 0.002, 0.01, 0.04)  # chance of an arbitrary field value, by program
STEP_FRAME = 0  # VF_STEP_FRAME: more to run
STATE = ("pc", "running", "fault", "fault_insn", "fault_addr", "fault_opcode")
COUNTERS = ("insns", "frames", "load_iters", "compute_iters", "save_iters", "load_bytes", "save_bytes", "macs")
BUFFERS = (("ibuf", "int8_t", "ibuf_bytes"), ("wbuf", "int8_t", "wbuf_bytes"), ("acc", "int32_t", "acc_words"),
           ("obuf", "int8_t", "obuf_bytes"), ("param", "int32_t", "param_entries"))


@pytest.fixture(scope="module")
def literal_cores(tmp_path_factory):
    """board -> hls/cnn_core.cpp built with -DVF_HLS_LITERAL=1 as a cffi module."""
    from cffi import FFI

    spec = importlib.util.spec_from_file_location("_vfpga_cffi_build_bodies", os.path.join(HLS, "cffi_build.py"))
    cffi_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cffi_build)
    built = {}

    def get(board):
        if board not in built:
            ffi = FFI()
            ffi.cdef(cffi_build.cdef_text("vfpga_isa.h", "vfpga_cnn_core.h"))
            name = f"_vfpga_cnn_literal_{board}"
            macros = overlay.c_macros(overlay.load(board))
            ffi.set_source(name, '#include "vfpga_cnn_core.h"', sources=[os.path.join(HLS, "cnn_core.cpp")],
                           source_extension=".cpp", include_dirs=[os.path.join(HLS, "include")],
                           define_macros=[(k, str(v)) for k, v in macros.items()] + [("VF_HLS_LITERAL", "1")],
                           extra_compile_args=["-std=c++14", "-O1", "-Wno-unknown-pragmas"])
            path = ffi.compile(tmpdir=str(tmp_path_factory.mktemp(f"literal_{board}")))
            mspec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
            built[board] = module
        return built[board]

    return get


def bodies(literal_cores, board):
    """(name, module) of every body to compare, the literal one first."""
    out = [("literal", literal_cores(board)), ("portable", importlib.import_module(f"vfpga.driver._emu_{board}"))]
    host = host_isa.emulation_module(board)
    if host is not out[1][1]:
        out.append((host_isa.build_name(host), host))
    return out


# ------------------------------------------------------------------ random programs

class Gen:
    """Random instructions for one board; ``edge`` is the chance of a field
    taking an arbitrary value (most programs stay mostly valid, so the bodies
    compute; some fault)."""

    def __init__(self, rng: np.random.Generator, geo: dict, edge: float):
        self.rng, self.geo, self.edge = rng, geo, edge
        self.tokens = rng.random() < 0.25  # programs with dependency tokens (which may deadlock)

    def r(self, lo, hi):  # uniform in [lo, hi]
        return int(self.rng.integers(lo, hi + 1))

    def wild(self) -> bool:
        return self.rng.random() < self.edge

    def u(self, bits):
        return int(self.rng.integers(0, 1 << bits))

    def addr(self, size, length, bits=32):
        """An offset where ``length`` fits in ``size`` (sometimes anything)."""
        if self.wild():
            return self.u(bits)
        return self.r(0, max(0, size - length)) if length <= size else self.r(0, size)

    def word_addr(self, size, length):
        """A CONV weight offset: a multiple of the beat word where ``length``
        fits (sometimes anything, mostly misaligned then)."""
        word = isa.conv_word_bytes(self.geo["icp"], self.geo["ocp"])
        if self.wild():
            return self.u(32)
        return word * self.r(0, max(0, size - length) // word)

    def deps(self, opcode):
        if self.wild():
            return self.u(8)
        if not self.tokens or self.rng.random() < 0.5:
            return 0
        d = isa.DEP
        load, save = d["POP_NEXT"] | d["PUSH_NEXT"], d["POP_PREV"] | d["PUSH_PREV"]
        allowed = load if opcode in ("LOAD_TILE", "LOAD_LINEAR") else save if opcode == "SAVE" else load | save
        return self.u(8) & allowed

    def clip(self):
        if not self.wild():
            return -128, 127
        lo, hi = self.r(-128, 127), self.r(-128, 127)
        return (lo, hi) if self.rng.random() < 0.3 else (min(lo, hi), max(lo, hi))

    def mem(self, opcode):
        g = self.geo
        ch = self.r(1, 40) if self.rng.random() < 0.7 else self.r(1, 300)
        ps = ch + (0 if self.rng.random() < 0.5 else self.r(0, 8))
        h, w = self.r(1, 12), self.r(1, 12)
        th, tw = self.r(1, 10), self.r(1, 10)
        y0, x0 = self.r(-3, h), self.r(-3, w)
        f = dict(height=h, width=w, channels=ch, pixel_stride=ps, tile_h=th, tile_w=tw, y0=y0, x0=x0,
                 pad_value=self.r(-128, 127))
        buf = g["ibuf_bytes"] if opcode == "LOAD_TILE" else g["obuf_bytes"]
        if opcode == "SAVE":
            f["y0"], f["x0"] = self.r(0, h - 1), self.r(0, w - 1)
            f["step_y"] = 0 if self.rng.random() < 0.7 else self.r(1, 3)
            f["step_x"] = 0 if self.rng.random() < 0.7 else self.r(1, 3)
            sy, sx = max(1, f["step_y"]), max(1, f["step_x"])
            f["tile_h"] = self.r(1, max(1, (h - 1 - f["y0"]) // sy + 1))
            f["tile_w"] = self.r(1, max(1, (w - 1 - f["x0"]) // sx + 1))
        f["buf_addr"] = self.addr(buf, f["tile_h"] * f["tile_w"] * ch)
        f["dram_addr"] = self.addr(SEG_BYTES, h * w * ps)
        if self.wild():
            key = ("channels", "pixel_stride", "height", "width", "tile_h", "tile_w")[self.r(0, 5)]
            f[key] = self.r(0, 20)
        if self.wild():
            f["y0"], f["x0"] = self.r(-32768, 32767), self.r(-32768, 32767)
        return f

    def linear(self):
        g = self.geo
        to_param = self.rng.random() < 0.3
        n = 4 * self.r(1, 600)
        size = g["param_entries"] * isa.PARAM_ENTRY_WORDS * 4 if to_param else g["wbuf_bytes"]
        # a WBUF run starts on a bus word (else FIELD), and mostly does: its first and last word are merged
        align = 4 if to_param or self.wild() else g["axi_bytes"]
        f = dict(buffer=isa.BUF_PARAM if to_param else isa.BUF_WGT, nbytes=n,
                 buf_addr=align * (self.addr(size, n) // align), dram_addr=self.addr(SEG_BYTES, n))
        if self.wild():
            f["buffer"] = self.u(8)
        if self.wild():
            f["nbytes"] = self.r(0, 9)
        return f

    def conv(self):
        g = self.geo
        for _ in range(20):  # a shape whose operands fit the buffers
            groups = 1 if self.rng.random() < 0.6 else self.r(2, 4)
            cin = 1 if self.rng.random() < 0.25 else (self.r(2, 40) if self.rng.random() < 0.8 else self.r(2, 160))
            cout = self.r(1, 40)
            kh, kw = (self.r(1, 3), self.r(1, 3)) if self.rng.random() < 0.8 else (self.r(1, 7), self.r(1, 7))
            sh, sw = (1, 1) if self.rng.random() < 0.6 else (self.r(1, 3), self.r(1, 3))
            oh, ow = self.r(1, 9), self.r(1, 9)
            ih, iw = (oh - 1) * sh + kh, (ow - 1) * sw + kw
            ict, oct_ = groups * cin, groups * cout
            lens = (ih * iw * ict, isa.conv_weight_bytes(groups, cin, cout, kh, kw, g["icp"], g["ocp"]),
                    oh * ow * oct_)
            if (lens[0] <= g["ibuf_bytes"] and lens[1] <= g["wbuf_bytes"] and lens[2] <= g["obuf_bytes"]
                    and lens[2] <= g["acc_words"] and oct_ <= g["param_entries"]):
                break
        flags = [0, isa.CONV_ACC_INIT, isa.CONV_ACC_FINAL, isa.CONV_ACC_INIT | isa.CONV_ACC_FINAL][self.r(0, 3)]
        lo, hi = self.clip()
        f = dict(groups=groups, cin_g=cin, cout_g=cout, kh=kh, kw=kw, sh=sh, sw=sw, out_h=oh, out_w=ow,
                 in_h=ih + (self.r(0, 2) if self.rng.random() < 0.2 else 0),
                 in_w=iw + (self.r(0, 2) if self.rng.random() < 0.2 else 0),
                 in_addr=self.addr(g["ibuf_bytes"], lens[0]), wgt_addr=self.word_addr(g["wbuf_bytes"], lens[1]),
                 out_addr=self.addr(g["obuf_bytes"], lens[2]), acc_addr=self.addr(g["acc_words"], lens[2]),
                 param_addr=self.addr(g["param_entries"], oct_, bits=16), out_zp=self.r(-128, 127),
                 clip_lo=lo, clip_hi=hi)
        if self.wild():
            key = ("groups", "cin_g", "cout_g", "kh", "kw", "sh", "sw", "out_h", "out_w", "in_h", "in_w")[self.r(0, 10)]
            f[key] = self.r(0, 3)
        return f, flags

    def pool(self):
        g = self.geo
        ch = self.r(1, 48)
        kh, kw, sh, sw = self.r(1, 4), self.r(1, 4), self.r(1, 3), self.r(1, 3)
        oh, ow = self.r(1, 7), self.r(1, 7)
        ih, iw = (oh - 1) * sh + kh, (ow - 1) * sw + kw
        vy1, vx1 = ih - self.r(0, min(2, ih)), iw - self.r(0, min(2, iw))
        lo, hi = self.clip()
        f = dict(channels=ch, kh=kh, kw=kw, sh=sh, sw=sw, out_h=oh, out_w=ow, in_h=ih, in_w=iw,
                 valid_y0=self.r(0, min(2, vy1)), valid_y1=vy1, valid_x0=self.r(0, min(2, vx1)), valid_x1=vx1,
                 in_addr=self.addr(g["ibuf_bytes"], ih * iw * ch), out_addr=self.addr(g["obuf_bytes"], oh * ow * ch),
                 mult=self.r(-2**31, 2**31 - 1) if self.wild() else self.r(1, 1 << 16),
                 shift=self.r(0, 30) if not self.wild() else self.u(8), in_zp=self.r(-128, 127),
                 out_zp=self.r(-128, 127), clip_lo=lo, clip_hi=hi)
        if self.wild():
            f[("valid_y0", "valid_x0", "valid_y1", "valid_x1", "in_h")[self.r(0, 4)]] = self.r(0, 20)
        return f, self.u(2) if not self.wild() else self.u(16)

    def elementwise(self, opcode):
        g = self.geo
        lo, hi = self.clip()
        if opcode == "LUT":
            n = self.r(1, 3000)
            src_obuf = self.rng.random() < 0.4
            src = g["obuf_bytes"] if src_obuf else g["ibuf_bytes"]
            out = self.addr(g["obuf_bytes"], n)
            f = dict(length=n, in_addr=out if src_obuf and self.rng.random() < 0.5 else self.addr(src, n),
                     out_addr=out, table_addr=self.addr(g["wbuf_bytes"], isa.LUT_ENTRIES))
            return f, isa.LUT_SRC_OBUF if src_obuf else 0
        common = dict(shift=self.r(0, 62) if not self.wild() else self.u(8), a_zp=self.r(-128, 127),
                      b_zp=self.r(-128, 127), out_zp=self.r(-128, 127), clip_lo=lo, clip_hi=hi)
        if opcode == "ADD":
            n = self.r(1, 3000)
            return dict(length=n, a_addr=self.addr(g["ibuf_bytes"], n), b_addr=self.addr(g["ibuf_bytes"], n),
                        out_addr=self.addr(g["obuf_bytes"], n), a_mult=self.r(-2**31, 2**31 - 1),
                        b_mult=self.r(-2**31, 2**31 - 1), **common), 0
        px, ch = self.r(1, 60), self.r(1, 70)
        bcast = self.rng.random() < 0.5
        return dict(pixels=px, channels=ch, a_addr=self.addr(g["ibuf_bytes"], px * ch),
                    b_addr=self.addr(g["ibuf_bytes"], ch if bcast else px * ch),
                    out_addr=self.addr(g["obuf_bytes"], px * ch), mult=self.r(-2**31, 2**31 - 1),
                    **common), isa.MUL_BCAST if bcast else 0

    def insn(self) -> bytes:
        if self.rng.random() < self.edge / 4:
            return self.rng.integers(0, 256, isa.INSN_BYTES, dtype=np.uint8).tobytes()  # 64 random bytes
        ops = ["LOAD_TILE", "LOAD_TILE", "LOAD_LINEAR", "CONV", "CONV", "CONV", "CONV", "POOL", "ADD", "LUT",
               "MUL", "SAVE", "SAVE", "NOP", "FRAME", "BARRIER"]
        op = ops[self.r(0, len(ops) - 1)] if self.rng.random() > 0.015 else "END"
        flags = 0
        if op in ("LOAD_TILE", "SAVE"):
            fields = self.mem(op)
        elif op == "LOAD_LINEAR":
            fields = self.linear()
        elif op == "CONV":
            fields, flags = self.conv()
        elif op == "POOL":
            fields, flags = self.pool()
        elif op in ("ADD", "LUT", "MUL"):
            fields, flags = self.elementwise(op)
        else:
            fields = {}
        if self.wild():
            flags = self.u(16)
        raw = bytearray(isa.encode(op, deps=self.deps(op), flags=flags, tag=self.u(32), **fields))
        if self.rng.random() < self.edge / 4:
            raw[0] = self.r(len(isa.OPCODES), 255)  # an undefined opcode
        return bytes(raw)


def random_case(rng: np.random.Generator, geo: dict, edge: float):
    """(segment bytes, instruction offset, count, seg_limit, buffer contents) of one program."""
    gen = Gen(rng, geo, edge)
    n = int(rng.integers(1, 25))
    program = b"".join(gen.insn() for _ in range(n))
    seg = rng.integers(-128, 128, SEG_BYTES, dtype=np.int8)
    offset = isa.INSN_BYTES * int(rng.integers(0, (SEG_BYTES - len(program)) // isa.INSN_BYTES))
    seg[offset:offset + len(program)] = np.frombuffer(program, np.int8)
    limit = SEG_BYTES if rng.random() < 0.85 else int(rng.integers(0, SEG_BYTES))
    bufs = {}
    for name, ctype, key in BUFFERS:
        size = geo[key] * (isa.PARAM_ENTRY_WORDS if name == "param" else 1)
        if ctype == "int8_t":
            bufs[name] = rng.integers(-128, 128, size, dtype=np.int8)
        else:
            bufs[name] = rng.integers(-2**31, 2**31, size, dtype=np.int64).astype(np.int32)
    shifts = bufs["param"][2::isa.PARAM_ENTRY_WORDS]  # PARAM shifts mostly in range
    shifts[:] = np.where(rng.random(shifts.size) < 1 - edge / 20, rng.integers(0, 63, shifts.size), shifts)
    return seg, offset, n, limit, bufs


def run(module, seg, offset, n, limit, bufs):
    """The program on one body: (segment, buffers, state, counters, iters, step results)."""
    ffi, lib = module.ffi, module.lib
    seg = seg.copy()
    keep = {name: value.copy() for name, value in bufs.items()}
    cbufs = ffi.new("vf_cnn_buffers_t *", {
        name: ffi.from_buffer(f"{ctype}[]", keep[name]) for name, ctype, _ in BUFFERS})
    state = ffi.new("vf_cnn_state_t *")
    counters = ffi.new("vf_cnn_counters_t *")
    iters = np.zeros(n, np.uint32)
    cseg = ffi.from_buffer("int8_t[]", seg)
    citers = ffi.from_buffer("uint32_t[]", iters)
    steps = []
    for _ in range(n + 2):  # every step retires an instruction
        steps.append(lib.vf_cnn_core_step(cseg, limit, offset, n, cbufs, state, counters, citers))
        if steps[-1] != STEP_FRAME:
            break
    return (seg, keep, {k: getattr(state, k) for k in STATE}, {k: getattr(counters, k) for k in COUNTERS},
            iters, steps)


def geometry(module) -> dict:
    geo = module.ffi.new("vf_cnn_geometry_t *")
    module.lib.vf_cnn_core_geometry(geo)
    return {k: getattr(geo, k) for k in ("icp", "ocp", "axi_bytes", "ibuf_bytes", "wbuf_bytes", "acc_words", "obuf_bytes",
                                         "param_entries")}


def assert_same_run(got, ref, where: str) -> None:
    """Two runs of one case (run()'s tuple) are the same in everything observable."""
    assert got[5] == ref[5], f"{where}: step results"
    assert got[2] == ref[2], f"{where}: state"
    assert got[3] == ref[3], f"{where}: counters"
    np.testing.assert_array_equal(got[4], ref[4], err_msg=f"{where}: iterations per instruction")
    np.testing.assert_array_equal(got[0], ref[0], err_msg=f"{where}: segment bytes")
    for buf in ref[1]:
        np.testing.assert_array_equal(got[1][buf], ref[1][buf], err_msg=f"{where}: {buf}")


def check_programs(literal_cores, board, programs, seed):
    compared = bodies(literal_cores, board)
    geo = geometry(compared[0][1])
    assert all(geometry(m) == geo for _, m in compared)
    rng = np.random.default_rng(seed)
    faults, work = set(), {}
    for t in range(programs):
        case = random_case(rng, geo, edge=EDGES[t % len(EDGES)])
        ref = run(compared[0][1], *case)
        for name, module in compared[1:]:
            got = run(module, *case)
            where = f"{board} program {t} (seed {seed}): {name} body vs literal"
            assert_same_run(got, ref, where)
        faults.add(ref[2]["fault"])
        seg, offset, n = case[0], case[1], case[2]
        ops = seg[offset:offset + n * isa.INSN_BYTES].view(np.uint8)[::isa.INSN_BYTES][:ref[2]["pc"]]
        for op in ops:
            work[int(op)] = work.get(int(op), 0) + 1
    # the programs did exercise the units and the faults
    for op in ("CONV", "POOL", "ADD", "LUT", "MUL", "LOAD_TILE", "LOAD_LINEAR", "SAVE"):
        assert work.get(isa.OPCODES[op], 0) > 0, f"no {op} retired in {programs} programs"
    assert {isa.FAULTS["NONE"], isa.FAULTS["FIELD"], isa.FAULTS["BUFFER"], isa.FAULTS["SEGMENT"]} <= faults
    return len(compared)


class StripedWindow:
    """A DDR window over the board's banks (address space only) where a
    segment sits striped over the board's banks (overlay.config.Stripe,
    the layout of vf_seg_window)."""

    SEG_WIN = 3 * 4096  # the segment's window offset (part 0's, in bank 0)

    def __init__(self, board: str):
        cfg = overlay.load(board)
        self.stripe = overlay.config.segment_stripe(cfg)
        self.bytes = (cfg["ddr"]["banks"] - 1) * cfg["ddr"]["bank_stride"] + (1 << 20)
        noreserve = getattr(mmap, "MAP_NORESERVE", 0x4000)
        self.map = mmap.mmap(-1, self.bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | noreserve)
        self.array = np.frombuffer(self.map, np.int8)

    def runs(self, n):
        return overlay.config.segment_runs(self.stripe, self.SEG_WIN, 0, n)

    def run(self, module, seg, offset, n, limit, bufs):
        """run() with the segment striped in the window (vf_cnn_core_step_window)."""
        ffi, lib = module.ffi, module.lib
        for at, a, m in self.runs(seg.size):
            self.array[at:at + m] = seg[a:a + m]
        keep = {name: value.copy() for name, value in bufs.items()}
        cbufs = ffi.new("vf_cnn_buffers_t *", {
            name: ffi.from_buffer(f"{ctype}[]", keep[name]) for name, ctype, _ in BUFFERS})
        state, counters = ffi.new("vf_cnn_state_t *"), ffi.new("vf_cnn_counters_t *")
        iters = np.zeros(n, np.uint32)
        mem, citers = ffi.from_buffer("int8_t[]", self.map), ffi.from_buffer("uint32_t[]", iters)
        steps = []
        for _ in range(n + 2):
            steps.append(lib.vf_cnn_core_step_window(mem, self.bytes, self.SEG_WIN, 1, limit, offset, n, cbufs,
                                                     state, counters, citers))
            if steps[-1] != STEP_FRAME:
                break
        out = np.empty_like(seg)
        for at, a, m in self.runs(seg.size):
            out[a:a + m] = self.array[at:at + m]
        return (out, keep, {k: getattr(state, k) for k in STATE}, {k: getattr(counters, k) for k in COUNTERS},
                iters, steps)


def check_striped(literal_cores, board, programs, seed):
    """Every body on a segment striped over the board's banks gives
    what the literal body gives on the same segment contiguous: the same
    segment bytes, buffers, state (fault addresses are segment offsets),
    counters and iterations."""
    compared = bodies(literal_cores, board)
    geo = geometry(compared[0][1])
    window = StripedWindow(board)
    assert window.stripe is not None and len(window.runs(SEG_BYTES)) == SEG_BYTES // window.stripe.word
    rng = np.random.default_rng(seed)
    faults = set()
    for t in range(programs):
        case = random_case(rng, geo, edge=EDGES[t % len(EDGES)])
        ref = run(compared[0][1], *case)
        for name, module in compared:
            got = window.run(module, *case)
            where = f"{board} program {t} (seed {seed}): {name} body striped vs literal contiguous"
            assert_same_run(got, ref, where)
        faults.add(ref[2]["fault"])
    assert {isa.FAULTS["NONE"], isa.FAULTS["SEGMENT"]} <= faults


# the big core's four ports move a word of each part per beat; u200's one-port cores each word on its bank's port
@pytest.mark.parametrize("board", ["u200_bigcore", "u200"])
def test_a_striped_segment_changes_no_byte_on_any_body(literal_cores, board):
    # u200's one-port cores need more programs before a SEGMENT fault comes up
    check_striped(literal_cores, board, programs=40 if board == "u200_bigcore" else 80, seed=21)


@pytest.mark.slow
@pytest.mark.parametrize("board", ["u200_bigcore", "u200"])
@pytest.mark.parametrize("seed", [4, 5])
def test_many_programs_on_a_striped_segment(literal_cores, board, seed):
    check_striped(literal_cores, board, programs=300, seed=seed)


@pytest.mark.parametrize("board", ["u200", "pynq_z2"])
def test_random_programs_agree_on_every_body(literal_cores, board):
    assert check_programs(literal_cores, board, programs=160, seed=15) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("board", ["u200", "pynq_z2", "zcu104"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_random_programs_agree_on_every_body(literal_cores, board, seed):
    check_programs(literal_cores, board, programs=1500, seed=seed)
