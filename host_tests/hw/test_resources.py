"""The on-chip resource estimate of a board's pool (vfpga.overlay.resources)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from vfpga import overlay
from vfpga.overlay import resources as R

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")


@pytest.mark.parametrize("depth, width, want", [
    (512, 72, 1), (1024, 36, 1), (2048, 9, 0.5), (1024, 18, 0.5), (4096, 8, 1),
    (131072, 8, 32), (100, 8, 0.5), (513, 72, 2), (8196, 32, 8.5)])
def test_block_ram_aspect_ratios(depth, width, want):
    assert R.bram36(depth, width) == want


@pytest.mark.parametrize("depth, width, want", [(4096, 72, 1), (4097, 72, 2), (4096, 73, 2), (8192, 128, 4),
                                                (512, 2048, 29)])
def test_ultraram_blocks(depth, width, want):
    assert R.uram(depth, width) == want


SOURCE = """
static int8_t a[4][4096];
static int32_t b[1024];
static int8_t c[8][256];
static int16_t tiny[16];
static int8_t d[2][8192];
#pragma HLS ARRAY_PARTITION variable=a dim=1 complete
#pragma HLS ARRAY_PARTITION variable=a dim=2 cyclic factor=8
#pragma HLS ARRAY_RESHAPE variable=b dim=1 cyclic factor=4
#pragma HLS BIND_STORAGE variable=d type=ram_2p impl=uram
#pragma HLS ARRAY_RESHAPE variable=d dim=2 cyclic factor=9
#pragma HLS ARRAY_PARTITION variable=stream_not_an_array dim=1 complete
"""


def test_pragmas_shape_the_arrays():
    got = {a.name: a for a in R.arrays(SOURCE)}
    assert sorted(got) == ["a", "b", "c", "d", "tiny"]
    assert got["a"].memories() == (32, 512, 8)  # 4 x 8 banks of 512 bytes
    assert got["b"].memories() == (1, 256, 128)  # 4 words of 32 bits side by side
    assert got["c"].memories() == (1, 2048, 8)  # no pragma: one memory
    assert got["d"].memories() == (1, 2 * 911, 72)
    rows = {a.name: R.row(a) for a in got.values()}
    assert rows["a"].bram36 == 32 * 0.5 and rows["a"].uram == 0
    assert rows["b"].bram36 == 2  # 256 x 128: two 512 x 72 RAMB36 side by side
    assert rows["tiny"].impl == "lutram" and rows["tiny"].bram36 == 0
    assert rows["d"].impl == "uram" and rows["d"].uram == 1 and rows["d"].bram36 == 0


def test_unsupported_pragma_is_named():
    with pytest.raises(R.ResourceError, match="dim=0 on a"):
        R.arrays("static int8_t a[64];\n#pragma HLS ARRAY_PARTITION variable=a dim=0 complete\n")
    with pytest.raises(R.ResourceError, match="not a constant"):
        R.arrays("static int8_t a[N];\n")


def test_a_config_without_device_is_refused():
    cfg = overlay.load("u200")
    del cfg["device"]
    with pytest.raises(overlay.BoardConfigError, match="no 'device' section"):
        R.estimate(cfg)


@needs_gxx
@pytest.mark.parametrize("board", overlay.available())
def test_the_estimate_covers_every_configured_buffer(board):
    """Each core memory of the config is an array of the top, of the configured size."""
    cfg = overlay.load(board)
    e = R.estimate(board)
    by_name = {r.name: r.bytes for r in e.rows}
    cnn, rnn = cfg["cnn_core"], cfg["rnn_core"]
    want = {"ibuf": cnn["ibuf_bytes"], "wbuf": cnn["wbuf_bytes"], "acc": 4 * cnn["acc_words"],
            "obuf": cnn["obuf_bytes"], "rnn_wbuf": rnn["wbuf_bytes"], "rnn_vbuf": rnn["vbuf_bytes"],
            "rnn_acc": 4 * rnn["acc_words"], "rnn_state": 4 * rnn["state_words"]}
    for name, size in want.items():
        per_core = size * (cnn["count"] if not name.startswith("rnn_") else rnn["count"])
        assert by_name[name] >= per_core, (name, by_name.get(name), per_core)
    assert e.dsp == (-(-cnn["count"] * cnn["icp"] * cnn["ocp"] // R.macs_per_dsp("cnn_core.cpp"))
                     - (-rnn["count"] * rnn["rows"] * rnn["cols"] // R.macs_per_dsp("rnn_core.cpp")))
    assert all(r.bram36 > 0 or r.uram > 0 or r.impl == "lutram" for r in e.rows)
    steps = {r.name: r for r in e.rows if "step_" in r.name}
    for prefix, core in (("", cnn), ("rnn_", rnn)):
        st, q, t = steps[prefix + "step_store"], steps[prefix + "step_queues"], steps[prefix + "step_tokens"]
        assert (st.count, st.depth, st.width) == (core["count"], core["frame_insns"], 8 * 64)
        assert st.impl == ("uram" if prefix + "step_store" in overlay.config.uram_arrays(cfg) else "bram")
        assert (q.count, q.depth, q.width) == (3 * core["count"], core["frame_insns"], 16)
        assert (t.count, t.depth, t.width) == (4 * core["count"], core["frame_insns"], 8)
    # the arrays the config binds to UltraRAM are counted there, and only those
    uram = {r.name for r in e.rows if r.impl == "uram"}
    assert uram == set(overlay.config.uram_arrays(cfg))
    assert all(r.bram36 == 0 and r.uram > 0 for r in e.rows if r.impl == "uram")
    text = R.table(e)
    assert board in text and ("fits the device" in text or "exceeds the device" in text)


@needs_gxx
@pytest.mark.parametrize("board", overlay.available())
def test_every_board_fits_with_headroom(board):
    """Block RAM and UltraRAM, as the pragmas shape the memories, stay under the whole part (the figures
    the README's board table gives); the decoder's plan registers, the requantization and gate logic and
    an Alveo shell's static region are not counted, so keep some room."""
    e = R.estimate(board)
    assert not e.over(), e.over()
    assert e.bram36 <= 0.92 * e.device["bram36"]
    assert e.uram <= 0.92 * max(e.device["uram"], 1)


def test_storage_names_known_memories(tmp_path):
    cfg = json.loads(open(os.path.join(overlay.config.CONFIG_DIR, "u200.json")).read())
    cfg["storage"] = {"uram": ["rnn_wbuf", "bogus"]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(overlay.BoardConfigError, match="unknown memories bogus"):
        overlay.load(str(path))
    cfg["storage"] = {"uram": ["rnn_wbuf"], "lutram": []}
    path.write_text(json.dumps(cfg))
    with pytest.raises(overlay.BoardConfigError, match="storage must be"):
        overlay.load(str(path))


def test_uram_on_a_part_without_it_is_refused(tmp_path):
    cfg = json.loads(open(os.path.join(overlay.config.CONFIG_DIR, "pynq_z2.json")).read())
    cfg["storage"] = {"uram": ["rnn_wbuf"]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(overlay.BoardConfigError, match="the part has none"):
        overlay.load(str(path))


def test_storage_becomes_macros():
    m = overlay.c_macros(overlay.load("u200"))
    assert m["VF_URAM_RNN_WBUF"] == 1 and m["VF_URAM_IBUF"] == 0
    z2 = overlay.c_macros(overlay.load("pynq_z2"))  # no UltraRAM on the part
    assert [z2[f"VF_URAM_{n.upper()}"] for n in overlay.config.STORAGE_ARRAYS] == [0] * len(overlay.config.STORAGE_ARRAYS)


def test_main_prints_each_board(capsys):
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    assert R.main(["pynq_z2"]) == 0
    out = capsys.readouterr().out
    assert "pynq_z2" in out and "RAMB36" in out


@needs_gxx
def test_the_step_memories_are_read_from_the_scheduler(tmp_path):
    """The store and the queues' entries are what the header declares; a header without them is named."""
    shutil.copytree(R.HLS_DIR, tmp_path / "hls", ignore=shutil.ignore_patterns("build"))
    path = tmp_path / "hls" / "include" / "vfpga_unit_scheduler.h"
    text = path.read_text()
    path.write_text(text.replace("vf_stream<uint16_t, K::FRAME_INSNS> queue[3];",
                                 "vf_stream<uint32_t, K::FRAME_INSNS> queue[3];"))
    rows = {r.name: r for r in R.step_channels(overlay.load("u200"), str(tmp_path / "hls"))}
    assert rows["step_queues"].width == 32
    path.write_text(text.replace("typename K::insn_t store[K::FRAME_INSNS];", ""))
    with pytest.raises(R.ResourceError, match="no step instruction store"):
        R.step_channels(overlay.load("u200"), str(tmp_path / "hls"))


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(R.ResourceError, match="no HLS source at"):
        R.estimate("u200", hls_dir=str(tmp_path))


def test_packed_multiplies_halve_a_kinds_dsps(tmp_path):
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "vfpga_mac.h").write_text("#define VF_MACS_PER_DSP 2\n")
    (tmp_path / "cnn_core.cpp").write_text("s += p_hi; vf_mul2(x, w0, w1, &p_hi, &p_lo);\n")
    (tmp_path / "rnn_core.cpp").write_text("acc += (int32_t)w * v;\n")
    assert R.macs_per_dsp("cnn_core.cpp", str(tmp_path)) == 2 and R.macs_per_dsp("rnn_core.cpp", str(tmp_path)) == 1
    cfg = overlay.load("u200")
    cnn, rnn = cfg["cnn_core"], cfg["rnn_core"]
    assert R.mac_dsps(cfg, str(tmp_path)) == cnn["count"] * cnn["icp"] * cnn["ocp"] // 2 + \
        rnn["count"] * rnn["rows"] * rnn["cols"]
    (tmp_path / "include" / "vfpga_mac.h").write_text("/* nothing */\n")
    with pytest.raises(R.ResourceError, match="VF_MACS_PER_DSP"):
        R.mac_dsps(cfg, str(tmp_path))
