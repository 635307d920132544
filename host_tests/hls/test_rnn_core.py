"""The RNN core (hls/rnn_core.cpp): its C-sim testbench run from pytest, and
the C++ compiled into a small cffi module here, compared bit for bit with the
numpy golden model (vfpga.runtime.hw.rnn_golden) on random LSTM and GRU layers,
on one core and split over several cores along the hidden dimension. Also
prints the fixed-point vs float accuracy figures for hidden 256, sequence 25."""

import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from harness import REPO_ROOT as ROOT

from vfpga import overlay
from vfpga.runtime.compiler.rnn.frames import pack_tiles
from vfpga.runtime.hw import rnn_golden as rg

HLS = os.path.join(ROOT, "hls")
BOARD = "u200"

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the RNN core")


# ------------------------------------------------------------ C-sim testbench

def _make(target, board, build_dir):
    proc = subprocess.run(
        ["make", "-C", HLS, f"-j{os.cpu_count() or 1}", "-O", f"{target}-rnn", f"BOARD={board}",
         f"BUILD={build_dir}", f"PYTHON={sys.executable}"],
        capture_output=True, text=True, timeout=1200)
    return proc.returncode, proc.stdout + proc.stderr


def _summaries(output):
    return [line for line in output.splitlines() if line.startswith("tb_rnn_core:") and "passed" in line]


@needs_gxx
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_csim_testbench_passes(request, tmp_path):
    # Built in pytest's cache like test_csim_testbench.py's, in a directory of its own: the two files
    # may run at once on two workers, and two makes must not write the same objects.
    cache = getattr(request.config, "cache", None)
    rc, out = _make("csim", BOARD, cache.mkdir("hls-csim-rnn") if cache is not None else tmp_path)
    assert rc == 0, out[-4000:]
    lines = _summaries(out)
    assert len(lines) == 2, out[-4000:]  # vectorised and literal-HLS builds both ran
    for line in lines:
        assert line.rstrip().endswith(", 0 failed"), line
        assert int(line.split(":")[1].split()[0]) > 0, line


@needs_gxx
@pytest.mark.slow
@pytest.mark.sanitize
def test_csim_testbench_under_asan_ubsan(tmp_path):
    rc, out = _make("csim-sanitize", BOARD, tmp_path)
    assert rc == 0, out[-4000:]
    lines = _summaries(out)
    assert len(lines) == 2 and all(line.rstrip().endswith(", 0 failed") for line in lines), out[-4000:]
    assert "runtime error" not in out and "AddressSanitizer" not in out


# ------------------------------------------------------- the core through cffi

@pytest.fixture(scope="module")
def core(tmp_path_factory):
    """hls/rnn_core.cpp built for the board as a cffi module in a temp dir."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to build the RNN core")
    from cffi import FFI

    spec = importlib.util.spec_from_file_location("_vfpga_cffi_build_for_rnn", os.path.join(HLS, "cffi_build.py"))
    cffi_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cffi_build)
    macros = overlay.c_macros(overlay.load(BOARD))
    ffi = FFI()
    ffi.cdef(cffi_build.cdef_text("vfpga_isa.h", "vfpga_rnn_core.h"))
    name = f"_vfpga_rnn_core_test_{BOARD}"
    ffi.set_source(name, '#include "vfpga_rnn_core.h"', sources=[os.path.join(HLS, "rnn_core.cpp")],
                   source_extension=".cpp", include_dirs=[os.path.join(HLS, "include")],
                   define_macros=[(k, str(v)) for k, v in macros.items()],
                   extra_compile_args=["-std=c++14", "-O2", "-Wno-unknown-pragmas"])
    build = tmp_path_factory.mktemp("rnn_cffi")
    path = ffi.compile(tmpdir=str(build))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    geo = module.ffi.new("vf_rnn_geometry_t *")
    module.lib.vf_rnn_core_geometry(geo)
    rnn = overlay.load(BOARD)["rnn_core"]
    assert (geo.rows, geo.cols, geo.wbuf_bytes, geo.act_segments) == (rnn["rows"], rnn["cols"], rnn["wbuf_bytes"],
                                                                       rnn["act_segments"])
    return module, geo


class Core:
    """One RNN core's buffers and state, stepped through the cffi library."""

    def __init__(self, module, geo, rng):
        self.ffi, self.lib = module.ffi, module.lib
        self.arrays = {
            "wbuf": rng.integers(-128, 128, geo.wbuf_bytes, dtype=np.int8),
            "vbuf": rng.integers(-128, 128, geo.vbuf_bytes, dtype=np.int8),
            "acc": rng.integers(-2**31, 2**31, geo.acc_words, dtype=np.int32),
            "param": rng.integers(-2**31, 2**31, geo.param_entries * 3, dtype=np.int32),
            "state": rng.integers(-2**31, 2**31, geo.state_words, dtype=np.int32),
            # a copy of the tables per gate lane, equal as RNN_LOAD keeps them
            "act": np.tile(rng.integers(-2**31, 2**31, geo.act_words, dtype=np.int32), geo.lanes),
        }
        assert self.arrays["act"].size == geo.act_buffer_words
        self.bufs = self.ffi.new("vf_rnn_buffers_t *")
        self.keep = []
        for field, arr in self.arrays.items():
            ctype = "int8_t[]" if arr.dtype == np.int8 else "int32_t[]"
            ptr = self.ffi.from_buffer(ctype, arr)
            self.keep.append(ptr)
            setattr(self.bufs, field, ptr)
        self.state = self.ffi.new("vf_rnn_state_t *")
        self.counters = self.ffi.new("vf_rnn_counters_t *")
        self.insn_offset = 0
        self.count = 0

    def step(self, seg_ptr, seg_limit):
        return self.lib.vf_rnn_core_step(seg_ptr, seg_limit, self.insn_offset, self.count, self.bufs,
                                         self.state, self.counters, self.ffi.NULL)


