"""Board configs: the one source of hardware numbers."""

import json

import pytest

from vfpga import overlay


def test_all_boards_load():
    assert {"u200", "u200_bigcore", "zcu104", "pynq_z2"} <= set(overlay.available())
    for name in overlay.available():
        cfg = overlay.load(name)
        assert cfg["name"] == name
        assert isinstance(cfg["cnn_core"]["base_address"], int)  # hex strings become ints


def test_u200_is_the_published_pool_and_bigcore_matches_its_macs():
    u = overlay.load("u200")
    core = u["cnn_core"]
    assert (core["count"], core["icp"], core["ocp"], u["clock_mhz"], u["ddr"]["banks"]) == (16, 16, 16, 300, 4)
    assert [core["banks"].count(b) for b in range(4)] == [4, 4, 4, 4]
    big = overlay.load("u200_bigcore")["cnn_core"]
    assert big["count"] == 1
    assert big["icp"] * big["ocp"] == core["count"] * core["icp"] * core["ocp"]


def test_c_macros_carry_the_config_numbers():
    cfg = overlay.load("zcu104")
    m = overlay.c_macros(cfg)
    assert m["VF_ICP"] == cfg["cnn_core"]["icp"] and m["VF_IBUF_BYTES"] == cfg["cnn_core"]["ibuf_bytes"]
    assert m["VF_REG_SEG"] == cfg["cnn_core"]["registers"]["seg"]


def test_emulation_library_was_built_with_the_config(board="pynq_z2"):
    import importlib

    emu = importlib.import_module(f"vfpga.driver._emu_{board}")
    g = emu.ffi.new("vf_cnn_geometry_t *")
    emu.lib.vf_cnn_core_geometry(g)
    core = overlay.load(board)["cnn_core"]
    assert (g.icp, g.ocp, g.ibuf_bytes, g.acc_words) == (core["icp"], core["ocp"], core["ibuf_bytes"],
                                                       core["acc_words"])


def test_bad_configs_are_named(tmp_path):
    with pytest.raises(overlay.BoardConfigError, match="unknown board 'u999'.*known boards"):
        overlay.load("u999")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(overlay.BoardConfigError, match="not valid JSON"):
        overlay.load(str(bad))
    cfg = json.loads(open(overlay.config.os.path.join(overlay.config.CONFIG_DIR, "u200.json")).read())
    del cfg["cnn_core"]["icp"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(cfg))
    with pytest.raises(overlay.BoardConfigError, match="cnn_core lacks icp"):
        overlay.load(str(partial))


@pytest.mark.parametrize("device", [{"lut": 1, "bram36": 2, "uram": 3}, {"lut": 1, "bram36": 2, "uram": -3, "dsp": 4},
                                    {"lut": 1, "bram36": "2", "uram": 3, "dsp": 4}, [1, 2, 3, 4]])
def test_a_malformed_device_section_is_named(tmp_path, device):
    cfg = json.loads(open(overlay.config.os.path.join(overlay.config.CONFIG_DIR, "u200.json")).read())
    cfg["device"] = device
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(overlay.BoardConfigError, match="device must give the part's lut, bram36, uram and dsp"):
        overlay.load(str(path))


@pytest.mark.parametrize("board", overlay.available())
def test_every_board_names_its_parts_resources(board):
    dev = overlay.load(board)["device"]
    assert dev["lut"] > 0 and dev["bram36"] > 0 and dev["dsp"] > 0 and dev["uram"] >= 0


@pytest.mark.parametrize("section, key", [("cnn_core", "ocp"), ("rnn_core", "rows")])
def test_an_odd_lane_count_is_refused(tmp_path, section, key):
    cfg = json.loads(open(overlay.config.os.path.join(overlay.config.CONFIG_DIR, "u200.json")).read())
    cfg[section][key] = 15
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(overlay.BoardConfigError, match=f"{section}.{key} must be even"):
        overlay.load(str(path))
