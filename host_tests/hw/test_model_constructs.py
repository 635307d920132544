"""Every assumption of the cycle models is tied to the HLS construct that
makes it true, and this test fails when such a construct is removed.

The models' docstrings (runtime/hw/cycle_model.py, rnn_cycle_model.py,
timeline.py, frame_timing.py) carry a section "HLS constructs" whose every
bullet names its construct with a tag:

  [hls FILE LABEL pipelined]   the loop labelled LABEL carries PIPELINE II=1
  [hls FILE LABEL unrolled]    ... carries UNROLL
  [hls FILE NAME]              the identifier NAME (label, function, macro) occurs
  [hls FILE "TEXT"]            the text occurs (whitespace normalised)
  [hls-gap NAME]               an assumption the literal HLS does not make true
                               yet: GAPS[NAME] is the check that will pass once
                               it does (a strict xfail until then)

FILE is relative to hls/. The checks read the sources, the pragmas the
preprocessor leaves for a board (macros expanded) and the board configs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from harness import REPO_ROOT

from vfpga import overlay
from vfpga.overlay import resources
from vfpga.runtime.hw import cycle_model, frame_timing, parameters, rnn_cycle_model, timeline

HLS = os.path.join(REPO_ROOT, "hls")
MODELS = {"cycle_model": cycle_model, "rnn_cycle_model": rnn_cycle_model, "timeline": timeline,
          "frame_timing": frame_timing}
TAG = re.compile(r"\[(hls|hls-gap) ([^\]]+)\]")


def source(name: str) -> str:
    with open(os.path.join(HLS, name)) as f:
        return f.read()


def _squash(text: str) -> str:
    return " ".join(text.split())


def loop_head(text: str, label: str) -> str | None:
    """The loop labelled ``label``: from its header to its first nested loop
    (or the end of its body's first block): where its pragmas stand."""
    m = re.search(rf"^\s*{re.escape(label)}:\s*$", text, re.M) or re.search(rf"\b{re.escape(label)}:", text)
    if m is None:
        return None
    brace = text.find("{", m.end())
    if brace < 0:
        return None
    rest = text[brace + 1:]
    stop = re.search(r"^\s*[A-Z][A-Z0-9_]*:\s*$|\bfor\s*\(|VF_HARDWARE_LOOP", rest, re.M)
    return rest[:stop.start()] if stop else rest


def _braced(text: str, start: int) -> str | None:
    """The text from the brace at ``start`` to its matching brace."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i + 1]
    return None


def loop_body(text: str, label: str) -> str | None:
    """The whole body (braces matched) of the loop labelled ``label``."""
    m = re.search(rf"\b{re.escape(label)}:", text)
    return None if m is None else _braced(text, text.find("{", m.end()))


def check_tag(spec: str) -> tuple[bool, str]:
    """(holds, what) for the body of an [hls ...] tag."""
    parts = spec.split(None, 1)
    if len(parts) != 2:
        return False, f"malformed tag [hls {spec}]"
    name, what = parts
    path = os.path.join(HLS, name)
    if not os.path.isfile(path):
        return False, f"no file hls/{name}"
    text = source(name)
    what = what.strip()
    if what.startswith('"'):
        needle = what.strip('"')
        return _squash(needle) in _squash(text), f'hls/{name} contains "{needle}"'
    words = what.split()
    if len(words) == 2 and words[1] in ("pipelined", "unrolled"):
        head = loop_head(text, words[0])
        pragma = "#pragma HLS PIPELINE II=1" if words[1] == "pipelined" else "#pragma HLS UNROLL"
        return head is not None and pragma in head, f"hls/{name}: loop {words[0]} has {pragma}"
    if len(words) == 1:
        return re.search(rf"\b{re.escape(words[0])}\b", text) is not None, f"hls/{name} has {words[0]}"
    return False, f"malformed tag [hls {spec}]"


def tags(module) -> list[tuple[str, str]]:
    return TAG.findall(module.__doc__ or "")


def constructs_section(module) -> list[str]:
    """The bullets of the docstring's "HLS constructs" section."""
    doc = module.__doc__ or ""
    m = re.search(r"^HLS constructs\n-+\n(.*?)(?:\n\S[^\n]*\n-+\n|\Z)", doc, re.S | re.M)
    assert m, f"{module.__name__}: no 'HLS constructs' section in the docstring"
    bullets, current = [], None
    for line in m.group(1).splitlines():
        if line.startswith("* "):
            current = line
            bullets.append(current)
        elif current is not None and line.strip():
            bullets[-1] += " " + line.strip()
    return bullets


# ---------------------------------------------------------------- the phase-B gaps

def _between(text: str, a: str, b: str) -> str:
    i, j = text.find(f"{a}:"), text.find(f"{b}:")
    return text[i:j] if 0 <= i < j else ""


def wbuf_words() -> bool:
    """A MAC beat's ICP x OCP weights are one WBUF word (the closed gap
    "wbuf_lanes"): WBUF reshaped cyclically by VF_CONV_WORD in
    VF_CNN_PARTITIONS (one memory of beat-wide words), the CONV and
    depthwise beats read their word at constant byte offsets, with no
    run-time stride (k.WST) or per-lane weight index (k.w[...]), and
    LOAD_LINEAR writes WBUF a whole word at a time (LINEAR_WORD), never a
    byte into a wide word."""
    macro = _squash(source("include/vfpga_hls.h").split("#define VF_CNN_PARTITIONS", 1)[1].split("#define", 1)[0])
    core = source("cnn_core.cpp")
    conv, dw = _squash(loop_body(core, "CONV_BEAT") or ""), _squash(loop_body(core, "DW_BEAT") or "")
    linear = _squash(function_body(core, "vf_load_linear"))
    return ("ARRAY_RESHAPE variable=wbuf dim=D cyclic factor=VF_CONV_WORD" in macro
            and check_tag("cnn_core.cpp LINEAR_WORD unrolled")[0]
            and "wbuf[wi * VF_CONV_WORD + j] = wword[j];" in linear and "wbuf[l.buf_addr + k]" not in linear
            and "k.w + wi * VF_CONV_WORD" in conv and "wb[o * VF_ICP + i]" in conv and "WST" not in conv
            and "k.w + wr * VF_CONV_WORD" in dw and "wl[b % VF_OCP] = ww[b]" in dw and "k.w[" not in dw)


# the literal LOAD / SAVE beat loops: (file, loop label)
DDR_BEATS = (("cnn_core.cpp", "LOAD_BEAT_DENSE"), ("cnn_core.cpp", "LOAD_BEAT"), ("cnn_core.cpp", "LINEAR_BEAT"),
             ("cnn_core.cpp", "SAVE_BEAT_DENSE"), ("cnn_core.cpp", "SAVE_BEAT"), ("rnn_core.cpp", "MEM_BEAT"))


def core_ports_split(files: dict[str, str] | None = None) -> bool:
    """A core with VF_CORE_PORTS bank ports moves each LOAD / SAVE beat as
    one bus word per port in the same cycle (the closed gap
    "core_ports_interleave"), and a one-port core on a striped segment
    (u200) moves each word of its beat on the port of that word's bank: the
    beat helpers of vfpga_ddr.h loop over the ports (the words) unrolled,
    each access on its own bank's port, at the stripe mapping; every literal
    beat loop goes through them, and no beat loop accesses DDR past them.
    ``files``: hls-relative path -> text (the sources by default)."""
    text = (files or {}).get
    ddr = text("include/vfpga_ddr.h") or source("include/vfpga_ddr.h")
    labels = ("SEG_READ_PORT", "SEG_WRITE_PORT", "SEG_READ_BEAT_WORD", "SEG_WRITE_BEAT_WORD")
    if not all(check_text(ddr, f"{label} unrolled") for label in labels):
        return False
    read, write, read1, write1 = (_squash(loop_body(ddr, label) or "") for label in labels)
    if ("for (uint32_t p = 0; p < VF_CORE_PORTS; ++p)" not in _squash(ddr)
            or "memcpy(dst + (lo - a), d.port[p] + vf_seg_window(d, seg_win, lo), hi - lo);" not in read
            or "memcpy(d.port[p] + vf_seg_window(d, seg_win, lo), src + (lo - a), hi - lo);" not in write
            or "vf_ddr_read(d, vf_seg_window(d, seg_win, lo), dst + (lo - a), (uint32_t)(hi - lo));" not in read1
            or "vf_ddr_write(d, vf_seg_window(d, seg_win, lo), src + (lo - a), (uint32_t)(hi - lo));" not in write1
            or "(w % VF_SEG_PARTS) * (uint64_t)VF_DDR_BANK_STRIDE + seg_win + (w / VF_SEG_PARTS) * VF_DDR_WORD"
            not in _squash(ddr)):
        return False
    for name, label in DDR_BEATS:
        body = _squash(loop_body(text(name) or source(name), label) or "")
        save = label.startswith("SAVE") or label == "MEM_BEAT"
        if "vf_seg_read_beat(ddr, win," not in body and not (save and "vf_seg_write_beat(ddr, win," in body):
            return False
        if "vf_ddr_read(" in body or "vf_ddr_write(" in body:
            return False
    return True


def check_text(text: str, spec: str) -> bool:
    """check_tag's loop rule ("LABEL pipelined|unrolled") on a given text."""
    label, kind = spec.split()
    head = loop_head(text, label)
    return head is not None and ("#pragma HLS UNROLL" if kind == "unrolled" else "#pragma HLS PIPELINE II=1") in head


GAPS = {
}


def every_board_fits() -> bool:
    """device_fit (closed): every board's memories, as the top's pragmas shape them, and its MAC arrays
    fit its part (vfpga.overlay.resources)."""
    return all(not resources.estimate(b).over() for b in overlay.available())


def test_every_board_fits_its_part():
    """device_fit: the cycle model assumes every core of the config exists at once."""
    assert every_board_fits(), {b: resources.estimate(b).over() for b in overlay.available()}


def test_device_fit_check_sees_removed_constructs(tmp_path, monkeypatch):
    """The fit check fails when the constructs that make it true are taken away: the weight buffers'
    reshape (back to byte-wide banks) or the UltraRAM binding."""
    hls_h, top = source("include/vfpga_hls.h"), source("dispatcher_top.cpp")
    shutil.copytree(HLS, tmp_path / "hls", ignore=shutil.ignore_patterns("build"))
    real = resources.estimate

    def estimate_copy(board, hls_dir=None):
        return real(board, str(tmp_path / "hls"))

    monkeypatch.setattr(resources, "estimate", estimate_copy)
    assert every_board_fits()
    for name, text in (("include/vfpga_hls.h", hls_h.replace("ARRAY_RESHAPE variable=wbuf", "ARRAY_PARTITION variable=wbuf")),
                       ("dispatcher_top.cpp", top.replace("VF_URAM_IF(VF_URAM_RNN_WBUF, rnn_wbuf)", ""))):
        original = source(name)
        (tmp_path / "hls" / name).write_text(text)
        assert not every_board_fits(), name
        (tmp_path / "hls" / name).write_text(original)
    assert every_board_fits()


# ---------------------------------------------------------------- the unit scheduler's structure

def function_body(text: str, name: str) -> str:
    """The body (braces matched) of the function ``name`` defined in ``text``."""
    m = re.search(rf"^static [^;{{]*\b{re.escape(name)}\(", text, re.M)
    return (_braced(text, text.find("{", m.end())) or "") if m else ""


def units_are_dataflow_processes(text: str) -> bool:
    """The step is a DATAFLOW region of the decoder and the three unit
    processes, which talk only through streams: a unit takes its instruction
    from its queue and its tokens from the token streams (no shared counters)."""
    region, unit = function_body(text, "vf_step_region"), function_body(text, "vf_unit_process")
    return ("VF_PRAGMA(HLS DATAFLOW)" in region and "vf_decode_process<K>(" in region
            and all(f"vf_unit_process<K>(VF_UNIT_{u}," in region for u in ("LOAD", "COMPUTE", "SAVE"))
            and "vf_token_in(s, UNIT, true)->read()" in unit and "vf_token_out(s, UNIT, false)->write(1)" in unit
            and "vf_stream<uint8_t, K::FRAME_INSNS> l2c, c2l, c2s, s2c;" in text)


def instructions_are_fetched_once(text: str) -> bool:
    """The scheduler reads DDR in one place, the decoder's pipelined FETCH
    loop, a whole instruction at consecutive addresses, into the step's
    instruction store; the units run what the decoder stored, taking the
    slots it queued."""
    fetch = loop_body(text, "FETCH") or ""
    head = loop_head(text, "FETCH") or ""
    unit = function_body(text, "vf_unit_process")
    return (text.count("vf_seg_read(") == 1 and "vf_ddr_read(" not in text and "#pragma HLS PIPELINE II=1" in head
            and "(uint64_t)idx * VF_INSN_BYTES, insn.raw, VF_INSN_BYTES);" in fetch
            and "store[slot] = insn;" in fetch and "s.queue[unit].write(slot);" in fetch
            and "const uint16_t slot = s.queue[UNIT].read();" in unit and "c.cur.insn = store[slot];" in unit)


def test_the_units_are_concurrent_processes():
    """units_concurrent: the model overlaps LOAD, COMPUTE and SAVE."""
    assert units_are_dataflow_processes(source("include/vfpga_unit_scheduler.h"))


def test_each_instruction_is_fetched_once():
    """fetch_burst: the model charges one transfer per step."""
    assert instructions_are_fetched_once(source("include/vfpga_unit_scheduler.h"))


def test_scheduler_checks_see_removed_constructs():
    text = source("include/vfpga_unit_scheduler.h")
    assert not units_are_dataflow_processes(text.replace("VF_PRAGMA(HLS DATAFLOW)", ""))
    # units scheduled one after another by shared counters again
    assert not units_are_dataflow_processes(text.replace("vf_token_in(s, UNIT, true)->read()", "--tok.l2c"))
    assert not instructions_are_fetched_once(text.replace("#pragma HLS PIPELINE II=1\n        uint64_t first",
                                                          "uint64_t first"))
    # a unit reading its instruction from DDR again when it runs it
    unit = function_body(text, "vf_unit_process")
    reread = unit.replace("c.cur.insn = store[slot];", "c.cur.insn = store[slot];\n"
                          "vf_seg_read(ddr, seg_win, insn_offset + c.cur.idx * 64, c.cur.insn.raw, 64);")
    assert reread != unit
    assert not instructions_are_fetched_once(text.replace(unit, reread))
    # the units taking their instructions from anywhere but the store
    assert not instructions_are_fetched_once(text.replace("c.cur.insn = store[slot];", "c.cur.insn = {};"))
    assert check_tag("include/vfpga_unit_scheduler.h FETCH pipelined")[0]


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_assumption_names_its_construct(name):
    module = MODELS[name]
    bullets = constructs_section(module)
    assert len(bullets) >= 3
    for b in bullets:
        assert TAG.search(b), f"{name}: assumption without an HLS construct: {b[:100]}"
    for kind, spec in tags(module):
        if kind == "hls-gap":
            assert spec.strip() in GAPS, f"{name}: unknown gap [hls-gap {spec}]"


PRESENT = sorted({(name, spec) for name, m in MODELS.items() for kind, spec in tags(m) if kind == "hls"})


@pytest.mark.parametrize("model, spec", PRESENT, ids=[f"{m}:{s}" for m, s in PRESENT])
def test_the_construct_is_in_the_hls(model, spec):
    holds, what = check_tag(spec)
    assert holds, f"{model} relies on a construct the HLS no longer has: {what}"


GAP_NAMES = sorted({spec.strip() for m in MODELS.values() for kind, spec in tags(m) if kind == "hls-gap"})


@pytest.mark.parametrize("gap", [
    pytest.param(g, marks=pytest.mark.xfail(strict=True, reason=GAPS[g][0])) for g in GAP_NAMES])
def test_phase_b_gap(gap):
    """A model assumption the literal loop nests do not make true yet: fails
    (xfail) until the construct is there, then XPASSes, and the docstring's
    [hls-gap] tag becomes an [hls] tag."""
    assert GAPS[gap][1]()


def test_every_gap_is_named_in_a_docstring():
    assert set(GAP_NAMES) == set(GAPS)


def test_checks_see_removed_constructs(tmp_path, monkeypatch):
    """The checks themselves: a copy of the sources without a pragma fails them."""
    text = source("cnn_core.cpp")
    assert check_tag("cnn_core.cpp CONV_BEAT pipelined")[0]
    assert check_tag("cnn_core.cpp CONV_OL unrolled")[0]
    at = text.index("CONV_BEAT:")
    pragma = text.index("#pragma HLS PIPELINE II=1", at)
    stripped = text[:pragma] + text[pragma + len("#pragma HLS PIPELINE II=1"):]
    shutil.copytree(HLS, tmp_path / "hls", ignore=shutil.ignore_patterns("build"))
    (tmp_path / "hls" / "cnn_core.cpp").write_text(stripped)
    monkeypatch.setattr(sys.modules[__name__], "HLS", str(tmp_path / "hls"))
    assert not check_tag("cnn_core.cpp CONV_BEAT pipelined")[0]
    assert check_tag("cnn_core.cpp LOAD_BEAT pipelined")[0]


def test_wbuf_words_check_sees_removed_constructs(tmp_path, monkeypatch):
    """The beat's weights as one word, and the check that fails without it:
    the WBUF partition removed, or a beat reading at the old run-time stride."""
    assert wbuf_words()
    hls_h, core = source("include/vfpga_hls.h"), source("cnn_core.cpp")
    shutil.copytree(HLS, tmp_path / "hls", ignore=shutil.ignore_patterns("build"))
    monkeypatch.setattr(sys.modules[__name__], "HLS", str(tmp_path / "hls"))
    pragma = "    VF_PRAGMA(HLS ARRAY_RESHAPE variable=wbuf dim=D cyclic factor=VF_CONV_WORD) \\\n"
    assert pragma in hls_h
    original = {"include/vfpga_hls.h": hls_h, "cnn_core.cpp": core}
    for name, text in (("include/vfpga_hls.h", hls_h.replace(pragma, "")),
                       ("cnn_core.cpp", core.replace("wb[o * VF_ICP + i]", "wb[o * k.WST + i]")),
                       ("cnn_core.cpp", core.replace("wl[b % VF_OCP] = ww[b];", "wl[b % VF_OCP] = 0;")),
                       # LOAD_LINEAR back to byte writes into the wide words
                       ("cnn_core.cpp", core.replace("wword[(ws + k) % VF_CONV_WORD] = word[j];",
                                                     "wbuf[l.buf_addr + k] = word[j];"))):
        (tmp_path / "hls" / name).write_text(text)
        assert not wbuf_words(), name
        (tmp_path / "hls" / name).write_text(original[name])
    assert wbuf_words()


def test_core_ports_split_and_its_check():
    """core_ports_interleave: every LOAD / SAVE beat of a big core is a bus
    word per port at once, a one-port core's word on its bank's port, and
    the check fails without it: the per-port (per-word) loop not unrolled, a
    port's access on another port, the stripe mapping gone (the striped part
    offset as if contiguous), or a beat loop back on one port."""
    assert core_ports_split()
    ddr, cnn, rnn = source("include/vfpga_ddr.h"), source("cnn_core.cpp"), source("rnn_core.cpp")
    unroll = "SEG_READ_PORT:\n        for (uint32_t p = 0; p < VF_CORE_PORTS; ++p) {\n#pragma HLS UNROLL\n"
    one_port = "SEG_WRITE_BEAT_WORD:\n        for (uint32_t k = 0; k < 2; ++k) {\n#pragma HLS UNROLL\n"
    assert unroll in ddr and one_port in ddr
    broken = [
        {"include/vfpga_ddr.h": ddr.replace(unroll, unroll.replace("#pragma HLS UNROLL\n", ""))},
        {"include/vfpga_ddr.h": ddr.replace("memcpy(dst + (lo - a), d.port[p] +", "memcpy(dst + (lo - a), d.port[0] +")},
        {"include/vfpga_ddr.h": ddr.replace("+ seg_win + (w / VF_SEG_PARTS) * VF_DDR_WORD", "+ seg_win + w * VF_DDR_WORD")},
        {"include/vfpga_ddr.h": ddr.replace("vf_ddr_read(d, vf_seg_window(d, seg_win, lo),", "vf_ddr_read(d, seg_win + lo,")},
        {"include/vfpga_ddr.h": ddr.replace(one_port, one_port.replace("#pragma HLS UNROLL\n", ""))},
        {"cnn_core.cpp": cnn.replace("vf_seg_read_beat(ddr, win, l.dram_addr", "vf_ddr_read(ddr, win + l.dram_addr")},
        {"cnn_core.cpp": cnn.replace("vf_seg_write_beat(ddr, win, drow + c * pstep", "vf_ddr_write(ddr, win + drow + c * pstep")},
        {"rnn_core.cpp": rnn.replace("vf_seg_write_beat(ddr, win, d + bt", "vf_ddr_write(ddr, win + d + bt")},
    ]
    for files in broken:
        (name, text), = files.items()
        assert text != source(name), f"{name}: the edit did not apply"
        assert not core_ports_split(files), name


# ---------------------------------------------------------------- the top, as the preprocessor leaves it

def top_pragmas(board: str, *defines: str) -> list[str]:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    flags = [f"-D{k}={v}" for k, v in overlay.config.c_macros(overlay.load(board)).items()]
    r = subprocess.run([gxx, "-std=c++14", "-E", "-P", f"-I{os.path.join(HLS, 'include')}", *flags, *defines,
                        os.path.join(HLS, "dispatcher_top.cpp")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [_squash(line) for line in r.stdout.splitlines() if line.lstrip().startswith("#pragma HLS")]


@pytest.mark.parametrize("board", overlay.available())
def test_bank_ports_carry_the_models_ddr_numbers(board):
    """One m_axi bundle per DDR bank with the burst length, outstanding
    transactions, latency and width the cycle model uses (its config keys)."""
    cfg = overlay.load(board)
    timing, ddr = cfg["timing"], cfg["ddr"]
    ports = {p.split("bundle=")[1].split()[0]: p for p in top_pragmas(board) if " m_axi " in p}
    assert sorted(ports) == [f"bank{b}" for b in range(ddr["banks"])]
    for p in ports.values():
        opts = dict(o.split("=", 1) for o in p.split() if "=" in o)
        assert int(opts["max_read_burst_length"]) == int(opts["max_write_burst_length"]) == \
            timing["axi_max_burst_beats"] == parameters.Latencies.of(cfg).axi_max_burst_beats
        assert int(opts["num_read_outstanding"]) == int(opts["num_write_outstanding"]) == \
            timing["axi_outstanding"] == parameters.Latencies.of(cfg).axi_outstanding
        assert int(opts["latency"]) == ddr["burst_latency_cycles"]
        assert int(opts["max_widen_bitwidth"]) == 8 * ddr["axi_bytes"]
        assert opts["offset"] == "slave"


@pytest.mark.parametrize("board", ["u200", "pynq_z2"])
def test_the_top_partitions_every_cores_memories(board):
    cfg = overlay.load(board)
    pragmas = set(top_pragmas(board))
    icp, ocp, rnn = cfg["cnn_core"]["icp"], cfg["cnn_core"]["ocp"], cfg["rnn_core"]
    want = {f"#pragma HLS ARRAY_PARTITION variable=ibuf dim=2 cyclic factor={icp}",
            f"#pragma HLS ARRAY_RESHAPE variable=wbuf dim=2 cyclic factor={icp * ocp}",
            f"#pragma HLS ARRAY_PARTITION variable=obuf dim=2 cyclic factor={ocp}",
            f"#pragma HLS ARRAY_PARTITION variable=acc dim=2 cyclic factor={ocp}",
            f"#pragma HLS ARRAY_RESHAPE variable=rnn_wbuf dim=2 cyclic factor={rnn['rows'] * rnn['cols']}",
            f"#pragma HLS ARRAY_PARTITION variable=rnn_vbuf dim=2 cyclic factor={rnn['cols']}",
            f"#pragma HLS ARRAY_PARTITION variable=rnn_acc dim=2 cyclic factor={rnn['lanes']}",
            f"#pragma HLS ARRAY_PARTITION variable=rnn_state dim=2 cyclic factor={rnn['lanes']}",
            "#pragma HLS ARRAY_PARTITION variable=rnn_act dim=2 complete",
            *(f"#pragma HLS ARRAY_PARTITION variable={v} dim=1 complete"
              for v in ("ibuf", "wbuf", "acc", "obuf", "param", "rnn_wbuf", "rnn_vbuf", "rnn_acc", "rnn_param",
                        "rnn_state", "rnn_act"))}
    assert want <= pragmas, sorted(want - pragmas)
    assert "#pragma HLS DATAFLOW" in pragmas
    # UltraRAM exactly where the config's storage.uram says (the top's arrays)
    uram = {p.split("variable=")[1].split()[0] for p in pragmas if "BIND_STORAGE" in p and "impl=uram" in p}
    assert uram == set(overlay.config.uram_arrays(cfg)) - {"step_store", "rnn_step_store"}
