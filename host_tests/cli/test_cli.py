"""`vfpga compile`, `vfpga info model.ifp`, `vfpga run` and `vfpga cache` on
the small demo CNN, and their error exits (status 2, one message on stderr)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from vfpga.driver import isa
from vfpga.runtime import cli
from vfpga.runtime.compiler import frontend, ifp
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    onnx.save(small.small_cnn(seed=0), str(d / "small_cnn.onnx"))
    np.save(d / "calib.npy", np.concatenate(small.calibration_inputs(8, seed=1)))
    np.savez(d / "calib.npz", a=np.concatenate(small.calibration_inputs(4, seed=1)),
             b=small.calibration_inputs(1, seed=2)[0])
    np.save(d / "x.npy", small.calibration_inputs(1, seed=100)[0])
    np.save(d / "x3.npy", np.concatenate(small.calibration_inputs(3, seed=100)))
    return d


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VFPGA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VFPGA_CACHE", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def compiled_ifp(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ifp") / "small_cnn.ifp"
    assert cli.main(["compile", str(files / "small_cnn.onnx"), "--board", "u200", "-o", str(out),
                     "--calibration", str(files / "calib.npy"), "--no-cache"]) == 0
    return out


def test_compile_info_run(files, tmp_path, capsys, cache_dir):
    out = tmp_path / "m.ifp"
    args = ["compile", str(files / "small_cnn.onnx"), "--board", "u200", "-o", str(out),
            "--calibration", str(files / "calib.npy"), "--input-shape", "1,3,32,32"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "compile cache: miss" in text and f"-> {out} for u200" in text
    assert "layers: 9 (9 accelerator, 0 cpu)" in text and "calibration given (8 samples)" in text
    assert "weights+params" in text and "program" in text and "static stage" in text
    assert "accelerator (9): Conv x5, MaxPool x1, Add x1, GlobalAveragePool x1, Gemm x1" in text
    assert "conv1, pool1, conv2, conv3, add1, conv4, dwconv5, gap, fc" in text and "cpu (0): none" in text
    compiled = ifp.load(out, board="u200")
    assert compiled.layers[0].name == "conv1"

    assert cli.main(args) == 0  # the same model again: from the cache
    assert "compile cache: hit" in capsys.readouterr().out
    assert len(list(cache_dir.iterdir())) == 1

    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"vfpga IFP format {ifp.FORMAT_VERSION}" in text and "for board u200" in text and "deployable here" in text
    assert f"ISA {isa.ISA_VERSION}" in text and "source: small_cnn.onnx" in text
    for word in ("conv1", "pool1", "add1", "dwconv5", "gap", "flatten, fc", "accelerator", "segment:",
                 "activations", "weights+params", "frames"):
        assert word in text

    y_path = tmp_path / "y.npy"
    assert cli.main(["run", str(out), "--input", str(files / "x.npy"), "-o", str(y_path), "--check"]) == 0
    text = capsys.readouterr().out
    assert "output fc_QuantizeLinear_Output: float32 [1, 10]" in text and "top-5: " in text
    assert "modeled: " in text and "cycles" in text and "host: " in text and "golden model: 1/1 bit-exact" in text
    y = np.load(y_path)
    graph = compiled.graph
    x_q = frontend.quantize_input(np.load(files / "x.npy"), graph.tensors[graph.inputs[0]])
    want = frontend.dequantize_output(golden.run_graph(graph, x_q)[graph.outputs[0]],
                                      graph.tensors[graph.outputs[0]])
    np.testing.assert_array_equal(y, want)


def test_run_several_and_quantized_inputs(compiled_ifp, files, tmp_path, capsys):
    assert cli.main(["run", str(compiled_ifp), "--input", str(files / "x3.npy"), "--check", "--board", "u200",
                     "-o", str(tmp_path / "y.npz")]) == 0
    text = capsys.readouterr().out
    assert "3 inputs" in text and "top-5 [2]" in text and "golden model: 3/3 bit-exact" in text
    with np.load(tmp_path / "y.npz") as z:
        assert z["fc_QuantizeLinear_Output"].shape == (3, 10)
    graph = ifp.load(compiled_ifp).graph
    xq = np.random.default_rng(0).integers(-128, 128, size=graph.tensors[graph.inputs[0]].shape, dtype=np.int8)
    np.save(tmp_path / "xq.npy", xq)
    assert cli.main(["run", str(compiled_ifp), "--input", str(tmp_path / "xq.npy"), "--check"]) == 0
    assert "int8 HWC (quantized)" in capsys.readouterr().out


def test_compile_with_npz_calibration_and_default_output(files, tmp_path, capsys):
    model = tmp_path / "net.onnx"
    model.write_bytes((files / "small_cnn.onnx").read_bytes())
    assert cli.main(["compile", str(model), "--calibration", str(files / "calib.npz")]) == 0
    assert "calibration given (5 samples)" in capsys.readouterr().out
    assert ifp.read_info(tmp_path / "net.ifp").board == "u200"


def test_compile_without_calibration_warns(files, tmp_path, capsys):
    assert cli.main(["compile", str(files / "small_cnn.onnx"), "-o", str(tmp_path / "g.ifp"), "--no-cache"]) == 0
    captured = capsys.readouterr()
    assert "warning: no calibration data given" in captured.err
    assert "calibration generated" in captured.out


def test_cpu_fallback_is_reported_and_runs(files, tmp_path, capsys):
    b = small.GraphBuilder(seed=3)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 8, stride=2)])
    x = b.op("Softmax", "the_softmax", [x], axis=1)
    x = b.op("GlobalAveragePool", "gap", [b.conv("conv2", x, 8, 8)])
    model = b.model("with_softmax", b.op("Flatten", "flatten", [x], axis=1), (1, 8))
    path = tmp_path / "softmax.onnx"
    onnx.save(model, str(path))
    calib = ["--calibration", str(files / "calib.npy")]
    expect_error(capsys, ["compile", str(path), "--no-fallback", *calib], "Softmax", "the_softmax")
    assert cli.main(["compile", str(path), "-o", str(tmp_path / "s.ifp"), *calib]) == 0
    text = capsys.readouterr().out
    assert "accelerator (3): Conv x2, GlobalAveragePool x1" in text
    assert "cpu (3): DequantizeLinear x1, Softmax x1, QuantizeLinear x1" in text and "the_softmax (Softmax)" in text
    assert "folded (" in text and "2 accelerator part(s)" in text
    assert cli.main(["info", str(tmp_path / "s.ifp")]) == 0
    text = capsys.readouterr().out
    row = next(line.split() for line in text.splitlines() if "the_softmax," in line)
    assert row[2] == "cpu" and row[6] == "cpu" and "the_softmax," in row
    assert cli.main(["run", str(tmp_path / "s.ifp"), "--input", str(files / "x.npy")]) == 0
    assert "output gap_QuantizeLinear_Output: float32 [1, 8]" in capsys.readouterr().out


def test_info_without_a_file_describes_boards(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "u200:" in out and "zcu104:" in out


def test_cache_command(files, tmp_path, capsys, cache_dir):
    assert cli.main(["compile", str(files / "small_cnn.onnx"), "-o", str(tmp_path / "c.ifp"),
                     "--calibration", str(files / "calib.npy")]) == 0
    capsys.readouterr()
    assert cli.main(["cache"]) == 0
    assert f"{cache_dir} (on): 1 entries" in capsys.readouterr().out
    assert cli.main(["cache", "--clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert list(cache_dir.iterdir()) == []


def expect_error(capsys, argv, *needles):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"vfpga {argv[0]}: error: ")
    for needle in needles:
        assert needle in captured.err, captured.err


def test_error_exits(compiled_ifp, files, tmp_path, capsys):
    onnx_path = str(files / "small_cnn.onnx")
    expect_error(capsys, ["compile", str(tmp_path / "nope.onnx")], "model file not found")
    expect_error(capsys, ["compile", onnx_path, "--board", "nope"], "unknown board 'nope'")
    expect_error(capsys, ["compile", onnx_path, "--input-shape", "1,3,a"], "--input-shape")
    expect_error(capsys, ["compile", onnx_path, "--input-shape", "3,32,32"], "four positive dims")
    expect_error(capsys, ["compile", onnx_path, "--calibration", str(tmp_path / "none.npy")],
                 "calibration file not found")
    np.save(tmp_path / "ints.npy", np.zeros((2, 3, 32, 32), np.int64))
    expect_error(capsys, ["compile", onnx_path, "--calibration", str(tmp_path / "ints.npy")], "must be float")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 16, 16), np.float32))
    expect_error(capsys, ["compile", onnx_path, "--calibration", str(tmp_path / "wrong.npy"), "--no-cache"],
                 "calibration sample 0")
    expect_error(capsys, ["compile", str(compiled_ifp)], "already a compiled IFP file")

    x = str(files / "x.npy")
    expect_error(capsys, ["run", str(tmp_path / "none.ifp"), "--input", x], "IFP file not found")
    expect_error(capsys, ["run", onnx_path, "--input", x], "not an IFP file", "vfpga compile")
    expect_error(capsys, ["run", str(compiled_ifp), "--input", x, "--board", "zcu104"],
                 "compiled for board u200, not zcu104")
    expect_error(capsys, ["run", str(compiled_ifp), "--input", str(tmp_path / "none.npy")], "input file not found")
    np.save(tmp_path / "shape.npy", np.zeros((1, 3, 16, 16), np.float32))
    expect_error(capsys, ["run", str(compiled_ifp), "--input", str(tmp_path / "shape.npy")],
                 "float32 [1, 3, 32, 32]", "got float32 [1, 3, 16, 16]")
    np.save(tmp_path / "dtype.npy", np.zeros((1, 3, 32, 32), np.int64))
    expect_error(capsys, ["run", str(compiled_ifp), "--input", str(tmp_path / "dtype.npy")], "got int64")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    expect_error(capsys, ["run", str(compiled_ifp), "--input", str(tmp_path / "junk.npy")], "not a numpy")
    damaged = tmp_path / "damaged.ifp"
    damaged.write_bytes(compiled_ifp.read_bytes()[:2000])
    expect_error(capsys, ["run", str(damaged), "--input", x], "damaged.ifp")

    expect_error(capsys, ["info", str(tmp_path / "none.ifp")], "IFP file not found")
    expect_error(capsys, ["info", str(compiled_ifp), "--board", "zcu104"], "compiled for board u200, not zcu104")
