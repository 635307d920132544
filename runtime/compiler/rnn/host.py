"""The host side of an RNN request: the request image written into the
segment and the outputs read back, in ONNX's layouts."""

from __future__ import annotations

import numpy as np

from vfpga.runtime.hw import rnn_golden as rg

from .graph import dev_to_onnx_y
from .model import CompiledRnn, RnnCompileError, RnnLayer

# ------------------------------------------------------------ host side

def _to_dev_states(val, lay: RnnLayer, batch):
    """ONNX initial state ([D, B, H], layout 1: [B, D, H]) -> [D, B, H] float."""
    if val is None:
        return np.zeros((lay.directions, batch, lay.hidden))
    v = np.asarray(val, dtype=np.float64)
    return v if lay.layout == 0 else v.transpose(1, 0, 2)


def state_shape(lay: RnnLayer, batch: int) -> tuple[int, int, int]:
    """An initial state's ONNX shape: [D, B, H] (layout 1: [B, D, H])."""
    return (lay.directions, batch, lay.hidden) if lay.layout == 0 else (batch, lay.directions, lay.hidden)


def _feed(feeds: dict, name: str, want: tuple) -> np.ndarray:
    """A float feed checked against its compiled shape: the model's inputs are
    FP32, so integer, boolean or object arrays are refused, not guessed at."""
    v = np.asarray(feeds[name])
    if v.dtype.kind != "f":
        raise RnnCompileError(f"input {name!r} has dtype {v.dtype}; the model takes floating-point values")
    if v.shape != want:
        raise RnnCompileError(f"input {name!r} has shape {v.shape}, the model was compiled for {want}")
    return v.astype(np.float64)


def request_image(compiled: CompiledRnn, feeds: dict) -> dict[int, bytes]:
    """The per-request bytes: quantized input, initial states (Q.15 and int8)."""
    lay0 = compiled.layers[0]
    if compiled.input_name not in feeds:
        raise RnnCompileError(f"missing input {compiled.input_name!r}")
    want = ((compiled.steps, compiled.batch, lay0.input_size) if lay0.layout == 0
            else (compiled.batch, compiled.steps, lay0.input_size))
    x = _feed(feeds, compiled.input_name, want)
    if lay0.layout == 1:
        x = x.transpose(1, 0, 2)
    img = {compiled.addr["x"]: rg.quantize_input(x, lay0.x_scale).tobytes()}
    for lay in compiled.layers:
        a = lay.addr
        states = [_feed(feeds, n, state_shape(lay, compiled.batch)) if n and feeds.get(n) is not None else None
                  for n in (lay.h0_name, lay.c0_name)]
        h0 = states[0] if lay.h0_name else lay.h0
        c0 = states[1] if lay.c0_name else lay.c0
        h = _to_dev_states(h0, lay, compiled.batch)
        hq = np.clip(np.round(h * rg.ONE), rg.INT32_MIN, rg.INT32_MAX).astype("<i4")
        img[a["hs"]] = hq.tobytes()
        img[a["h0q"]] = np.stack([lay.params[d].h_to_q8(hq[d]) for d in range(lay.directions)]).tobytes()
        if lay.op == "LSTM":
            c = _to_dev_states(c0, lay, compiled.batch)
            img[a["c"]] = np.clip(np.round(c * rg.ONE), rg.INT32_MIN, rg.INT32_MAX).astype("<i4").tobytes()
    return img


def output_span(compiled: CompiledRnn) -> tuple[int, int]:
    """(offset, bytes) of the segment range holding every RNN layer's outputs
    (Y or its int32 history, final states): what the host reads back after a
    request, rather than the whole segment with its weights."""
    steps, batch = compiled.steps, compiled.batch
    ranges = []
    for lay in compiled.layers:
        a, dbh = lay.addr, lay.directions * batch * lay.hidden
        ranges.append((a["hh"], 4 * steps * dbh) if lay.history else (a["y"], steps * dbh))
        ranges += [(a["hs"], 4 * dbh), (a["c"], 4 * dbh)]
    lo = min(at for at, _ in ranges)
    return lo, max(at + n for at, n in ranges) - lo


def rnn_values(compiled: CompiledRnn, seg: np.ndarray, base: int = 0) -> dict[str, np.ndarray]:
    """The RNN layers' outputs (ONNX names and layouts) from segment bytes
    after the request, ``seg[0]`` being segment offset ``base`` (see
    :func:`output_span`): dequantized, Y masked past sequence_lens."""
    steps, batch = compiled.steps, compiled.batch
    mem = np.asarray(seg).view(np.int8)
    values = {}
    for lay in compiled.layers:
        a, nd, hh = lay.addr, lay.directions, lay.hidden
        n = steps * batch * nd * hh

        def at(key, nbytes, a=a):
            return mem[a[key] - base:a[key] - base + nbytes]

        if lay.history:
            y = at("hh", 4 * n).view("<i4").astype(np.float64) / rg.ONE
        else:
            y = at("y", n).astype(np.float64) * lay.h_scale
        y = y.reshape(steps, batch, nd, hh)
        if lay.seq_lens is not None:
            t = np.arange(steps)[:, None]
            y = np.where((t < lay.seq_lens[None, :])[:, :, None, None], y, 0.0)
        values[lay.outputs[0]] = dev_to_onnx_y(y, lay.layout)
        for name, key in ((lay.outputs[1], "hs"), (lay.outputs[2] if lay.op == "LSTM" else "", "c")):
            if name:
                s = at(key, 4 * nd * batch * hh).view("<i4").astype(np.float64) / rg.ONE
                s = s.reshape(nd, batch, hh)
                values[name] = s if lay.layout == 0 else s.transpose(1, 0, 2)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in values.items() if k}


def head_outputs(compiled: CompiledRnn, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The graph outputs from the RNN layers' outputs: the host head (if
    any) runs on onnxruntime."""
    values = dict(values)
    if compiled.post is not None:
        import onnxruntime as ort

        sess = getattr(compiled, "_post_session", None)
        if sess is None:
            sess = ort.InferenceSession(compiled.post.SerializeToString(), providers=["CPUExecutionProvider"])
            compiled._post_session = sess
        names = [o.name for o in sess.get_outputs()]
        values.update(zip(names, sess.run(None, {k: values[k] for k in compiled.post_inputs})))
    return [values[o] for o in compiled.outputs]


def read_outputs(compiled: CompiledRnn, seg: np.ndarray, base: int = 0) -> list[np.ndarray]:
    """The graph outputs from a segment after the request: RNN outputs
    dequantized (Y masked past sequence_lens), heads run on onnxruntime;
    ``seg[0]`` is segment offset ``base``."""
    return head_outputs(compiled, rnn_values(compiled, seg, base))
