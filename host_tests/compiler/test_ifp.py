"""IFP files, the compile cache and the compile progress bar.

Round trip: a compiled model saved and loaded has equal fields, and runs
bit-identically on an emulated board (including a graph with a CPU-fallback
layer and a concat). Every load error path: not an IFP, damaged files,
another format or ISA version, another board, a changed board config. The
cache: a second compile of the same model is a hit that skips quantization
and the static stage, other inputs miss, damaged entries are discarded and
recompiled, VFPGA_CACHE=0 turns it off, pruning keeps it bounded.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import zipfile

import numpy as np
import onnx
import pytest
from harness import emulated_accelerator, random_inputs
from onnx import TensorProto, helper, numpy_helper

from vfpga.driver import isa
from vfpga.runtime import tenants
from vfpga.runtime.compiler import cache, frontend, ifp, ir, static
from vfpga.runtime.compiler.progress import Progress
from vfpga.runtime.hw import fixed_point, golden
from vfpga.runtime.models import small


def assert_same(a, b, path="model"):
    """Deep equality of compiled-model trees: same types, equal arrays
    (dtype and shape included), equal bytes and numbers."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.array_equal(a, b), f"{path}: arrays differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def compiled():
    qdq = frontend.quantize(small.small_cnn(seed=0), small.calibration_inputs(8, seed=1))
    return static.compile_graph(frontend.to_graph(qdq), "u200")


@pytest.fixture(scope="module")
def saved(compiled, tmp_path_factory):
    path = tmp_path_factory.mktemp("ifp") / "small_cnn.ifp"
    ifp.save(compiled, path, source={"model": "small_cnn.onnx"})
    return path



def run_all(model, xs, board="u200"):
    accel = emulated_accelerator(board)
    try:
        tenant = accel.deploy(model)
        return [tenant.run_quantized(x)[0] for x in xs]
    finally:
        accel.close()


# ---------------------------------------------------------------- round trip


def test_round_trip_fields_equal_and_runs_bit_identically(compiled, saved):
    loaded = ifp.load(saved)
    assert_same(compiled, loaded)
    assert loaded.frames.dtype == static.FRAME_DTYPE
    assert loaded.segment_image().keys() == compiled.segment_image().keys()
    for k, v in compiled.segment_image().items():
        assert loaded.segment_image()[k] == v
    xs = random_inputs(compiled.graph, 3)
    for ours, theirs, x in zip(run_all(compiled, xs), run_all(loaded, xs), xs):
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(theirs[0], golden.run_graph(loaded.graph, x)[loaded.graph.outputs[0]])


def test_manifest_records_versions_board_and_layout(compiled, saved):
    info = ifp.read_info(saved)
    assert info.format_version == ifp.FORMAT_VERSION and info.isa_version == isa.ISA_VERSION
    assert info.board == "u200" and info.config_sha256 == ifp.config_hash(compiled_config("u200"))
    assert info.segment["segment_size"] == compiled.segment_size
    assert info.segment["program_offset"] == compiled.program_offset
    assert info.source == {"model": "small_cnn.onnx"}
    with zipfile.ZipFile(saved) as zf:
        names = zf.namelist()
        assert names[0] == "mimetype" and zf.read("mimetype") == ifp.MIMETYPE.encode()
        assert not any(n.endswith((".pkl", ".pickle")) for n in names)


def compiled_config(board):
    from vfpga import overlay

    return overlay.load(board)


