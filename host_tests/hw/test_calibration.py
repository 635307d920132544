"""Calibration of the cycle model: the fit recovers known parameters from
counters a perturbed model produced, the calibration file is what the model
then uses, and `vfpga calibrate` runs its microbenchmarks through the driver
(on the emulated device, whose counters are the model itself)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from harness import emulated_accelerator

from vfpga import overlay
from vfpga.runtime.cli import calibrate as cli_calibrate
from vfpga.runtime.cli.main import main as vfpga_main
from vfpga.runtime.compiler import static
from vfpga.runtime.hw import calibration, cycle_model, parameters
from vfpga.runtime.models import small


def perturbed(config: dict) -> parameters.Parameters:
    """A board unlike its config: slower issue and fills, II > 1 (WBUF
    conflicts, say), a longer DDR latency, less bandwidth."""
    d = cycle_model.default_parameters(config)
    per_iter = (1.2, 1.5, 2.0, 1.25, 1.1, 1.4, 1.3, 1.15)  # one per parameters.CLASSES
    assert len(per_iter) == len(parameters.CLASSES)
    return parameters.Parameters(tuple(f * 1.3 + 3 for f in d.fixed), per_iter,
                                 d.latency * 1.4, d.bytes_per_cycle * 0.8, "perturbed")


@pytest.mark.parametrize("board", ["u200", "u200_bigcore", "pynq_z2"])
def test_fit_recovers_the_parameters_within_one_percent(board):
    cfg = overlay.load(board)
    benches = calibration.microbenchmarks(cfg)
    assert {b.cls for b in benches} == set(parameters.CLASSES)
    true = perturbed(cfg)
    counters = calibration.predicted(benches, cfg, true)  # what the board's stamps give per instruction
    fit = calibration.fit(benches, counters, cfg)
    want, got = np.array(true.as_vector()), np.array(fit.params.as_vector())
    names = true.names()
    for name, w, g in zip(names, want, got):
        if name in fit.kept:  # no microbenchmark binds it: the config's value stays, and the report says so
            assert g == cycle_model.default_parameters(cfg).as_vector()[names.index(name)]
            continue
        assert abs(g / w - 1) < 0.01, f"{name}: fitted {g}, true {w}"
    # on the small boards one core never reaches the bank's bandwidth: that parameter is not identified
    assert fit.kept == ([] if board.startswith("u200") else ["ddr.bytes_per_cycle"])
    assert max(fit.after.values()) < 0.01 < min(fit.before.values())


def test_fit_from_rounded_counters_stays_within_one_percent():
    """Board stamps are whole cycles: the fit still lands within 1%."""
    cfg = overlay.load("u200")
    benches = calibration.microbenchmarks(cfg)
    true = perturbed(cfg)
    r1, r2 = calibration.REPEATS
    exact = calibration.predicted(benches, cfg, true)
    stamps_r1 = np.round(1000 + r1 * exact)
    stamps_r2 = np.round(1000 + r2 * exact)
    fit = calibration.fit(benches, calibration.per_instruction(stamps_r1, stamps_r2), cfg)
    assert np.allclose(fit.params.as_vector(), true.as_vector(), rtol=0.01)


def test_calibration_file_is_what_the_model_uses(tmp_path, monkeypatch):
    cfg = overlay.load("u200")
    prog = np.frombuffer(b"".join(b.program(4, 0) for b in calibration.microbenchmarks(cfg)), np.uint8)
    before = cycle_model.schedule(prog, cfg).total_cycles
    assert cycle_model.model_parameters(cfg) == cycle_model.default_parameters(cfg)
    assert parameters.digest(cfg) == "config"
    path = tmp_path / "u200.calibration.json"
    parameters.save(perturbed(cfg), cfg, str(path))
    monkeypatch.setenv(parameters.ENV, str(path))
    p = cycle_model.model_parameters(cfg)
    assert p.as_vector() == perturbed(cfg).as_vector() and p.source == str(path)
    assert cycle_model.schedule(prog, cfg).total_cycles > before
    assert parameters.digest(cfg) != "config"
    with pytest.raises(parameters.CalibrationError, match="for board 'u200', not 'zcu104'"):
        cycle_model.model_parameters(overlay.load("zcu104"))
    doc = json.loads(path.read_text())
    doc["ddr"]["bytes_per_cycle"] = -1
    path.write_text(json.dumps(doc))
    with pytest.raises(parameters.CalibrationError, match="positive"):
        cycle_model.model_parameters(cfg)


def test_a_calibration_beside_the_configs_is_no_board():
    assert all("." not in b for b in overlay.available())


def test_vfpga_calibrate_runs_through_the_driver(tmp_path, capsys):
    """On the emulated device the counters are the model: errors ~0, the fit
    keeps the config's numbers; the file is written where --out says."""
    out = tmp_path / "cal.json"
    assert vfpga_main(["calibrate", "--board", "pynq_z2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "error before" in text and "error after" in text and "emulated device" in text
    doc = json.loads(out.read_text())
    assert doc["board"] == "pynq_z2" and doc["source"] == "emulated device"
    assert max(doc["error_before"].values()) < 0.02 and max(doc["error_after"].values()) < 0.02
    want = cycle_model.default_parameters(overlay.load("pynq_z2"))
    got = parameters.read(str(out), overlay.load("pynq_z2"))
    assert np.allclose(got.as_vector(), want.as_vector(), rtol=0.02)


def test_emulated_counters_are_the_model():
    accel = emulated_accelerator("zcu104")
    try:
        benches = calibration.microbenchmarks(accel.config)[::4]
        measured = cli_calibrate.measure(accel, benches)
        model = calibration.predicted(benches, accel.config, cycle_model.default_parameters(accel.config))
        assert np.allclose(measured, model, rtol=0.02, atol=1.0)
        rows = cli_calibrate.layer_table(accel, static.compile_graph(small.conv_graph(1), "zcu104"))
        assert [r.name for r in rows] == ["conv_a", "pool", "conv_y"]
        assert all(r.measured == r.modeled > 0 for r in rows)
        assert "total" in cli_calibrate.format_layer_table(rows)
    finally:
        accel.close()