class Segment:
    """A tenant segment with a bump allocator."""

    def __init__(self, module, size, rng):
        self.ffi = module.ffi
        self.mem = rng.integers(-128, 128, size, dtype=np.int8)
        self.ptr = self.ffi.from_buffer("int8_t[]", self.mem)
        self.top = 0

    def alloc(self, n, align=64):
        self.top = -(-self.top // align) * align
        at = self.top
        self.top += n
        assert self.top <= self.mem.size, "segment too small"
        return at

    def put(self, data: bytes, align=64):
        at = self.alloc(len(data), align)
        self.mem[at:at + len(data)] = np.frombuffer(data, dtype=np.int8)
        return at


class Program:
    """RNN instructions built through the cffi view of vfpga_isa.h."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib = ffi, lib
        self.insns = []

    def _new(self, opcode, deps=0, flags=0):
        i = self.ffi.new("vf_rnn_insn_t *")
        i.head.opcode = opcode
        i.head.deps = deps
        i.head.flags = flags
        self.insns.append(i)
        return i

    def marker(self, opcode):
        self._new(opcode)

    def mem(self, opcode, buffer, dram, buf, row_bytes, rows=1, planes=1, row_stride=0, plane_stride=0, deps=0):
        m = self._new(opcode, deps).rnn_mem
        m.dram_addr, m.buf_addr, m.row_bytes = dram, buf, row_bytes
        m.rows, m.planes, m.row_stride, m.plane_stride, m.buffer = rows, planes, row_stride, plane_stride, buffer

    def load(self, buffer, dram, buf, row_bytes, **kw):
        self.mem(self.lib.VF_RNN_OP_LOAD, buffer, dram, buf, row_bytes, **kw)

    def save(self, buffer, dram, buf, row_bytes, **kw):
        self.mem(self.lib.VF_RNN_OP_SAVE, buffer, dram, buf, row_bytes, **kw)

    def matvec(self, wgt, ws, vec, acc, param, rows, cols, init, deps=0):
        m = self._new(self.lib.VF_RNN_OP_MATVEC, deps, self.lib.VF_RNN_MV_INIT if init else 0).matvec
        m.wgt_addr, m.wgt_stride, m.vec_addr, m.acc_addr = wgt, ws, vec, acc
        m.param_addr, m.rows, m.cols = param, rows, cols

    def gates(self, deps=0, **fields):
        g = self._new(self.lib.VF_RNN_OP_GATES, deps).gates
        for k, v in fields.items():
            setattr(g, k, v)

    def tobytes(self):
        return b"".join(bytes(self.ffi.buffer(i)) for i in self.insns)


def _slice_weights(seg, p: rg.RnnParams, geo, s, n):
    """The slice's weights as RNN_MATVEC tiles in the segment: W (all gates),
    R (all gates, or gates 0..1 for GRU) and R2 (GRU: gate 2), each a
    product's own tiles. {name: (address, bytes)}."""
    g, hh = p.gates, p.hidden
    gru = p.cell == "gru" and not p.linear_before_reset

    def rows(mat, g0, g1):
        return np.concatenate([mat[k * hh + s:k * hh + s + n] for k in range(g0, g1)])

    parts = {"W": rows(p.w, 0, g), "R": rows(p.r, 0, 2 if gru else g)}
    if gru:
        parts["R2"] = rows(p.r, 2, 3)
    out = {}
    for name, mat in parts.items():
        t = pack_tiles(mat, geo.rows, geo.cols).tobytes()
        out[name] = (seg.put(t, 1), len(t))
    return out


def _layer_program(lib, ffi, p: rg.RnnParams, d, sw, geo, steps, s, n, table_words, state_ddr, tile):
    """The program of the core that owns hidden units [s, s + n): per
    timestep one frame (two for GRU with linear_before_reset = 0, whose
    r * h_{t-1} slices are exchanged through DDR), as in tb_rnn_core.cpp."""
    g, hh, ii = p.gates, p.hidden, p.input_size
    w_w, w_r = 0, sw["W"][1]
    w_r2 = w_r + sw["R"][1]
    tb = geo.rows * geo.cols
    v_x, v_h, v_rh, v_o = 0, ii, ii + hh, ii + 2 * hh
    a_x, a_h = 0, g * n
    s_c, s_h = 0, n
    lstm = p.cell == "lstm"
    push, pop = lib.VF_DEP_PUSH_NEXT, lib.VF_DEP_POP_PREV
    cell = (lib.VF_RNN_CELL_LSTM if lstm else
            lib.VF_RNN_CELL_GRU_LBR if p.linear_before_reset else lib.VF_RNN_CELL_GRU)
    gates = dict(cell=cell, n=n, gate_stride=n, acc_x=a_x, acc_h=a_h, param_x=a_x, param_h=a_h, state_c=s_c,
                 state_h=s_h, out_addr=v_o, sig_addr=0, tanh_addr=table_words, out_mult=p.out_mult,
                 out_shift=p.out_shift, out_zp=p.out_zp)
    pr = Program(ffi, lib)
    buf = {k: getattr(lib, f"VF_RNN_BUF_{k}") for k in ("WGT", "VEC", "PARAM", "STATE", "ACT")}

    def mv(wgt, vec, acc, rows, cols, deps):
        ws = -(-cols // geo.cols)  # tile words per row block
        # two column pieces of whole column blocks: INIT, then accumulate
        cut = ws // 2 * geo.cols if tile and ws > 1 else cols
        pr.matvec(wgt, ws, vec, acc, acc, rows, cut, True, deps)
        if cut < cols:
            pr.matvec(wgt + cut // geo.cols * tb, ws, vec + cut, acc, acc, rows, cols - cut, False)

    for t in range(steps):
        pr.marker(lib.VF_OP_FRAME)
        if t == 0:
            pr.load(buf["WGT"], sw["W"][0], w_w, sw["W"][1])
            pr.load(buf["WGT"], sw["R"][0], w_r, sw["R"][1])
            if "R2" in sw:
                pr.load(buf["WGT"], sw["R2"][0], w_r2, sw["R2"][1])
            pr.load(buf["PARAM"], d["PX"] + 12 * s, 3 * a_x, 12 * n, planes=g, plane_stride=12 * hh)
            pr.load(buf["PARAM"], d["PH"] + 12 * s, 3 * a_h, 12 * n, planes=g, plane_stride=12 * hh)
            pr.load(buf["ACT"], d["TAB"], 0, 8 * table_words)
        if t == 0 or state_ddr:
            if lstm:
                pr.load(buf["STATE"], d["C"] + 4 * s, s_c, 4 * n)
            pr.load(buf["STATE"], d["HS"] + 4 * s, s_h, 4 * n)
        pr.load(buf["VEC"], d["X"] + t * ii, v_x, ii)
        pr.load(buf["VEC"], d["Y"] + t * hh, v_h, hh, deps=push)
        mv(w_w, v_x, a_x, g * n, ii, pop)
        if cell == lib.VF_RNN_CELL_GRU:
            mv(w_r, v_h, a_h, 2 * n, hh, 0)
            pr.gates(deps=push, **{**gates, "cell": lib.VF_RNN_CELL_GRU_RH})
            pr.save(buf["VEC"], d["RH"] + s, v_o, n, deps=pop)
            pr.marker(lib.VF_OP_BARRIER)
            pr.marker(lib.VF_OP_FRAME)
            pr.load(buf["VEC"], d["RH"], v_rh, hh, deps=push)
            mv(w_r2, v_rh, a_h + 2 * n, n, hh, pop)
        else:
            mv(w_r, v_h, a_h, g * n, hh, 0)
        pr.gates(deps=push, **gates)
        pr.save(buf["VEC"], d["Y"] + (t + 1) * hh + s, v_o, n, deps=pop)
        if state_ddr or t + 1 == steps:
            if lstm:
                pr.save(buf["STATE"], d["C"] + 4 * s, s_c, 4 * n)
            pr.save(buf["STATE"], d["HS"] + 4 * s, s_h, 4 * n)
        pr.marker(lib.VF_OP_BARRIER)
    pr.marker(lib.VF_OP_END)
    return pr


def _entries(bias, mult, shift):
    return np.stack([bias, mult, shift], axis=1).astype("<i4").tobytes()


def run_layer_on_cores(module, geo, p: rg.RnnParams, xs, h0, c0, cuts, state_ddr=False, tile=False, seed=0):
    """The layer on len(cuts) - 1 cores (slice i = [cuts[i], cuts[i+1])),
    stepped one frame per core per round like the dispatcher's barrier.
    Returns (y int8 [T, H], h_T, c_T) as the cores left them in DDR."""
    ffi, lib = module.ffi, module.lib
    rng = np.random.default_rng(seed)
    hh, steps = p.hidden, xs.shape[0]
    table_words = geo.act_segments + 1
    assert p.sig.size == table_words and p.tanh.size == table_words
    ncores = len(cuts) - 1
    blocks = sum(-(-(e - s) // geo.rows) + 1 for s, e in zip(cuts[:-1], cuts[1:]))  # per gate, GRU split included
    tiles = blocks * p.gates * geo.rows * geo.cols * (-(-p.input_size // geo.cols) - (-hh // geo.cols))
    data = (p.w.size + p.r.size + tiles + 24 * p.gates * hh + 8 * table_words + xs.size + (steps + 10) * hh
            + 64 * 24 * (2 * steps + 2) * ncores)
    seg = Segment(module, data + (1 << 16), rng)
    d = {
        "PX": seg.put(_entries(p.bias_x, p.mult_x, p.shift_x), 4),
        "PH": seg.put(_entries(p.bias_h, p.mult_h, p.shift_h), 4),
        "TAB": seg.put(np.concatenate([p.sig, p.tanh]).astype("<i4").tobytes(), 4),
        "X": seg.put(np.ascontiguousarray(xs, dtype=np.int8).tobytes(), 1),
        "Y": seg.put(p.h_to_q8(h0).tobytes() + bytes(steps * hh), 1),
        "C": seg.put(np.asarray(c0, "<i4").tobytes(), 4), "HS": seg.put(np.asarray(h0, "<i4").tobytes(), 4),
        "RH": seg.alloc(hh, 1),
    }
    cores = []
    for s, e in zip(cuts[:-1], cuts[1:]):
        sw = _slice_weights(seg, p, geo, s, e - s)
        prog = _layer_program(lib, ffi, p, d, sw, geo, steps, s, e - s, table_words, state_ddr, tile)
        c = Core(module, geo, rng)
        c.insn_offset = seg.put(prog.tobytes())
        c.count = len(prog.insns)
        cores.append(c)
    result = [lib.VF_RNN_STEP_FRAME] * len(cores)
    while any(r == lib.VF_RNN_STEP_FRAME for r in result):
        for i, c in enumerate(cores):
            if result[i] == lib.VF_RNN_STEP_FRAME:
                result[i] = c.step(seg.ptr, seg.mem.size)
    for c in cores:
        assert c.state.fault == lib.VF_FAULT_NONE, (c.state.fault, c.state.fault_insn, c.state.fault_addr)
    y = seg.mem[d["Y"] + hh:d["Y"] + (steps + 1) * hh].reshape(steps, hh).copy()
    h_t = seg.mem[d["HS"]:d["HS"] + 4 * hh].view("<i4").copy()
    c_t = seg.mem[d["C"]:d["C"] + 4 * hh].view("<i4").copy()
    macs = sum(c.counters.macs for c in cores)
    return y, h_t, c_t, macs


def _random_params(rng, cell, hidden, inputs, linear_before_reset=0):
    """Integer parameters drawn directly (edge rows included): pre-activations
    from tiny to saturated, every rounding path."""
    g = rg.LSTM_GATES if cell == "lstm" else rg.GRU_GATES
    rows = g * hidden

    def part():
        bias = rng.integers(-2**18, 2**18, rows)
        mult = rng.integers(2**29, 2**31, rows)
        shift = rng.integers(26, 35, rows)
        edge = rng.random(rows) < 0.03
        bias[edge] = rng.integers(-2**31, 2**31, edge.sum())
        mult[edge] = rng.integers(-2**31, 2**31, edge.sum())
        shift[edge] = rng.integers(0, 63, edge.sum())
        return bias, mult, shift

    (bx, mx, sx), (bh, mh, sh) = part(), part()
    return rg.RnnParams(cell=cell, w=rng.integers(-128, 128, (rows, inputs)), r=rng.integers(-128, 128, (rows, hidden)),
                        bias_x=bx, mult_x=mx, shift_x=sx, bias_h=bh, mult_h=mh, shift_h=sh,
                        out_mult=int(rng.integers(2**28, 2**31)), out_shift=int(rng.integers(36, 41)),
                        out_zp=int(rng.integers(-8, 9)), linear_before_reset=linear_before_reset)


def _golden(p, xs, h0, c0):
    if p.cell == "lstm":
        y, h, c = rg.lstm_sequence(p, xs, h0, c0)
        return y, h[-1], c
    y, h = rg.gru_sequence(p, xs, h0)
    return y, h[-1], None


VARIANTS = [("lstm", 0), ("gru", 0), ("gru", 1)]


@pytest.mark.parametrize("cell,lbr", VARIANTS)
def test_random_layers_match_the_golden_model_on_1_2_3_cores(core, cell, lbr):
    module, geo = core
    rng = np.random.default_rng({"lstm": 11, "gru": 12}[cell] + 10 * lbr)
    for trial in range(3):
        hidden, inputs, steps = int(rng.integers(6, 40)), int(rng.integers(3, 50)), int(rng.integers(1, 6))
        p = _random_params(rng, cell, hidden, inputs, lbr)
        xs = rng.integers(-128, 128, (steps, inputs), dtype=np.int8)
        wide = trial == 2  # GRU keeps any initial state; LSTM c anywhere in int32
        h0 = (rng.integers(-2**31, 2**31, hidden) if wide and cell == "gru"
              else rng.integers(-rg.ONE, rg.ONE + 1, hidden)).astype(np.int32)
        c0 = (rng.integers(-2**31, 2**31, hidden) if wide else rng.integers(-4 * rg.ONE, 4 * rg.ONE, hidden))
        c0 = c0.astype(np.int32)
        gy, gh, gc = _golden(p, xs, h0, c0)
        mid = int(rng.integers(1, hidden))
        for cuts in ([0, hidden], [0, mid, hidden], [0, hidden // 3, 2 * hidden // 3 + 1, hidden]):
            y, h, c, _ = run_layer_on_cores(module, geo, p, xs, h0, c0, cuts, state_ddr=trial == 1,
                                            tile=trial == 0, seed=trial)
            np.testing.assert_array_equal(y, gy, err_msg=f"{cell} lbr={lbr} trial {trial} cuts {cuts}: outputs")
            np.testing.assert_array_equal(h, gh, err_msg=f"{cell} lbr={lbr} trial {trial} cuts {cuts}: h_T")
            if cell == "lstm":
                np.testing.assert_array_equal(c, gc, err_msg=f"lstm trial {trial} cuts {cuts}: c_T")


def test_activation_is_the_golden_table_everywhere_and_within_its_bound(core):
    """vf_rnn_activation (the gate unit's code) against rnn_golden.act on every
    pre-activation in [-2^23, 2^23), and both against float sigmoid / tanh."""
    module, geo = core
    ffi, lib = module.ffi, module.lib
    tables = {k: rg.act_table(k, geo.act_segments, geo.act_step_log2) for k in ("sigmoid", "tanh")}
    funcs = {"sigmoid": lambda x: 0.5 * (1 + np.tanh(0.5 * x)), "tanh": np.tanh}
    worst = dict.fromkeys(tables, 0.0)
    chunk = 1 << 21
    out = np.empty(chunk, np.int32)
    for lo in range(rg.PRE_MIN, rg.PRE_MAX + 1, chunk):
        pre = np.arange(lo, lo + chunk, dtype=np.int32)
        for kind, table in tables.items():
            lib.vf_rnn_activation(ffi.from_buffer("int32_t[]", table), ffi.from_buffer("int32_t[]", pre),
                                  ffi.from_buffer("int32_t[]", out), chunk)
            gold = rg.act(table, pre, geo.act_step_log2)
            assert np.array_equal(out, gold), kind
            worst[kind] = max(worst[kind], float(np.abs(out / rg.ONE - funcs[kind](pre / rg.ONE)).max()))
    print(f"\nactivation tables ({geo.act_segments} x 2^{geo.act_step_log2}): max |sigmoid_q - sigmoid| = "
          f"{worst['sigmoid']:.3g}, max |tanh_q - tanh| = {worst['tanh']:.3g}")
    assert worst["sigmoid"] <= rg.SIGMOID_ERROR_BOUND
    assert worst["tanh"] <= rg.TANH_ERROR_BOUND
    # arbitrary table words and inputs outside the range: exact and clamped
    rng = np.random.default_rng(5)
    junk = rng.integers(-2**31, 2**31, geo.act_segments + 1).astype(np.int32)
    pre = np.concatenate([rng.integers(-2**31, 2**31, 4096), [-2**31, 2**31 - 1]]).astype(np.int32)
    res = np.empty(pre.size, np.int32)
    lib.vf_rnn_activation(ffi.from_buffer("int32_t[]", junk), ffi.from_buffer("int32_t[]", pre),
                          ffi.from_buffer("int32_t[]", res), pre.size)
    np.testing.assert_array_equal(res, rg.act(junk, pre, geo.act_step_log2))
    assert res.min() >= -rg.ONE and res.max() <= rg.ONE


@pytest.mark.parametrize("cell,lbr", VARIANTS)
def test_hidden_256_sequence_25_float_accuracy_and_bit_exact_on_2_cores(core, cell, lbr):
    """DeepBench-like size with random weights: the fixed-point layer against
    float LSTM / GRU on the same dequantized weights (figures printed), and
    the C core on two RNN cores bit-exact with the golden model."""
    module, geo = core
    hidden, inputs, steps = 256, 256, 25
    acc = rg.float_accuracy(cell, hidden, inputs, steps, seed=3, linear_before_reset=lbr)
    name = f"{cell.upper()}{'' if cell == 'lstm' else f' linear_before_reset={lbr}'}"
    print(f"\n{name} hidden {hidden} input {inputs} seq {steps} (h scale {acc['h_scale']:.4g}): "
          f"Q.15 state vs float: max abs {acc['state']['max_abs']:.3g} cosine {acc['state']['cosine']:.6f}; "
          f"int8 output vs float: max abs {acc['output']['max_abs']:.3g} cosine {acc['output']['cosine']:.6f}")
    assert acc["state"]["cosine"] >= 0.999 and acc["output"]["cosine"] >= 0.999

    rng = np.random.default_rng(4)
    g = rg.LSTM_GATES if cell == "lstm" else rg.GRU_GATES
    k = 1 / np.sqrt(hidden)
    p = rg.quantize(cell, rng.uniform(-k, k, (g * hidden, inputs)), rng.uniform(-k, k, (g * hidden, hidden)),
                    rng.uniform(-k, k, g * hidden), rng.uniform(-k, k, g * hidden), h_scale=acc["h_scale"],
                    linear_before_reset=lbr)
    xs = rg.quantize_input(rng.uniform(-1, 1, (steps, inputs)), 1 / 127)
    zeros = np.zeros(hidden, np.int32)
    gy, gh, gc = _golden(p, xs, zeros, zeros)
    y, h, c, macs = run_layer_on_cores(module, geo, p, xs, zeros, zeros, [0, hidden // 2, hidden])
    np.testing.assert_array_equal(y, gy)
    np.testing.assert_array_equal(h, gh)
    if cell == "lstm":
        np.testing.assert_array_equal(c, gc)
    assert macs == steps * g * hidden * (inputs + hidden)


@pytest.mark.parametrize("opcode", [16, 17, 18, 19])
def test_cnn_core_rejects_the_rnn_opcodes(opcode):
    """The RNN opcodes lie outside [0, VF_OP_COUNT): the CNN core (the
    installed emulation library) stops at them with VF_FAULT_OPCODE before
    anything of the frame runs."""
    import importlib

    from vfpga.driver import isa

    assert opcode >= isa.lib.VF_OP_COUNT and opcode not in isa.OPCODES.values()
    try:
        emu = importlib.import_module(f"vfpga.driver._emu_{BOARD}")
    except ImportError as e:
        pytest.skip(f"emulation library not built ({e})")
    ffi, lib = emu.ffi, emu.lib
    geo = ffi.new("vf_cnn_geometry_t *")
    lib.vf_cnn_core_geometry(geo)
    arrays = [np.zeros(geo.ibuf_bytes, np.int8), np.zeros(geo.wbuf_bytes, np.int8),
              np.zeros(geo.acc_words, np.int32), np.zeros(geo.obuf_bytes, np.int8),
              np.zeros(geo.param_entries * 3, np.int32)]
    ptrs = [ffi.from_buffer("int8_t[]" if a.dtype == np.int8 else "int32_t[]", a) for a in arrays]
    bufs = ffi.new("vf_cnn_buffers_t *", ptrs)
    seg = np.zeros(4096, np.int8)
    seg[1024:1088] = np.frombuffer(isa.encode("LOAD_LINEAR", dram_addr=0, buf_addr=0, nbytes=64,
                                              buffer=isa.BUF_WGT), np.int8)
    seg[1088] = opcode
    seg[0:64] = 7
    state = ffi.new("vf_cnn_state_t *")
    r = lib.vf_cnn_core_step(ffi.from_buffer("int8_t[]", seg), seg.size, 1024, 3, bufs, state, ffi.NULL, ffi.NULL)
    assert r == lib.VF_STEP_FAULT
    assert (state.fault, state.fault_insn, state.fault_opcode) == (isa.FAULTS["OPCODE"], 1, opcode)
    assert not arrays[1].any()  # the LOAD_LINEAR of the same frame never ran


@pytest.mark.parametrize("case", ["wgt_addr", "wgt_stride", "ok"])
def test_matvec_tile_rules_fault_the_field(core, case):
    """RNN_MATVEC's beat-major weights: wgt_addr must start a tile (ROWS x
    COLS bytes) and, over more than one row block, wgt_stride must cover a
    row block's column tiles; a broken rule is VF_FAULT_FIELD at the field's
    offset, before anything runs."""
    module, geo = core
    ffi, lib = module.ffi, module.lib
    rng = np.random.default_rng(9)
    c = Core(module, geo, rng)
    acc_before = c.arrays["acc"].copy()
    tile, rows, cols = geo.rows * geo.cols, geo.rows + 1, geo.cols + 1  # two row blocks of two tiles
    wgt, ws = {"wgt_addr": (tile + 1, 2), "wgt_stride": (tile, 1), "ok": (tile, 2)}[case]
    pr = Program(ffi, lib)
    pr.marker(lib.VF_OP_FRAME)
    pr.matvec(wgt, ws, 0, 0, 0, rows, cols, False)
    pr.marker(lib.VF_OP_END)
    seg = Segment(module, 1 << 12, rng)
    c.insn_offset = seg.put(pr.tobytes())
    c.count = len(pr.insns)
    r = c.step(seg.ptr, seg.mem.size)
    if case == "ok":
        assert r != lib.VF_RNN_STEP_FAULT and c.state.fault == lib.VF_FAULT_NONE
        w = c.arrays["wbuf"]
        for row in (0, rows - 1):  # the ISA's W(r, c) addressing, two rows spot-checked
            want = int(acc_before[row])
            for col in range(cols):
                at = wgt + ((row // geo.rows) * ws + col // geo.cols) * tile + (row % geo.rows) * geo.cols \
                    + col % geo.cols
                want += int(w[at]) * int(c.arrays["vbuf"][col])
            assert c.arrays["acc"][row] == np.array(want, np.int64).astype(np.int32)  # int32, wrapping
        return
    assert r == lib.VF_RNN_STEP_FAULT
    assert (c.state.fault, c.state.fault_insn) == (lib.VF_FAULT_FIELD, 1)
    assert c.state.fault_addr == ffi.offsetof("vf_insn_rnn_matvec_t", case)
    np.testing.assert_array_equal(c.arrays["acc"], acc_before)