def cpu_model(c: int, h: int, w: int, scale: float, zp: int) -> bytes:
    """int8 NCHW -> DequantizeLinear -> Sigmoid -> QuantizeLinear -> int8: a
    CPU-fallback subgraph as the front end cuts them out."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s_in"),
             numpy_helper.from_array(np.array(zp, np.int8), "z_in"),
             numpy_helper.from_array(np.array(1 / 256, np.float32), "s_out"),
             numpy_helper.from_array(np.array(-128, np.int8), "z_out")]
    nodes = [helper.make_node("DequantizeLinear", ["c", "s_in", "z_in"], ["f"], name="dq"),
             helper.make_node("Sigmoid", ["f"], ["g"], name="sigmoid"),
             helper.make_node("QuantizeLinear", ["g", "s_out", "z_out"], ["d"], name="q")]
    g = helper.make_graph(nodes, "cpu", [helper.make_tensor_value_info("c", TensorProto.INT8, [1, c, h, w])],
                          [helper.make_tensor_value_info("d", TensorProto.INT8, [1, c, h, w])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m.SerializeToString()


def cpu_concat_graph(seed: int = 0) -> ir.Graph:
    """conv a, conv b -> concat c -> CPU sigmoid d -> conv y."""
    rng = np.random.default_rng(seed)
    h, w = 8, 8
    t = {
        "x": ir.Tensor("x", (h, w, 16), 0.05, 3),
        "a": ir.Tensor("a", (h, w, 8), 0.04, -10),
        "b": ir.Tensor("b", (h, w, 24), 0.04, -10),
        "c": ir.Tensor("c", (h, w, 32), 0.04, -10),
        "d": ir.Tensor("d", (h, w, 32), 1 / 256, -128),
        "y": ir.Tensor("y", (h, w, 10), 0.1, 5),
    }

    def conv(name, src, dst, cin, cout):
        wgt = rng.integers(-127, 128, size=(cout, cin, 3, 3), dtype=np.int8)
        bias = np.round(rng.normal(0, 1000, cout)).astype(np.int32)
        mult, shift = fixed_point.quantize_multipliers(40.0 / (np.sqrt(cin * 9) * 74 * 74) * rng.uniform(0.5, 2, cout))
        return ir.Conv(name, src, dst, wgt, bias, mult, shift, (1, 1), (1, 1, 1, 1), 1, (-128, 127), [name])

    layers = [
        conv("conv_a", "x", "a", 16, 8),
        conv("conv_b", "x", "b", 16, 24),
        ir.Concat("cat", ("a", "b"), "c", ["cat"]),
        ir.CpuOp("sigmoid", ("c",), ("d",), cpu_model(32, h, w, 0.04, -10), ["sigmoid"]),
        conv("conv_y", "d", "y", 32, 10),
    ]
    return ir.Graph(t, layers, ["x"], ["y"], name="cpu_concat")


def test_round_trip_with_cpu_layer_and_concat(tmp_path):
    original = static.compile_graph(cpu_concat_graph(), "u200")
    assert [p.kind for p in original.parts] == ["accel", "cpu", "accel"]
    path = tmp_path / "cpu.ifp"
    ifp.save(original, path)
    loaded = ifp.load(path, board="u200")
    assert_same(original, loaded)
    cpu_layer = next(layer for layer in loaded.graph.layers if layer.kind == "cpu")
    assert isinstance(cpu_layer.model, bytes) and onnx.load_from_string(cpu_layer.model).graph.node[1].op_type == "Sigmoid"
    xs = random_inputs(loaded.graph, 2, seed=5)
    for ours, theirs in zip(run_all(original, xs), run_all(loaded, xs)):
        np.testing.assert_array_equal(ours[0], theirs[0])


def test_accelerator_deploys_an_ifp_path(saved, compiled):
    accel = emulated_accelerator("u200")
    try:
        tenant = accel.deploy(str(saved))
        x = random_inputs(compiled.graph, 1, seed=9)[0]
        (y,), _ = tenant.run_quantized(x)
        np.testing.assert_array_equal(y, golden.run_graph(compiled.graph, x)[compiled.graph.outputs[0]])
    finally:
        accel.close()


# ---------------------------------------------------------------- error paths


def rewrite(src, dst, manifest_fn=None, member_fn=None):
    """Copy an IFP, changing its manifest and/or member bytes."""
    with zipfile.ZipFile(src) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members:
            if name == ifp.MANIFEST and manifest_fn is not None:
                m = json.loads(data)
                manifest_fn(m)
                data = json.dumps(m).encode()
            elif member_fn is not None:
                data = member_fn(name, data)
            zf.writestr(name, data)
    return dst


def test_not_an_ifp(tmp_path, small_cnn_path):
    with pytest.raises(FileNotFoundError, match="no such IFP file"):
        ifp.load(tmp_path / "missing.ifp")
    for name, data in (("empty.ifp", b""), ("text.ifp", b"hello world\n" * 10),
                       ("model.ifp", small_cnn_path.read_bytes())):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ifp.IfpFormatError, match="not an IFP file"):
            ifp.load(tmp_path / name)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "a zip, but not ours")
    with pytest.raises(ifp.IfpFormatError, match="not an IFP file"):
        ifp.load(other)
    assert issubclass(ifp.IfpError, ValueError)


def test_damaged_files(saved, tmp_path):
    data = saved.read_bytes()
    truncated = tmp_path / "truncated.ifp"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ifp.IfpFormatError):
        ifp.load(truncated)

    def flip(name, blob):
        if name.endswith("weight.npy"):
            blob = bytearray(blob)
            blob[-1] ^= 0x55
        return bytes(blob)

    with pytest.raises(ifp.IfpFormatError, match="checksum"):
        ifp.load(rewrite(saved, tmp_path / "flipped.ifp", member_fn=flip))

    with zipfile.ZipFile(saved) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    garbled = tmp_path / "garbled.ifp"
    with zipfile.ZipFile(garbled, "w") as zf:
        for name, blob in members:
            zf.writestr(name, b"{not json" if name == ifp.MANIFEST else blob)
    with pytest.raises(ifp.IfpFormatError, match="manifest"):
        ifp.load(garbled)

    def inconsistent(m):
        m["model"]["fields"]["program_offset"] = 16

    with pytest.raises(ifp.IfpFormatError, match="inconsistent"):
        ifp.load(rewrite(saved, tmp_path / "inconsistent.ifp", manifest_fn=inconsistent))

    def foreign(m):
        m["model"]["fields"]["graph"]["__dc__"] = "os.system"

    with pytest.raises(ifp.IfpVersionError, match="does not know"):
        ifp.load(rewrite(saved, tmp_path / "foreign.ifp", manifest_fn=foreign))


def test_other_format_and_isa_versions(saved, tmp_path):
    def fmt(m):
        m["format_version"] = ifp.FORMAT_VERSION + 1

    with pytest.raises(ifp.IfpVersionError, match="format version"):
        ifp.load(rewrite(saved, tmp_path / "fmt.ifp", manifest_fn=fmt))

    def isa_v(m):
        m["compiler"]["isa_version"] = isa.ISA_VERSION + 1

    with pytest.raises(ifp.IfpVersionError, match="ISA version"):
        ifp.load(rewrite(saved, tmp_path / "isa.ifp", manifest_fn=isa_v))


def test_other_board_and_changed_config(saved, compiled, tmp_path):
    with pytest.raises(ifp.IfpBoardError, match="compiled for board u200, not zcu104"):
        ifp.load(saved, board="zcu104")
    with pytest.raises(ifp.IfpBoardError, match="compiled for board u200, not pynq_z2"):
        emulated_accelerator("pynq_z2").compile(str(saved))
    with pytest.raises(tenants.DeployError, match="compiled for u200"):
        emulated_accelerator("pynq_z2").compile(compiled)  # an in-memory model of another board: as before

    changed = copy.deepcopy(compiled_config("u200"))
    changed["cnn_core"]["wbuf_bytes"] //= 2
    with pytest.raises(ifp.IfpBoardError, match="changed since"):
        ifp.load(saved, board=changed)
    # the part's resources and the prose are not the program's: a file stays deployable when they change
    resized = copy.deepcopy(compiled_config("u200"))
    resized["device"]["uram"] += 1
    resized["description"] += " (revised)"
    assert ifp.load(saved, board=resized).segment_size == compiled.segment_size

    def rehash(m):
        m["board"]["config_sha256"] = "0" * 64

    with pytest.raises(ifp.IfpBoardError, match="changed since"):
        ifp.load(rewrite(saved, tmp_path / "rehash.ifp", manifest_fn=rehash))

    def unknown(m):
        m["board"]["name"] = "vu9p_nonexistent"

    with pytest.raises(ifp.IfpBoardError, match="no config here"):
        ifp.load(rewrite(saved, tmp_path / "unknown.ifp", manifest_fn=unknown))
    # verify=False reads a file that cannot be deployed here (for `vfpga info`)
    assert ifp.load(tmp_path / "rehash.ifp", verify=False).segment_size == compiled.segment_size


def test_values_without_an_encoding_are_refused(compiled, tmp_path):
    bad = dataclasses.replace(compiled, compile_seconds={1.0, 2.0})  # a set: no encoding
    with pytest.raises(ifp.IfpError, match="no IFP encoding"):
        ifp.save(bad, tmp_path / "bad.ifp", config=compiled_config("u200"))
    assert not os.listdir(tmp_path)  # nothing half-written left behind


# ---------------------------------------------------------------- compile cache


def test_cache_hit_skips_quantization_and_static_stage(small_cnn_path, tmp_path, monkeypatch):
    store = cache.CompileCache(tmp_path / "cache", enabled=True)
    calib = small.calibration_inputs(8, seed=1)
    first = cache.compile_with_cache(small_cnn_path, "u200", calib, cache=store, progress=False)
    assert first.cache == "miss" and store.stats.stores == 1 and len(store.entries()) == 1

    def forbidden(*a, **k):
        raise AssertionError("a cache hit must not quantize or run the static stage")

    monkeypatch.setattr(frontend, "quantize", forbidden)
    monkeypatch.setattr(frontend, "to_graph", forbidden)
    monkeypatch.setattr(static, "compile_graph", forbidden)
    second = cache.compile_with_cache(str(small_cnn_path), "u200", calib, cache=store, progress=False)
    assert second.cache == "hit" and store.stats.hits == 1 and store.stats.misses == 1
    assert second.key == first.key and second.source == first.source
    assert_same(first.compiled, second.compiled)
    # the same model content given as a ModelProto or bytes is the same entry
    assert cache.compile_with_cache(onnx.load(str(small_cnn_path)), "u200", calib, cache=store,
                                    progress=False).cache == "hit"
    assert cache.compile_with_cache(small_cnn_path.read_bytes(), "u200", iter(calib), cache=store,
                                    progress=False).cache == "hit"


def test_cache_key_covers_what_matters(small_cnn_path):
    proto = frontend.load_model(str(small_cnn_path))
    raw = proto.SerializeToString()
    calib = small.calibration_inputs(4, seed=1)
    u200, zcu = compiled_config("u200"), compiled_config("zcu104")
    base = cache.compile_key(raw, cache.calibration_digest(calib), None, u200)
    assert base == cache.compile_key(raw, cache.calibration_digest([c.copy() for c in calib]), None, u200)
    other_calib = cache.calibration_digest(small.calibration_inputs(4, seed=2))
    other_model = onnx.load(str(small_cnn_path))
    other_model.graph.initializer[0].raw_data = bytes(len(other_model.graph.initializer[0].raw_data))
    variants = {
        cache.compile_key(raw, other_calib, None, u200),
        cache.compile_key(raw, cache.calibration_digest(None), None, u200),
        cache.compile_key(raw, cache.calibration_digest(None, seed=1), None, u200),
        cache.compile_key(raw, cache.calibration_digest(calib), (1, 3, 32, 32), u200),
        cache.compile_key(raw, cache.calibration_digest(calib), None, zcu),
        cache.compile_key(other_model.SerializeToString(), cache.calibration_digest(calib), None, u200),
        cache.compile_key(raw, cache.calibration_digest(calib), None, u200, fallback=True),
    }
    assert base not in variants and len(variants) == 7


def test_deploy_uses_the_cache_from_the_environment(small_cnn_path, tmp_path, monkeypatch):
    monkeypatch.setenv("VFPGA_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.delenv("VFPGA_CACHE", raising=False)
    calib = small.calibration_inputs(4, seed=1)
    accel = emulated_accelerator("u200")
    try:
        first = accel.deploy(str(small_cnn_path), name="first", calibration=calib)
        assert len(os.listdir(tmp_path / "env-cache")) == 1
        calls = []
        real = static.compile_graph
        monkeypatch.setattr(static, "compile_graph", lambda *a, **k: calls.append(1) or real(*a, **k))
        second = accel.deploy(str(small_cnn_path), name="second", calibration=calib)
        assert calls == []  # the static stage did not run
        x = random_inputs(first.graph, 1, seed=3)[0]
        np.testing.assert_array_equal(first.run_quantized(x)[0][0], second.run_quantized(x)[0][0])
        monkeypatch.setenv("VFPGA_CACHE", "0")
        accel.remove("second")
        accel.deploy(str(small_cnn_path), name="third", calibration=calib)
        assert calls == [1]  # cache off: compiled again
    finally:
        accel.close()


def test_cache_disabled_writes_nothing(small_cnn_path, tmp_path, monkeypatch):
    monkeypatch.setenv("VFPGA_CACHE", "0")
    store = cache.CompileCache(tmp_path / "off")
    assert not store.enabled
    r = cache.compile_with_cache(small_cnn_path, "u200", small.calibration_inputs(2), cache=store, progress=False)
    assert r.cache == "off" and not (tmp_path / "off").exists()
    r = cache.compile_with_cache(small_cnn_path, "u200", small.calibration_inputs(2), cache=False, progress=False)
    assert r.cache == "off"


def test_corrupt_entries_are_discarded_and_recompiled(small_cnn_path, tmp_path):
    store = cache.CompileCache(tmp_path / "cache", enabled=True)
    calib = small.calibration_inputs(2, seed=1)
    first = cache.compile_with_cache(small_cnn_path, "u200", calib, cache=store, progress=False)
    entry = store.path(first.key)
    for damage in (b"", b"PK\x03\x04 garbage", open(entry, "rb").read()[:1000]):
        with open(entry, "wb") as f:
            f.write(damage)
        with pytest.warns(RuntimeWarning, match="discarding unusable entry"):
            again = cache.compile_with_cache(small_cnn_path, "u200", calib, cache=store, progress=False)
        assert again.cache == "miss"
        assert_same(first.compiled.graph, again.compiled.graph)
        assert ifp.load(entry).segment_size == first.compiled.segment_size  # rewritten, whole
    assert store.stats.discarded == 3
    assert cache.compile_with_cache(small_cnn_path, "u200", calib, cache=store, progress=False).cache == "hit"


def test_cache_prunes_least_recently_used(compiled, tmp_path):
    cfg = compiled_config("u200")
    store = cache.CompileCache(tmp_path, enabled=True, max_bytes=1 << 40)
    for i, key in enumerate(("a" * 40, "b" * 40, "c" * 40)):
        store.put(key, compiled, cfg)
        os.utime(store.path(key), (1000 + i, 1000 + i))
    size = os.path.getsize(store.path("a" * 40))
    store.get("a" * 40, cfg)  # a hit makes "a" the most recently used
    store.max_bytes = 2 * size
    store.prune()
    assert sorted(os.path.basename(p)[0] for p in store.entries()) == ["a", "c"]
    assert store.clear() == 2 and store.entries() == []


# ---------------------------------------------------------------- progress


class FakeTty(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_compile_graph_reports_progress_per_layer(compiled):
    seen = []
    graph = compiled.graph
    static.compile_graph(graph, "u200", progress=lambda done, total, name: seen.append((done, total, name)))
    assert seen == [(i + 1, len(graph.layers), layer.name) for i, layer in enumerate(graph.layers)]


def test_progress_bar_only_on_a_terminal(compiled, monkeypatch):
    monkeypatch.delenv("VFPGA_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    tty = FakeTty(True)
    with Progress("compiling small_cnn", stream=tty, delay=0) as bar:
        bar.stage("quantizing")
        assert "compiling small_cnn" in tty.getvalue() and "quantizing" in tty.getvalue()
        static.compile_graph(compiled.graph, "u200", progress=bar)
        n = len(compiled.graph.layers)
        assert f"{n}/{n}" in tty.getvalue() and "#" in tty.getvalue()
    assert tty.getvalue().endswith("\r")  # the line is cleared at the end

    pipe = FakeTty(False)
    with Progress("compiling", stream=pipe, delay=0) as bar:
        static.compile_graph(compiled.graph, "u200", progress=bar)
    assert pipe.getvalue() == ""

    slow = FakeTty(True)
    with Progress("compiling", stream=slow, delay=60) as bar:  # a compile quicker than the delay: quiet
        static.compile_graph(compiled.graph, "u200", progress=bar)
    assert slow.getvalue() == ""

    monkeypatch.setenv("VFPGA_PROGRESS", "0")
    assert not Progress("x", stream=FakeTty(True)).enabled
    monkeypatch.setenv("VFPGA_PROGRESS", "1")
    assert Progress("x", stream=FakeTty(False)).enabled


def test_progress_line_fits_the_terminal(monkeypatch):
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((60, 24)))  # a 60-column terminal
    tty = FakeTty(True)
    tty.fileno = lambda: 2
    with Progress("compiling resnet50", stream=tty, delay=0) as bar:
        bar(3, 12, "a_very_long_layer_name_" * 5)
        lines = [seg for seg in tty.getvalue().split("\r") if seg.strip()]
    assert lines and "3/12" in lines[-1]
    assert all(len(seg) <= 60 for seg in lines)
