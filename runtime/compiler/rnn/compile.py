"""The RNN static stage: ONNX LSTM/GRU model -> :class:`CompiledRnn`."""

from __future__ import annotations

import warnings

import numpy as np
import onnx

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.compiler.frontend.ops import attrs
from vfpga.runtime.compiler.static import core_counts
from vfpga.runtime.compiler.steps import check_steps
from vfpga.runtime.hw import rnn_golden as rg

from .emit import Emitter
from .frames import FrameContext, pack_gates, preload_frame, step_frame, tiling_for
from .graph import (
    calibrate,
    check_glue,
    check_node,
    constants_of,
    glue_nodes,
    post_model,
    producers,
    random_feeds,
    shape_of,
)
from .model import CELLS, FRAME_DTYPE, CompiledRnn, Geometry, Phase, RnnCompileError, align

# -------------------------------------------------------------------- compile

def _load_model(model) -> onnx.ModelProto:
    m = onnx.load(model) if isinstance(model, str) else model
    try:
        return onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - shape inference is best effort
        return m


def compile_rnn(model, board: str | dict = "u200", calibration=None, input_shape=None, resident: bool = True,
                variants=None, scales=None) -> CompiledRnn:
    """Static stage: ``model`` (path or ModelProto) with LSTM/GRU nodes ->
    CompiledRnn for ``board``. ``calibration``: list of feed dicts for the
    float model (default: 4 runs of U(-1, 1) inputs, with a warning);
    ``input_shape``: the data input's shape when the model leaves it dynamic;
    ``variants``: slice counts to prepare (default core_counts(RNN cores));
    ``scales``: (x scale, [h scale per layer]) to use instead of calibrating
    (:func:`scales_of` of another compile: batched variants of a model must
    quantize exactly as its batch-1 program does)."""
    model = _load_model(model)
    cfg = overlay.load(board) if isinstance(board, str) else board
    geo = Geometry.of(cfg)
    consts = constants_of(model)
    nodes = [n for n in model.graph.node if n.op_type in CELLS]
    if not nodes:
        raise RnnCompileError("the model has no LSTM or GRU node")
    for n in model.graph.node:
        if n.op_type in ("RNN",):
            raise RnnCompileError(f"node {n.name!r}: op RNN (the simple Elman cell) is not supported; LSTM and GRU are")
    x_name = nodes[0].input[0]
    init_names = {t.name for t in model.graph.initializer}
    runtime_inputs = [i for i in model.graph.input if i.name not in init_names]
    if x_name not in {i.name for i in runtime_inputs}:
        raise RnnCompileError(f"node {nodes[0].name!r}: input X ({x_name!r}) must be a graph input; ops before the "
                              f"first RNN layer are not supported")
    x_shape = tuple(input_shape) if input_shape is not None else shape_of(model, x_name)
    layers = []
    prod = producers(model)
    for i, n in enumerate(nodes):
        if i == 0:
            shape = x_shape
        else:
            prev = layers[-1]
            steps_, batch_ = layers[0].seq_steps, layers[0].seq_batch
            shape = (steps_, batch_, prev.directions * prev.hidden)
            if n.op_type and attrs(n).get("layout", 0) == 1:
                shape = (batch_, steps_, prev.directions * prev.hidden)
        lay = check_node(n, consts, model, shape)
        lay.seq_steps, lay.seq_batch = ((shape[0], shape[1]) if lay.layout == 0 else (shape[1], shape[0]))
        if i:
            prev = layers[-1]
            if (lay.seq_steps, lay.seq_batch) != (prev.seq_steps, prev.seq_batch):
                raise RnnCompileError(f"node {lay.node!r}: sequence {lay.seq_steps} x batch {lay.seq_batch} differs "
                                      f"from the previous layer's")
            if lay.seq_lens is not None or prev.seq_lens is not None:
                a_ = lay.seq_lens if lay.seq_lens is not None else np.full(lay.seq_batch, lay.seq_steps)
                b_ = prev.seq_lens if prev.seq_lens is not None else np.full(prev.seq_batch, prev.seq_steps)
                if not np.array_equal(a_, b_):
                    raise RnnCompileError(f"node {lay.node!r}: sequence_lens differ from the previous layer's")
            glue = glue_nodes(model, prod, prev.outputs[0], lay.x_name, lay.node)
            check_glue(model, glue, prev, lay, lay.seq_steps, lay.seq_batch)
        layers.append(lay)
    steps, batch = layers[0].seq_steps, layers[0].seq_batch
    shapes = {}
    for i in runtime_inputs:
        shp = x_shape if i.name == x_name else shape_of(model, i.name)
        if shp is None or any(v is None for v in shp):
            raise RnnCompileError(f"graph input {i.name!r} needs a static shape")
        shapes[i.name] = shp
    if scales is not None:
        x_scale, h_scales = float(scales[0]), [float(h) for h in scales[1]]
        if len(h_scales) != len(layers):
            raise RnnCompileError(f"scales give {len(h_scales)} h scales for {len(layers)} layers")
    elif calibration is None:
        warnings.warn("compile_rnn: no calibration data; scales come from U(-1, 1) inputs", UserWarning,
                      stacklevel=2)
        calibration = [random_feeds(model, shapes, seed) for seed in range(4)]
    if scales is None:
        x_scale, h_scales = calibrate(model, layers, calibration)
    for i, lay in enumerate(layers):
        lay.x_scale = x_scale if i == 0 else layers[i - 1].h_scale
        lay.h_scale = h_scales[i]
        g, hh = lay.gates, lay.hidden
        lay.params = []
        for d in range(lay.directions):
            p = rg.quantize(lay.cell, lay.w[d], lay.r[d], lay.b[d, :g * hh], lay.b[d, g * hh:], x_scale=lay.x_scale,
                            h_scale=lay.h_scale, linear_before_reset=lay.lbr, step_log2=geo.step_log2)
            p.sig = rg.act_table("sigmoid", geo.segments, geo.step_log2)
            p.tanh = rg.act_table("tanh", geo.segments, geo.step_log2)
            lay.params.append(p)

    post, post_inputs = post_model(model, nodes, None)
    needed = set(post_inputs) | {o.name for o in model.graph.output}
    # ------------------------------------------------------------ segment layout
    top = 0

    def alloc(nbytes):
        nonlocal top
        at = top
        top = align(top + max(nbytes, 1))
        return at

    consts_img: list[tuple[int, bytes]] = []

    def put(data: bytes):
        at = alloc(len(data))
        consts_img.append((at, data))
        return at

    tables = np.concatenate([rg.act_table("sigmoid", geo.segments, geo.step_log2),
                             rg.act_table("tanh", geo.segments, geo.step_log2)]).astype("<i4")
    addr: dict = {"tab": put(tables.tobytes())}
    for lay in layers:
        a = lay.addr = {"tab": addr["tab"], "w": [], "r": [], "px": [], "ph": []}
        for p in lay.params:
            # RNN_MATVEC's beat-major tiles, per gate (frames.pack_gates)
            a["w"].append(put(pack_gates(p.w, lay.gates, geo).tobytes()))
            a["r"].append(put(pack_gates(p.r, lay.gates, geo).tobytes()))
            a["px"].append(put(np.stack([p.bias_x, p.mult_x, p.shift_x], 1).astype("<i4").tobytes()))
            a["ph"].append(put(np.stack([p.bias_h, p.mult_h, p.shift_h], 1).astype("<i4").tobytes()))
    const_end = top
    addr["x"] = alloc(steps * batch * layers[0].input_size)
    for i, lay in enumerate(layers):
        a, dbh = lay.addr, lay.directions * batch * lay.hidden
        a["h0q"], a["hs"] = alloc(dbh), alloc(4 * dbh)
        a["c"] = alloc(4 * dbh) if lay.op == "LSTM" else a["hs"]
        a["y"] = alloc(steps * dbh)
        if lay.op == "GRU" and not lay.lbr:
            a["rh"], a["accs"] = alloc(dbh), alloc(4 * 5 * dbh)
        else:
            a["rh"] = a["accs"] = a["y"]
        lay.history = i == len(layers) - 1 or lay.outputs[0] in needed
        a["hh"] = alloc(4 * steps * dbh) if lay.history else a["y"]
    work_end = top
    # ------------------------------------------------------------ frames
    ks = sorted(set(variants)) if variants else core_counts(geo.count)
    tilings = [{v: t for v in ks if (t := tiling_for(lay, geo, v, batch, resident)) is not None} for lay in layers]
    usable = [v for v in ks if all(v in t for t in tilings)]
    if not usable:
        raise RnnCompileError("no slice count fits every layer")
    em = Emitter()
    frames, phases = [], []
    fid = 0
    lens_all = layers[0].seq_lens if layers[0].seq_lens is not None else np.full(batch, steps)
    for li, lay in enumerate(layers):
        x_addr = addr["x"] if li == 0 else layers[li - 1].addr["y"]
        kinds = ["rh", "gru2"] if lay.op == "GRU" and not lay.lbr else ["step"]
        for d in range(lay.directions):
            ctx = FrameContext(li, lay, d, lay.params[d], geo, lay.addr, x_addr, batch, lay.history)
            rev = lay.direction_reversed(d)
            plan_steps = [(-1, "preload")] + [(st, k) for st in range(int(lens_all.max())) for k in kinds]
            for st, kind in plan_steps:
                ph = Phase(li, d, st, kind)
                if st >= 0:
                    items = []
                    for b in range(batch):
                        lb = int(lens_all[b])
                        if st < lb:
                            t = lb - 1 - st if rev else st
                            tp = None if st == 0 else (t + 1 if rev else t - 1)
                            items.append((b, t, tp))
                for v in usable:
                    tl = tilings[li][v]
                    if st < 0 and not tl.resident:
                        continue
                    rows = []
                    for si, (s, e) in enumerate(zip(tl.cuts[:-1], tl.cuts[1:])):
                        start = em.n
                        if st < 0:
                            preload_frame(em, ctx, s, e, fid)
                        else:
                            step_frame(em, ctx, tl, kind, s, e, items, fid)
                        fid += 1
                        rows.append(len(frames))
                        frames.append((v, len(phases), si, start, em.n - start))
                    ph.frames[v] = np.array(rows, np.int64)
                if ph.frames:
                    phases.append(ph)
    program = em.encode()
    # every step fits the core's instruction queues (else it faults FRAME_SIZE)
    check_steps(program, cfg["rnn_core"]["frame_insns"], f"{cfg['name']} RNN program", RnnCompileError,
                starts=[f[3] for f in frames])
    program_offset = align(work_end)
    fr = np.zeros(len(frames), FRAME_DTYPE)
    if frames:
        cols = np.array(frames, np.int64)
        for j, name in enumerate(("variant", "phase", "slot", "offset", "n_insns")):
            fr[name] = cols[:, j]
    fr["offset"] = program_offset + fr["offset"] * isa.INSN_BYTES
    seg_size = align(program_offset + program.nbytes)
    bank = int(cfg["ddr"]["bank_bytes"])
    if seg_size > bank:
        raise RnnCompileError(f"segment of {seg_size} bytes exceeds a DDR bank ({bank})")
    consts_bytes = bytearray(const_end)
    for at, data in consts_img:
        consts_bytes[at:at + len(data)] = data
    from vfpga.runtime.hw import rnn_cycle_model

    fr["cycles"], fr["ddr_bytes"] = rnn_cycle_model.frames_profile(program, fr["offset"] - program_offset,
                                                                    fr["n_insns"], cfg)
    out_names = [o.name for o in model.graph.output]
    return CompiledRnn(board=cfg.get("name", str(board)), config=cfg, model=model, layers=layers, tilings=tilings,
                       phases=phases, frames=fr, program=program, program_offset=program_offset,
                       consts=bytes(consts_bytes), const_offset=0, addr=addr, steps=steps, batch=batch,
                       input_name=x_name, input_scale=layers[0].x_scale, post=post, post_inputs=post_inputs,
                       outputs=out_names, segment_size=seg_size, variants=usable)


def scales_of(compiled: CompiledRnn) -> tuple[float, list[float]]:
    """The quantization scales ``compiled`` was built with, as compile_rnn's ``scales`` takes them."""
    return compiled.input_scale, [lay.h_scale for lay in compiled.layers]
