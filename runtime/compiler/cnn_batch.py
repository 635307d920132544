"""Batch-aware CNN programs: B requests of one tenant in one run, each
convolution's weights read from DDR once per tile for all B.

A compiled model's convolution frames each load their weights (and
parameters, and the activation table where there is one) with every input
tile, so a request reads a layer's weights once per spatial tile; on many
cores that is about half of what a request moves through its DDR bank. A
batch runs every such frame once with its weights loaded once and its
input tile, convolution and save repeated for each item. A convolution
chunked over its input channels (tiles and weights double-buffered in IBUF
and WBUF halves) is batched per chunk -- the chunk's weights once, then
every item's tile into the item's own accumulators -- where the items'
accumulators and outputs fit side by side in ACC and OBUF; other frames
(pooling, additions, chunked convolutions whose tiles are too large) run
once per item.

Item b's activations live in an arena of their own (:class:`Items`, after
the model's bytes): the instructions of item b are item 0's with their
arena addresses moved by its arena's base (:func:`.slots.relocate`, as an
activation slot's copy), so each item's result is bit-identical to its
unbatched run. Each size's program follows the arenas in the segment; it
has the same layers, variants and parts as the model, so the dynamic stage
plans it as it plans the model.

The items of a batched single-chunk frame share the core's buffers in
turn, ordered by the dependency tokens (the frame's own buffer handovers,
per item):

* LOAD: the frame's constant loads, then item b's input tile, pushing
  load->compute; from b = 1 it first pops compute->load (the convolution of
  item b - 1 has read IBUF);
* COMPUTE: item b's CONV pops load->compute and, from b = 1, save->compute
  (item b - 1's output has left OBUF); it pushes compute->load while items
  follow, and compute->save (or its activation LUT does);
* SAVE: item b's SAVE pops compute->save and pushes save->compute while
  items follow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from vfpga.driver import isa
from vfpga.runtime.compiler import slots, static, steps

_OP = isa.OPCODES
_DEP = isa.DEP
_DEPS_BYTE = 1  # the instruction head's deps byte (vfpga_isa.h)


class BatchError(ValueError):
    """A model or batch size the batch-aware programs do not support."""


@dataclass(frozen=True)
class Items:
    """Where each item of a batch keeps its activations: item 0 in the
    model's arena, item b >= 1 in its own arena after the model's bytes
    (whole pages each)."""

    count: int
    arena_bytes: int
    base: int  # first byte of item 1's arena (the compiled model's segment size)
    stride: int

    def arena(self, b: int) -> int:
        """Offset of item b's arena (its activations' delta from item 0)."""
        return 0 if b == 0 else self.base + (b - 1) * self.stride

    @property
    def end(self) -> int:
        return self.base + (self.count - 1) * self.stride


@dataclass
class BatchedCnn:
    """A CNN model's programs for batches of up to ``sizes[-1]`` requests:
    ``variants[b]`` is the model that runs b at once (plan and post it as a
    model); item b's input and outputs sit at their placements moved by
    ``arena(b)``. All sizes share the items' arenas; their programs follow
    one another in the segment, up to ``end``."""

    base: static.CompiledModel
    sizes: list[int]
    variants: dict[int, static.CompiledModel]
    items: Items
    weight_frames: dict[int, int]  # per size: one-core frames whose weights the items share
    end: int

    def arena(self, item: int) -> int:
        return self.items.arena(item)

    def size_for(self, n: int) -> int:
        """The compiled batch size a batch of n requests runs on."""
        if not 1 <= n <= self.sizes[-1]:
            raise ValueError(f"a batch of {n}: 1..{self.sizes[-1]} requests")
        return next(b for b in self.sizes if b >= n)

    def segment_image(self) -> dict[int, bytes]:
        """The bytes to upload once at deploy: {segment offset: bytes}."""
        image = self.base.segment_image()
        for b in self.sizes[1:]:
            v = self.variants[b]
            image[v.program_offset] = v.program.tobytes()
        return image


def _deps(insn: np.ndarray, deps: int) -> np.ndarray:
    out = insn.copy()
    out[_DEPS_BYTE] = deps
    return out


def _dram_addr(insn: np.ndarray) -> int:
    fmt = isa.FORMATS["mem"]  # dram_addr at the same offset in the mem and linear formats
    at = fmt.fields["dram_addr"][1]
    return int(insn[at:at + 4].view("<u4")[0])


def _shared_weights(frame: np.ndarray, arena_bytes: int):
    """(constant loads, input load, conv, LUT or None, save) of a frame the
    items can share, else None: one input tile, one single-chunk CONV
    (initialises and finishes its accumulators), an optional LUT, one SAVE,
    and loads of constants only besides the tile."""
    ops = isa.opcodes_of(frame)
    if len(ops) < 2 or ops[0] != _OP["FRAME"]:
        return None
    consts, tile, conv, lut, save = [], None, None, None, None
    for row, op in zip(frame[1:], ops[1:].tolist()):
        if op == _OP["LOAD_LINEAR"] and _dram_addr(row) >= arena_bytes and conv is None:
            consts.append(row)
        elif op == _OP["LOAD_TILE"] and tile is None and conv is None:
            tile = row
        elif op == _OP["CONV"] and conv is None and tile is not None:
            flags = int(isa.decode(row.tobytes())["flags"])
            if flags & isa.CONV_ACC_INIT == 0 or flags & isa.CONV_ACC_FINAL == 0:
                return None
            conv = row
        elif op == _OP["LUT"] and conv is not None and lut is None and save is None:
            lut = row
        elif op == _OP["SAVE"] and conv is not None and save is None:
            save = row
        else:
            return None
    if tile is None or conv is None or save is None or not consts:
        return None
    return consts, tile, conv, lut, save


def _batched_frame(parts, items: Items, batch: int) -> np.ndarray:
    consts, tile, conv, lut, save = parts
    arena = items.arena_bytes
    rows = [None, *(_deps(c, 0) for c in consts)]
    for b in range(batch):
        more = b < batch - 1
        delta = items.arena(b)
        rows.append(_deps(slots.relocate(tile, arena, delta),
                          _DEP["PUSH_NEXT"] | (_DEP["POP_NEXT"] if b else 0)))
        rows.append(_deps(conv, _DEP["POP_PREV"] | (_DEP["POP_NEXT"] if b else 0)
                          | (_DEP["PUSH_PREV"] if more else 0) | (0 if lut is not None else _DEP["PUSH_NEXT"])))
        if lut is not None:
            rows.append(_deps(lut, _DEP["PUSH_NEXT"]))
        rows.append(_deps(slots.relocate(save, arena, delta), _DEP["POP_PREV"] | (_DEP["PUSH_PREV"] if more else 0)))
    return np.stack(rows[1:])


def _with(insn: np.ndarray, deps: int, **fields) -> np.ndarray:
    """A copy of ``insn`` with its deps byte and the named fields set."""
    out = _deps(insn, deps)
    rec = out.view(isa.FORMATS[isa.FORMAT_OF[int(out[0])]])
    for name, value in fields.items():
        rec[0][name] = value
    return out


def _chunked(frame: np.ndarray, arena_bytes: int):
    """(chunks [(input load, constant loads, conv)], LUT or None, save) of a
    convolution frame chunked over its input channels (the tiles and weights
    double-buffered in IBUF and WBUF halves, one accumulation over the
    chunks), else None."""
    ops = isa.opcodes_of(frame)
    if len(ops) < 2 or ops[0] != _OP["FRAME"]:
        return None
    chunks, cur, lut, save = [], None, None, None
    for row, op in zip(frame[1:], ops[1:].tolist()):
        if save is not None:
            return None
        if op == _OP["LOAD_TILE"] and lut is None:
            if cur is not None:
                return None
            cur = [row, []]
        elif op == _OP["LOAD_LINEAR"] and cur is not None and _dram_addr(row) >= arena_bytes:
            cur[1].append(row)
        elif op == _OP["CONV"] and cur is not None and cur[1]:
            chunks.append((cur[0], cur[1], row))
            cur = None
        elif op == _OP["LUT"] and cur is None and chunks and lut is None:
            lut = row
        elif op == _OP["SAVE"] and cur is None and chunks:
            save = row
        else:
            return None
    if len(chunks) < 2 or save is None:
        return None
    conv = isa.FORMATS["conv"]
    flags = [int(isa.decode(c.tobytes())["flags"]) for _, _, c in chunks]
    first, last = flags[0], flags[-1]
    if not (first & isa.CONV_ACC_INIT and last & isa.CONV_ACC_FINAL
            and all(f & (isa.CONV_ACC_INIT | isa.CONV_ACC_FINAL) == 0 for f in flags[1:-1])
            and not first & isa.CONV_ACC_FINAL and not last & isa.CONV_ACC_INIT):
        return None
    if any(c.view(conv)[0]["acc_addr"] or c.view(conv)[0]["out_addr"] for _, _, c in chunks):
        return None
    return chunks, lut, save


def _batched_chunks(parts, items: Items, batch: int, geo: dict):
    """The frame of a chunked convolution for ``batch`` items, or None when
    the items' accumulators or outputs do not fit side by side: per chunk,
    its weights loaded once and every item's tile convolved into the item's
    own accumulators (ACC and OBUF regions of their own, tiles alternating
    over the IBUF halves as the chunks do)."""
    chunks, lut, save = parts
    c0 = chunks[0][2].view(isa.FORMATS["conv"])[0]
    tile = int(c0["out_h"]) * int(c0["out_w"]) * int(c0["groups"]) * int(c0["cout_g"])
    stride = -(-tile // 64) * 64
    if batch * stride > min(geo["acc_words"], geo["obuf_bytes"]):
        return None
    half = geo["ibuf_bytes"] // 2
    arena = items.arena_bytes
    n, steps = len(chunks), len(chunks) * batch
    rows = []
    for k, (load, consts, conv) in enumerate(chunks):
        for b in range(batch):
            s = k * batch + b
            at = (s % 2) * half
            loads = [slots.relocate(load, arena, items.arena(b)).reshape(-1)] + (list(consts) if b == 0 else [])
            for j, ld in enumerate(loads):
                deps = (_DEP["POP_NEXT"] if j == 0 and s >= 2 else 0) | (_DEP["PUSH_NEXT"] if j == len(loads) - 1
                                                                       else 0)
                rows.append(_with(ld, deps, buf_addr=at) if j == 0 else _deps(ld, deps))
            final = k == n - 1
            deps = _DEP["POP_PREV"] | (_DEP["PUSH_PREV"] if s + 2 < steps else 0) | \
                (_DEP["PUSH_NEXT"] if final and lut is None else 0)
            rows.append(_with(conv, deps, in_addr=at, acc_addr=b * stride, out_addr=b * stride))
    for b in range(batch):
        if lut is not None:
            rows.append(_with(lut, _DEP["PUSH_NEXT"], in_addr=b * stride, out_addr=b * stride))
        rows.append(_with(slots.relocate(save, arena, items.arena(b)).reshape(-1), _DEP["POP_PREV"],
                          buf_addr=b * stride))
    return np.stack(rows)


def compile_batched(compiled: static.CompiledModel, max_batch: int, config: dict | None = None) -> BatchedCnn:
    """The programs that run batches of ``compiled``: one per size of
    :func:`vfpga.runtime.compiler.rnn.batch_sizes` (powers of two below
    ``max_batch``, and max_batch; a batch of n runs on the smallest size
    that holds it). Size 1 is the model itself."""
    from vfpga import overlay
    from vfpga.runtime.compiler.rnn import batch_sizes

    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise BatchError(f"batch must be >= 1, not {max_batch!r}")
    cfg = config or overlay.load(compiled.board)
    items = Items(max_batch, compiled.activation_bytes, compiled.segment_size,
                  static.align(compiled.activation_bytes, static.PAGE))
    sizes = batch_sizes(max_batch)
    variants, shared = {1: compiled}, {1: 0}
    at = static.align(items.end, static.PAGE)
    for b in sizes[1:]:
        variants[b], shared[b] = _batch_program(compiled, b, items, at, cfg)
        at = variants[b].segment_size
    return BatchedCnn(compiled, sizes, variants, items, shared, at)


def _batch_program(compiled: static.CompiledModel, batch: int, items: Items, program_offset: int,
                   cfg: dict) -> tuple[static.CompiledModel, int]:
    """The model that runs ``batch`` requests of ``compiled`` at once, its
    program at ``program_offset``; and how many one-core frames share weights."""
    insns = np.asarray(compiled.program, np.uint8).reshape(-1, isa.INSN_BYTES)
    f = compiled.frames
    linear: list[np.ndarray] = []  # variant 0, in the model's order, with its barriers and END
    alt: list[np.ndarray] = []
    rows = []  # (layer, variant, in alt?, first insn, n_insns)
    pos = alt_pos = 0
    shared = 0
    order = np.lexsort((f["offset"], f["variant"], f["layer"]))
    by_layer: dict[int, list] = {}
    for i in order.tolist():
        by_layer.setdefault(int(f["layer"][i]), []).append(i)
    layers, parts = [], []
    part_start = 0

    def close_part():
        nonlocal pos, part_start
        if pos > part_start:
            linear.append(np.frombuffer(isa.encode("END"), np.uint8)[None])
            pos += 1
            parts.append(static.Part("accel", program_offset + part_start * isa.INSN_BYTES, pos - part_start, -1))
        part_start = pos

    for li in compiled.layers:
        if li.kind == "cpu":  # the host runs it for each item
            close_part()
            parts.append(static.Part("cpu", layer=li.index))
            layers.append(li)
            continue
        if not li.frames:
            layers.append(li)
            continue
        counts: dict[int, int] = {}
        insns0 = 0
        for i in by_layer.get(li.index, []):
            a = (int(f["offset"][i]) - compiled.program_offset) // isa.INSN_BYTES
            frame = insns[a:a + int(f["n_insns"][i])]
            v = int(f["variant"][i])
            one = None
            if batch > 1:
                pieces = _shared_weights(frame, items.arena_bytes)
                if pieces is not None:
                    one = _batched_frame(pieces, items, batch)
                else:
                    pieces = _chunked(frame, items.arena_bytes)
                    one = _batched_chunks(pieces, items, batch, cfg["cnn_core"]) if pieces is not None else None
            out = [one] if one is not None else \
                [slots.relocate(frame, items.arena_bytes, items.arena(b)).reshape(-1, isa.INSN_BYTES)
                 for b in range(batch)]
            shared += one is not None and v == 0
            for fr in out:
                counts[v] = counts.get(v, 0) + 1
                if v == 0:
                    insns0 += len(fr)
                    rows.append((li.index, v, 0, pos, len(fr)))
                    linear.append(fr)
                    pos += len(fr)
                else:
                    rows.append((li.index, v, 1, alt_pos, len(fr)))
                    alt.append(fr)
                    alt_pos += len(fr)
        linear.append(np.frombuffer(isa.encode("BARRIER", tag=li.index, layer=li.index), np.uint8)[None])
        pos += 1
        layers.append(dataclasses.replace(
            li, frames=counts.get(0, 0), insns=insns0, macs=li.macs * batch, variants=[(d, counts.get(v, 0)) for v, (d, _) in enumerate(li.variants)]))
    close_part()
    code = np.concatenate([np.concatenate(linear), *(alt or [np.zeros((0, isa.INSN_BYTES), np.uint8)])]).reshape(-1)
    starts = [r[3] + r[2] * pos for r in rows]
    steps.check_steps(code, cfg["cnn_core"]["frame_insns"], f"{cfg['name']} CNN program, batch {batch}", BatchError,
                      starts=starts)
    frames = np.zeros(len(rows), static.FRAME_DTYPE)
    if rows:
        r = np.array(rows, np.int64)
        first = r[:, 3] + r[:, 2] * pos
        frames["layer"], frames["variant"], frames["n_insns"] = r[:, 0], r[:, 1], r[:, 4]
        frames["offset"] = program_offset + first * isa.INSN_BYTES
        frames["cycles"], frames["ddr_bytes"] = static.frame_profiles(code, first, frames["n_insns"], cfg)
    size = static.align(program_offset + len(code), static.PAGE)
    batched = dataclasses.replace(
        compiled, layers=layers, parts=parts, frames=frames,
        program=code, program_offset=program_offset, segment_size=size)
    return batched, shared

