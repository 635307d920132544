"""Batched variants of an RNN model, for dynamic batching of one tenant's requests.

A variant is the same ONNX graph with sequence batch B, compiled with the
batch-1 program's quantization scales (:func:`scales_of`), so every item
of a batch is computed by exactly the integer arithmetic of its unbatched
run: the frames group batch items per weight tile (``Tiling.bg``), which
changes how often weights are read, never a result.

All variants live in one segment at once, so a batch of any size runs
without uploading anything but its request data:

    [ constants (identical in every variant) | work area (the largest variant's;
      variants overlap it: one batch runs at a time) | frames of B=1 | frames of B=2 | ... ]

Frames hold no addresses of themselves, so a variant's program moves to
its place by shifting its frame offsets (:func:`relocate`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import numpy_helper

from .compile import compile_rnn, scales_of
from .host import state_shape
from .model import CELLS, CompiledRnn, RnnCompileError, align


def batch_sizes(max_batch: int) -> list[int]:
    """The batch sizes compiled for ``max_batch``: powers of two below it and
    itself (a batch of n runs on the smallest size >= n, the rest padding)."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive integer, not {max_batch!r}")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


def _batch_axis(layout: int) -> int:
    return 1 if layout == 0 else 0


def rebatch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """``model`` with sequence batch ``batch``: the data input and runtime
    initial states get the new batch dim, constant initial states and
    sequence_lens of batch 1 are repeated, stale inferred shapes dropped."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = [n for n in m.graph.node if n.op_type in CELLS]
    inits = {t.name: t for t in m.graph.initializer}
    inputs = {i.name: i for i in m.graph.input if i.name not in inits}
    layout = {}
    for n in nodes:
        lay = next((a.i for a in n.attribute if a.name == "layout"), 0)
        ins = list(n.input) + [""] * (8 - len(n.input))
        for idx in (0, 5, 6):
            if ins[idx] and (idx or n is nodes[0]):
                layout[ins[idx]] = lay
        if ins[4] in inits:  # sequence_lens: one length per item
            v = numpy_helper.to_array(inits[ins[4]]).reshape(-1)
            if v.size != batch:
                if v.size != 1:
                    raise RnnCompileError(f"node {n.name!r}: sequence_lens has {v.size} entries; only a batch-1 "
                                          f"model can be batched")
                inits[ins[4]].CopyFrom(numpy_helper.from_array(np.repeat(v, batch), ins[4]))
    for name, lay in layout.items():
        ax = _batch_axis(lay)
        if name in inputs:
            dims = inputs[name].type.tensor_type.shape.dim
            if len(dims) == 3:
                dims[ax].Clear()
                dims[ax].dim_value = batch
        elif name in inits:
            v = numpy_helper.to_array(inits[name])
            if v.ndim == 3 and v.shape[ax] == 1:
                inits[name].CopyFrom(numpy_helper.from_array(np.repeat(v, batch, axis=ax), name))
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    return m


def relocate(compiled: CompiledRnn, program_offset: int) -> CompiledRnn:
    """``compiled`` with its frames at ``program_offset`` (not below its work area)."""
    if program_offset < compiled.program_offset:
        raise ValueError(f"frames at {program_offset} would overlap the work area (ends {compiled.program_offset})")
    frames = compiled.frames.copy()
    frames["offset"] += program_offset - compiled.program_offset
    return dataclasses.replace(compiled, frames=frames, program_offset=program_offset,
                               segment_size=align(program_offset + compiled.program.nbytes))


@dataclasses.dataclass
class BatchedRnn:
    """The variants of one model for batches of ``sizes``, placed in one segment."""

    sizes: list[int]
    variants: dict[int, CompiledRnn]  # batch size -> its program at its place
    compiled: dict[int, CompiledRnn]  # batch size -> as compiled (frames right after its own work area)

    @property
    def base(self) -> CompiledRnn:
        return self.variants[1]

    @property
    def segment_size(self) -> int:
        return max(v.segment_size for v in self.variants.values())

    def segment_image(self) -> dict[int, bytes]:
        img = {}
        for v in self.variants.values():
            img.update(v.segment_image())  # the constants are the same bytes in every variant
        return img

    def size_for(self, n: int) -> int:
        """The compiled batch size a batch of n requests runs on."""
        return next(b for b in self.sizes if b >= n)

    def upto(self, max_batch: int) -> BatchedRnn:
        """The variants of sizes <= max_batch, as :func:`compile_batched` would place them."""
        return place([self.compiled[b] for b in self.sizes if b <= max_batch])


def place(variants: list[CompiledRnn]) -> BatchedRnn:
    """Lays compiled variants (batch 1 first, shared constants) out in one segment."""
    base = variants[0]
    for v in variants[1:]:
        if v.consts != base.consts:
            raise RnnCompileError(f"the batch-{v.batch} variant's constants differ from the batch-1 program's")
    at = max(v.program_offset for v in variants)
    out = {}
    for v in variants:
        out[v.batch] = relocate(v, at)
        at = out[v.batch].segment_size
    return BatchedRnn([v.batch for v in variants], out, {v.batch: v for v in variants})


def compile_batched(base: CompiledRnn, max_batch: int) -> BatchedRnn:
    """Variants of ``base`` (a batch-1 program) for batches up to
    ``max_batch``, each compiled with ``base``'s scales and slice counts."""
    if base.batch != 1:
        raise RnnCompileError(f"batching needs a batch-1 model; this one has batch {base.batch}")
    lay0 = base.layers[0]
    variants = [base]
    for b in batch_sizes(max_batch)[1:]:
        shape = ((base.steps, b, lay0.input_size) if lay0.layout == 0 else (b, base.steps, lay0.input_size))
        variants.append(compile_rnn(rebatch(base.model, b), base.config, input_shape=shape,
                                    variants=base.variants, scales=scales_of(base)))
    return place(variants)


# ------------------------------------------------------------------ requests
def stack_feeds(base: CompiledRnn, feeds_list: list[dict], batch: int) -> dict:
    """Requests' feeds (each checked against ``base``) as one batch of
    ``batch`` items along the batch axis; rows past the requests repeat the
    last one (their results are discarded)."""
    rows = list(feeds_list) + [feeds_list[-1]] * (batch - len(feeds_list))
    lay0 = base.layers[0]
    out = {base.input_name: np.concatenate([np.asarray(f[base.input_name], np.float64) for f in rows],
                                           axis=_batch_axis(lay0.layout))}
    for lay in base.layers:
        for name in (lay.h0_name, lay.c0_name):
            if not name or all(f.get(name) is None for f in rows):
                continue
            zero = np.zeros(state_shape(lay, 1))
            out[name] = np.concatenate([zero if f.get(name) is None else np.asarray(f[name], np.float64)
                                        for f in rows], axis=_batch_axis(lay.layout))
    return out


def split_values(compiled: CompiledRnn, values: dict, n: int) -> list[dict]:
    """The RNN layers' outputs of a batch (:func:`rnn_values`) as the first
    ``n`` items' own outputs, each with batch 1."""
    axes = {}
    for lay in compiled.layers:
        y, *states = lay.outputs
        axes[y] = 2 if lay.layout == 0 else 0  # ONNX Y: [T, D, B, H] or [B, T, D, H]
        for s in states:
            axes[s] = _batch_axis(lay.layout)
    return [{k: np.take(v, [i], axis=axes[k]) for k, v in values.items()} for i in range(n)]
