"""The unit scheduler's frame rules (hls/include/vfpga_unit_scheduler.h) on
the installed emulation library: a step longer than the core's instruction
queues (the board config's frame_insns) faults FRAME_SIZE before anything
of it runs, on both kinds of core; each instruction is read from DDR once,
when the decoder fetches its step, so a SAVE over a later instruction of
its own step changes nothing until that instruction is fetched again; the
compilers refuse a program with a step the queues cannot hold."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.compiler import steps

BOARD = "u200"
CFG = overlay.load(BOARD)
STEP_FRAME, STEP_END = 0, 1  # VF_STEP_*


@pytest.fixture(scope="module")
def emu():
    try:
        return importlib.import_module(f"vfpga.driver._emu_{BOARD}")
    except ImportError as e:
        pytest.skip(f"emulation library not built ({e})")


def cnn_buffers(emu):
    ffi, lib = emu.ffi, emu.lib
    geo = ffi.new("vf_cnn_geometry_t *")
    lib.vf_cnn_core_geometry(geo)
    arrays = {"ibuf": np.zeros(geo.ibuf_bytes, np.int8), "wbuf": np.zeros(geo.wbuf_bytes, np.int8),
              "acc": np.zeros(geo.acc_words, np.int32), "obuf": np.zeros(geo.obuf_bytes, np.int8),
              "param": np.zeros(geo.param_entries * isa.PARAM_ENTRY_WORDS, np.int32)}
    ptrs = {k: ffi.from_buffer("int8_t[]" if a.dtype == np.int8 else "int32_t[]", a) for k, a in arrays.items()}
    return arrays, ffi.new("vf_cnn_buffers_t *", ptrs), ptrs


def rnn_buffers(emu):
    ffi, lib = emu.ffi, emu.lib
    geo = ffi.new("vf_rnn_geometry_t *")
    lib.vf_rnn_core_geometry(geo)
    arrays = {"wbuf": np.zeros(geo.wbuf_bytes, np.int8), "vbuf": np.zeros(geo.vbuf_bytes, np.int8),
              "acc": np.zeros(geo.acc_words, np.int32),
              "param": np.zeros(geo.param_entries * isa.PARAM_ENTRY_WORDS, np.int32),
              "state": np.zeros(geo.state_words, np.int32), "act": np.zeros(geo.act_words, np.int32)}
    ptrs = {k: ffi.from_buffer("int8_t[]" if a.dtype == np.int8 else "int32_t[]", a) for k, a in arrays.items()}
    return arrays, ffi.new("vf_rnn_buffers_t *", ptrs), ptrs


def save(dram_addr: int, buf_addr: int) -> bytes:
    """SAVE of one 64-byte pixel of OBUF to the segment."""
    return isa.encode("SAVE", dram_addr=dram_addr, buf_addr=buf_addr, height=1, width=1, pixel_stride=64,
                      channels=64, y0=0, x0=0, tile_h=1, tile_w=1)


def run(emu, kind, program: list[bytes], seg_bytes: int = 1 << 20, offset: int = 4096, bufs=None):
    """The program from instruction 0 until it stops: (steps' results, state, counters, segment, iters)."""
    ffi, lib = emu.ffi, emu.lib
    seg = np.zeros(seg_bytes, np.int8)
    code = b"".join(program)
    seg[offset:offset + len(code)] = np.frombuffer(code, np.int8)
    if bufs is None:
        bufs = (cnn_buffers if kind == "cnn" else rnn_buffers)(emu)
    state = ffi.new(f"vf_{kind}_state_t *")
    counters = ffi.new(f"vf_{kind}_counters_t *")
    iters = np.full(len(program), 7, np.uint32)
    step = lib.vf_cnn_core_step if kind == "cnn" else lib.vf_rnn_core_step
    results = []
    for _ in range(len(program) + 1):
        results.append(step(ffi.from_buffer("int8_t[]", seg), seg.size, offset, len(program), bufs[1], state,
                            counters, ffi.from_buffer("uint32_t[]", iters)))
        if results[-1] != STEP_FRAME:
            break
    return results, state, counters, seg, iters


@pytest.mark.parametrize("kind", ["cnn", "rnn"])
def test_a_step_of_frame_insns_runs_one_more_faults(emu, kind):
    limit = CFG[f"{kind}_core"]["frame_insns"]
    nop, frame, end = isa.encode("NOP"), isa.encode("FRAME"), isa.encode("END")
    results, state, counters, _, iters = run(emu, kind, [frame] + [nop] * limit + [end])
    assert results[-1] == STEP_END and state.fault == 0
    assert counters.insns == limit + 2 and not iters.any()

    results, state, counters, _, iters = run(emu, kind, [frame] + [nop] * (limit + 1) + [end])
    assert results == [emu.lib.VF_STEP_FAULT]
    assert (state.fault, state.fault_insn, state.fault_addr, state.fault_opcode) == \
        (isa.FAULTS["FRAME_SIZE"], 1 + limit, limit, isa.OPCODES["NOP"])
    assert (state.pc, state.running) == (1 + limit, 0)
    assert counters.insns == 1 and counters.frames == 1  # the FRAME only: no NOP of the step retired
    assert iters[0] == 0 and (iters[1:] == 7).all()


def test_nothing_of_an_over_long_step_runs(emu):
    """The first instruction of the step, a SAVE, is not executed: the decoder
    faults before any unit starts."""
    limit = CFG["cnn_core"]["frame_insns"]
    arrays, *_ = bufs = cnn_buffers(emu)
    arrays["obuf"][:64] = 5
    program = [isa.encode("FRAME"), save(0, 0)] + [isa.encode("NOP")] * limit + [isa.encode("END")]
    _, state, counters, seg, _ = run(emu, "cnn", program, bufs=bufs)
    assert state.fault == isa.FAULTS["FRAME_SIZE"] and state.fault_insn == 1 + limit
    assert not seg[:64].any() and counters.save_bytes == 0
    # the same SAVE in a step that fits runs
    _, state, counters, seg, _ = run(emu, "cnn", program[:2] + program[3:], bufs=bufs)
    assert state.fault == 0 and (seg[:64] == 5).all() and counters.save_bytes == 64


def test_a_save_over_its_own_step_takes_effect_at_the_next_fetch(emu):
    """SAVE A overwrites SAVE B (later in the same step) with SAVE C: the
    step still runs B as fetched; a run that fetches the step again runs C."""
    offset = 4096
    b_at = offset + 2 * isa.INSN_BYTES
    arrays, *_ = bufs = cnn_buffers(emu)
    arrays["obuf"][:64] = np.frombuffer(save(0x20000, 64), np.int8)  # what A writes over B: SAVE C
    arrays["obuf"][64:128] = 9
    program = [isa.encode("FRAME"), save(b_at, 0), save(0x10000, 64), isa.encode("END")]
    _, state, _, seg, _ = run(emu, "cnn", program, offset=offset, bufs=bufs)
    assert state.fault == 0
    assert bytes(seg[b_at:b_at + 64].view(np.uint8)) == save(0x20000, 64)  # A did overwrite B
    assert (seg[0x10000:0x10040] == 9).all()  # B ran as fetched
    assert not seg[0x20000:0x20040].any()  # C did not run in that step

    # the next fetch of that instruction sees C
    ffi, lib = emu.ffi, emu.lib
    state2 = ffi.new("vf_cnn_state_t *")
    r = lib.vf_cnn_core_step(ffi.from_buffer("int8_t[]", seg), seg.size, offset, len(program), bufs[1], state2,
                             ffi.NULL, ffi.NULL)
    assert r == STEP_END and state2.fault == 0
    assert (seg[0x20000:0x20040] == 9).all()


def test_longest_step():
    nop, frame, end = (np.frombuffer(isa.encode(o), np.uint8) for o in ("NOP", "FRAME", "END"))
    code = np.concatenate([frame, nop, nop, nop, end, nop, nop, frame, nop])
    assert steps.longest_step(code) == (3, 1)
    assert steps.longest_step(code, starts=[2]) == (2, 2)  # a dispatcher frame starting inside the run
    assert steps.longest_step(code[:0]) == (0, 0)
    assert steps.check_steps(code, 3, "p", ValueError) == 3
    with pytest.raises(ValueError, match="a step of 3 instructions .* frame_insns"):
        steps.check_steps(code, 2, "p", ValueError)


def small_config(tmp_path, section: str, frame_insns: int) -> str:
    import json

    with open(os.path.join(overlay.config.CONFIG_DIR, f"{BOARD}.json")) as f:
        cfg = json.load(f)
    cfg[section]["frame_insns"] = frame_insns
    path = tmp_path / "tiny_queues.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_board_config_rejects_a_bad_frame_insns(tmp_path):
    with pytest.raises(overlay.config.BoardConfigError, match="frame_insns must be 1..65536, not 0"):
        overlay.load(small_config(tmp_path, "cnn_core", 0))


def test_the_cnn_compiler_refuses_a_step_longer_than_the_queues(tmp_path):
    from vfpga.runtime.compiler import static
    from vfpga.runtime.models import small

    graph = small.conv_graph(0)
    n = max(steps.longest_step(static.compile_graph(graph, BOARD).program)[0], 2)
    static.compile_graph(graph, small_config(tmp_path, "cnn_core", n))
    with pytest.raises(static.CompileError, match="frame_insns"):
        static.compile_graph(graph, small_config(tmp_path, "cnn_core", n - 1))


def test_the_rnn_compiler_refuses_a_step_longer_than_the_queues(tmp_path):
    from vfpga.runtime.compiler import rnn as rc
    from vfpga.runtime.compiler.rnn.model import RnnCompileError
    from vfpga.runtime.models import small

    m = small.random_rnn_model("GRU", 32, 32, 3, seed=1)
    feeds = {"X": np.random.default_rng(0).uniform(-1, 1, (3, 1, 32)).astype(np.float32)}
    n = steps.longest_step(rc.compile_rnn(m, BOARD, calibration=[feeds]).program)[0]
    assert n >= 2
    rc.compile_rnn(m, small_config(tmp_path, "rnn_core", n), calibration=[feeds])
    with pytest.raises(RnnCompileError, match="frame_insns"):
        rc.compile_rnn(m, small_config(tmp_path, "rnn_core", n - 1), calibration=[feeds])
