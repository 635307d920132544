"""Compile cache: IFP files keyed on everything a compile depends on.

A key hashes the model's content (the serialized ONNX model as loaded, with
any input-shape override applied), the quantization inputs that matter (a
hash of the calibration data, or "generated" with the seed and sample count),
the input shape, the board config (its content hash), the cycle model's
calibration in force (the frames' profiles depend on it) and the compiler: the
vfpga and ISA versions plus a fingerprint of the compiler's own source files
and the onnx/onnxruntime versions (so an edited compiler, or another
quantizer, never reuses a stale program).

Entries are IFP files ``<key>.ifp`` in the cache directory:
$VFPGA_CACHE_DIR, else $XDG_CACHE_HOME/vfpga, else ~/.cache/vfpga.
VFPGA_CACHE=0 disables the cache. Entries are written atomically; an entry
that cannot be read is discarded with a warning and the model recompiled.
The directory is kept under VFPGA_CACHE_MAX_MB megabytes (default 2048),
least recently used entries first out.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from vfpga import overlay
from vfpga.runtime.compiler import frontend, ifp, ir, static
from vfpga.runtime.hw import parameters

DEFAULT_MAX_BYTES = 2048 << 20
_OFF = {"0", "false", "no", "off"}


def default_dir() -> str:
    if os.environ.get("VFPGA_CACHE_DIR"):
        return os.environ["VFPGA_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vfpga")


def enabled_by_env() -> bool:
    return os.environ.get("VFPGA_CACHE", "1").strip().lower() not in _OFF


@functools.lru_cache(maxsize=1)
def build_fingerprint() -> str:
    """Hash of the source of everything that shapes a compiled model (the
    compiler, the hardware models, the ISA and board-config modules) and of the onnx and
    onnxruntime versions that quantize it."""
    import onnx
    import onnxruntime

    from vfpga.driver import isa
    from vfpga.overlay import config as overlay_config

    h = hashlib.sha256()
    runtime = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = []
    for package in ("compiler", "hw"):  # the compiler and the hardware models its estimates come from
        for root, dirs, names in os.walk(os.path.join(runtime, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [os.path.join(root, f) for f in sorted(names) if f.endswith(".py")]
    files += [os.path.abspath(isa.__file__), os.path.abspath(overlay_config.__file__)]
    for path in files:
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(f"onnx {onnx.__version__} onnxruntime {onnxruntime.__version__} numpy {np.__version__}".encode())
    return h.hexdigest()


def _hash_array(h, arr) -> None:
    a = np.ascontiguousarray(np.asarray(arr))
    if a.dtype.hasobject:
        raise TypeError("calibration arrays must be numeric")
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data if a.size else b"")


def calibration_digest(calibration, seed: int = 0, num_random: int = 16) -> str:
    """What the quantization sees of the calibration data, as a hash:
    the arrays (or {input: array} dicts) given, or the generated inputs'
    seed and count. ``calibration`` must be an array or a sequence (pass a
    list, not a one-shot iterator)."""
    if calibration is None:
        return f"generated:seed={seed}:n={num_random}"
    h = hashlib.sha256()
    items = [calibration] if isinstance(calibration, np.ndarray) else calibration
    for item in items:
        if isinstance(item, dict):
            for k in sorted(item):
                h.update(str(k).encode() + b"\0")
                _hash_array(h, item[k])
        else:
            _hash_array(h, item)
        h.update(b"|")
    return "data:" + h.hexdigest()


def compile_key(model_bytes: bytes, calibration: str, input_shape, cfg: dict, fallback: bool = False) -> str:
    """The cache key of one compile (hex)."""
    parts = {
        "model": hashlib.sha256(model_bytes).hexdigest(),
        "calibration": calibration,
        "input_shape": None if input_shape is None else [int(d) for d in input_shape],
        "fallback": bool(fallback),
        "board": ifp.config_hash(cfg),
        "timing": parameters.digest(cfg),  # a calibration file changes the frames' profiles
        "compiler": ifp.compiler_version(),
        "build": build_fingerprint(),
        "ifp": ifp.FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    discarded: int = 0
    last: str = ""  # "hit" | "miss" | "" (not consulted yet)


class CompileCache:
    """A directory of compiled models. ``directory`` defaults to
    :func:`default_dir`; ``enabled`` to the VFPGA_CACHE environment
    variable; ``max_bytes`` to VFPGA_CACHE_MAX_MB (or 2 GiB)."""

    def __init__(self, directory=None, enabled: bool | None = None, max_bytes: int | None = None):
        self.directory = os.fspath(directory) if directory is not None else default_dir()
        self.enabled = enabled_by_env() if enabled is None else bool(enabled)
        if max_bytes is None:
            mb = os.environ.get("VFPGA_CACHE_MAX_MB")
            max_bytes = int(float(mb) * (1 << 20)) if mb else DEFAULT_MAX_BYTES
        self.max_bytes = max_bytes
        self.stats = CacheStats()

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.ifp")

    def get(self, key: str, cfg: dict) -> static.CompiledModel | None:
        """The cached model of ``key``, or None. A damaged or unusable entry
        is removed with a warning (and counts as a miss)."""
        if not self.enabled:
            return None
        path = self.path(key)
        if not os.path.isfile(path):
            self.stats.misses += 1
            self.stats.last = "miss"
            return None
        try:
            compiled = ifp.load(path, board=cfg)
        except (ifp.IfpError, OSError) as e:
            warnings.warn(f"vfpga compile cache: discarding unusable entry {path} ({e}); recompiling",
                          RuntimeWarning, stacklevel=3)
            self._remove(path)
            self.stats.discarded += 1
            self.stats.misses += 1
            self.stats.last = "miss"
            return None
        try:
            os.utime(path)  # least recently used goes first when pruning
        except OSError:
            pass
        self.stats.hits += 1
        self.stats.last = "hit"
        return compiled

    def put(self, key: str, compiled: static.CompiledModel, cfg: dict, source: dict | None = None) -> bool:
        """Store ``compiled``; a cache that cannot be written (read-only or
        full disk) warns and is otherwise ignored. Returns whether it was
        stored."""
        if not self.enabled:
            return False
        try:
            os.makedirs(self.directory, exist_ok=True)
            ifp.save(compiled, self.path(key), config=cfg, source=source)
        except OSError as e:
            warnings.warn(f"vfpga compile cache: cannot write {self.path(key)}: {e}", RuntimeWarning, stacklevel=3)
            return False
        self.stats.stores += 1
        self.prune()
        return True

    def entries(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return [os.path.join(self.directory, n) for n in names if n.endswith(".ifp")]

    def prune(self) -> None:
        """Remove least recently used entries until the directory holds at
        most ``max_bytes`` (and temporary files that a killed writer left)."""
        try:
            stale = [os.path.join(self.directory, n) for n in os.listdir(self.directory) if n.endswith(".tmp")]
        except OSError:
            stale = []
        for p in stale:
            try:
                if time.time() - os.stat(p).st_mtime > 3600:
                    os.remove(p)
            except OSError:
                pass
        stat = []
        for p in self.entries():
            try:
                s = os.stat(p)
            except OSError:
                continue
            stat.append((s.st_mtime, s.st_size, p))
        total = sum(size for _, size, _ in stat)
        for _, size, p in sorted(stat):
            if total <= self.max_bytes:
                break
            self._remove(p)
            total -= size

    def clear(self) -> int:
        """Remove every entry; returns how many."""
        entries = self.entries()
        for p in entries:
            self._remove(p)
        return len(entries)

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except OSError:
            pass


def resolve(cache) -> CompileCache:
    """``cache`` as given to a compile: None (the default directory, on
    unless VFPGA_CACHE=0), False/True, a directory path, or a CompileCache."""
    if isinstance(cache, CompileCache):
        return cache
    if cache is None or cache is True:
        return CompileCache(enabled=None if cache is None else True)
    if cache is False:
        return CompileCache(enabled=False)
    if isinstance(cache, (str, os.PathLike)):
        return CompileCache(cache, enabled=True)
    raise TypeError(f"cache must be None, a bool, a directory or a CompileCache, got {type(cache).__name__}")


# ---------------------------------------------------------------- compiling through the cache


@dataclass
class CompileResult:
    compiled: static.CompiledModel
    source: dict  # where the model came from (kept in the IFP)
    cache: str  # "hit" | "miss" | "off" (cache disabled) | "ifp" (an IFP file) | "graph" (a layer graph)
    seconds: float  # wall time of this call
    key: str = ""


def _label(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.basename(os.fspath(model))
    return getattr(getattr(model, "graph", None), "name", None) or getattr(model, "name", None) or "model"


def _progress_callback(progress, label: str):
    from vfpga.runtime.compiler.progress import Progress

    if progress is False:
        return None
    if progress is None or progress is True:
        return Progress(f"compiling {label}", enabled=None if progress is None else True)
    if callable(progress):
        return progress
    raise TypeError(f"progress must be None, a bool or a callable, got {type(progress).__name__}")


def _input_shape(proto) -> list[int]:
    inits = {t.name for t in proto.graph.initializer}
    inp = [i for i in proto.graph.input if i.name not in inits][0]  # load_model checked there is one
    return [d.dim_value for d in inp.type.tensor_type.shape.dim]


def compile_with_cache(model, board="u200", calibration=None, input_shape=None, *, cache=None,
                       progress=None, fallback: bool = True) -> CompileResult:
    """Static stage through the compile cache.

    model: an ONNX model (path, bytes or ModelProto; float or QDQ), an
    ir.Graph (compiled directly, not cached) or the path of an IFP file
    (loaded, never recompiled). board: a board name or config dict.
    calibration: as for frontend.quantize (None: generated inputs).
    fallback: run the ops the accelerator lacks on the host CPU (as
    frontend.to_graph; False raises UnsupportedOperatorError for them).
    cache: see :func:`resolve`. progress: None shows a progress bar when
    stderr is a terminal and the compile takes more than a moment, False
    shows none, a callable gets (done, total, name) per layer and
    (0, 0, step) for steps without a count."""
    start = time.perf_counter()
    cfg = board if isinstance(board, dict) else overlay.load(board)
    if isinstance(model, (str, os.PathLike)) and ifp.is_ifp(model):
        compiled = ifp.load(model, board=cfg)
        return CompileResult(compiled, ifp.read_info(model).source, "ifp", time.perf_counter() - start)
    cb = _progress_callback(progress, _label(model))
    try:
        if isinstance(model, ir.Graph):
            compiled = static.compile_graph(model, cfg, progress=cb)
            return CompileResult(compiled, {"model": model.name, "kind": "layer graph"}, "graph",
                                 time.perf_counter() - start)
        store = resolve(cache)
        if cb is not None:
            cb(0, 0, "loading the model")
        if calibration is not None and not isinstance(calibration, (np.ndarray, list, tuple)):
            calibration = list(calibration)  # hashed, then read again by the quantizer
        proto = frontend.load_model(model, input_shape=input_shape, calibration=calibration)
        model_bytes = proto.SerializeToString()
        qdq_given = frontend.is_qdq(proto)
        if qdq_given:
            calib = "none (QDQ model as given)"
        elif calibration is None:
            calib = "generated (16 random inputs, seed 0)"
        else:
            if isinstance(calibration, np.ndarray):  # one sample, or samples stacked on the batch axis
                n = 1 if calibration.ndim < 4 or calibration.shape[0] == 1 else calibration.shape[0]
            else:
                n = len(calibration)
            calib = f"given ({n} sample{'s' if n != 1 else ''})"
        key = ""
        if store.enabled:
            key = compile_key(model_bytes, calibration_digest(calibration), input_shape, cfg, fallback)
            hit = store.get(key, cfg)
            if hit is not None:
                return CompileResult(hit, ifp.read_info(store.path(key)).source, "hit",
                                     time.perf_counter() - start, key)
        t0 = time.perf_counter()
        if cb is not None and not qdq_given:
            cb(0, 0, "quantizing (onnxruntime)")
        qdq = frontend.quantize(proto, calibration)
        if cb is not None:
            cb(0, 0, "reading the quantized graph")
        graph = frontend.to_graph(qdq, fallback=fallback)
        quantize_seconds = time.perf_counter() - t0
        compiled = static.compile_graph(graph, cfg, progress=cb)
        source = {
            "model": _label(model) if isinstance(model, (str, os.PathLike)) else f"<{type(model).__name__}>",
            "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
            "onnx_nodes": len(proto.graph.node),
            "calibration": calib,
            "cpu_fallback": bool(fallback),
            "input_shape": _input_shape(proto),
            "quantize_seconds": round(quantize_seconds, 4),
        }
        if store.enabled:
            if cb is not None:
                cb(0, 0, "writing the compile cache")
            store.put(key, compiled, cfg, source)
        return CompileResult(compiled, source, "miss" if store.enabled else "off",
                             time.perf_counter() - start, key)
    finally:
        if cb is not None and hasattr(cb, "close"):
            cb.close()
