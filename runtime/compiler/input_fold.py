"""Folding the first convolution's stride and kernel columns into channels.

A network's first convolution reads the image: few channels (3) against the
ICP input lanes of the core's MAC array (16 on u200's small cores, 64 on its
big core), so most lanes idle for the whole layer -- on ResNet-50 the 7x7/2
conv1 is 31% of the big core's time at 5% of its lanes. The host writes the
input into the segment anyway, so it can write it rearranged, for free:

* space-to-depth by the stride s: x'[I, J, (a, b, c)] = x_pad[s*I + a, s*J + b, c],
  with the kernel regrouped the same way, w'[o, (a, b, c), U, V] =
  w[o, c, s*U + a, s*V + b] (zero where s*U + a or s*V + b falls outside
  the kernel) -- a stride-1 convolution of ceil(KH/s) x ceil(KW/s) over s*s*C
  channels, no padding (the host pads with the input's zero point, which is
  what the core's padding means);
* then, optionally, the kernel's columns into channels too:
  x''[I, J, (V, a, b, c)] = x'[I, J + V, (a, b, c)] -- a K'H x 1 kernel over
  K'W * s*s*C channels.

Both are exact: every product of the original convolution appears once and
the added ones multiply zero weights, so the int32 accumulators -- and the
outputs -- are bit-identical. The static stage picks, per board, the form
with the fewest MAC-array steps per output pixel
(kernel taps x ceil(channels / ICP)); ties keep the simpler form. The graph
the user compiled is unchanged: the host folds each request's int8 input
as it writes it (:class:`FoldWriter`, straight into the segment's host copy;
:meth:`InputFold.apply` for a new array).

The fold is copies of contiguous runs, no gather (one C call,
``vf_fold_input``), a row of output pixels at a time: a row of x' is the
padded input's s rows cut into s*C-byte runs, and each pixel (I, J) of x''
is ONE run of cols*s*s*C bytes of it (48 on ResNet-50's conv1). The row
stays in L1, so the input is read once and the output written once. On a
CPU with AVX-512 VBMI the runs are not copied one by one: every 64 bytes of
an output row are one byte permutation of the s padded image rows it reads
(a plan of at most VF_FOLD_PERIOD_MAX permutations per fold, made once per
writer): on the RGB stems a half to two thirds of the copies' time. With
AVX2 and no VBMI (AMD Zen 3), every 32 bytes are, per 16-byte half, a
vpshufb of a 16-byte window of each of those rows, ORed: on a Zen 3 host
ResNet-50's, VGG-19's and SqueezeNet's folds alone 68, 44 and 29 -> 31, 22
and 13 us.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from vfpga.driver import host_isa
from vfpga.runtime.compiler import ir

_marshal = host_isa.best_module("_marshal")  # the fold's C loop (hls/host/vfpga_marshal.c)


@dataclass(frozen=True)
class InputFold:
    """How the host rearranges the graph input for the folded first convolution."""

    shape: tuple  # (H, W, C) of the graph input, as requests give it
    stride: int  # space-to-depth block (1: none)
    pads: tuple  # (top, left, bottom, right) of the original convolution
    kernel: tuple  # (KH, KW) of the original convolution
    cols: int  # kernel columns folded into channels (1: none)
    folded_shape: tuple  # (H', W', C') written into the segment

    def apply(self, x_q: np.ndarray, zero_point: int) -> np.ndarray:
        """The int8 HWC input ``x_q`` (of ``shape``) rearranged for the folded convolution (a new array)."""
        out = np.empty(self.folded_shape, np.int8)
        return self.writer(zero_point).write(x_q, out)

    def writer(self, zero_point: int, vector: bool = True) -> FoldWriter:
        """A :class:`FoldWriter` of this fold with the input's ``zero_point``
        as the padding (``vector=False``: the scalar copies even where the CPU
        has the permutations; they all write the same bytes)."""
        return FoldWriter(self, zero_point, vector)


class FoldWriter:
    """Folds requests' inputs for one :class:`InputFold` and zero point into a
    caller's buffer (a tenant writes into its segment's host copy), in one C
    call (``vf_fold_input``, hls/host/vfpga_marshal.c), through a scratch
    of one space-to-depth row (or of the s padded image rows an output row
    reads, with a vector plan). Not thread-safe: a tenant keeps one per activation
    slot, used under that slot's lock."""

    def __init__(self, fold: InputFold, zero_point: int, vector: bool = True):
        if not -128 <= int(zero_point) <= 127:
            raise ValueError(f"an int8 input's zero point is in [-128, 127], not {zero_point}")
        s, (h, w, c), (fh, fw, fc) = fold.stride, fold.shape, fold.folded_shape
        self.fold = fold
        self._shape = tuple(fold.shape)
        self.nbytes = fh * fw * fc
        ffi, lib = _marshal.ffi, _marshal.lib
        self._plan = ffi.new("vf_fold_plan_t *")
        #: whether this writer's fold takes byte permutations (vf_fold_plan: the CPU, s <= 2, the period, the
        #: windows)
        self.vector = bool(vector and lib.vf_fold_plan(s, c, fold.cols, self._plan))
        #: which: "vbmi" (vpermt2b), "avx2" (vpshufb) or "scalar" (the copies)
        self.path = {lib.VF_FOLD_VBMI: "vbmi", lib.VF_FOLD_AVX2: "avx2"}.get(self._plan.kind, "scalar")
        wj = fw + fold.cols - 1
        # the x' row (the space-to-depth of the padded input) the folded pixels' runs are cut from, or the s
        # padded image rows the permutations read, each with 64 bytes past its end for the last load
        self._row = np.zeros(s * (wj * s * c + 64) if self.vector else wj * s * s * c, np.int8)
        self._row_ptr = ffi.from_buffer("int8_t[]", self._row)
        self._args = (h, w, c, fold.pads[0], fold.pads[1], s, fold.cols, fh, fw, int(zero_point),
                      self._plan if self.vector else ffi.NULL)
        self._out_row = None  # write_parts' scratch: one output row

    def write(self, x_q: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Writes the int8 HWC input ``x_q`` folded into ``out`` (a contiguous
        one-byte array of the folded input's size, e.g. a segment's host copy);
        returns ``out`` viewed as the folded int8 [H', W', C']."""
        fold = self.fold
        if out.dtype.itemsize != 1 or out.size != self.nbytes or not out.flags.c_contiguous:
            raise ValueError(f"the folded input needs a contiguous buffer of {self.nbytes} one-byte items, not "
                             f"{out.dtype} {out.shape}")
        ffi = _marshal.ffi
        _marshal.lib.vf_fold_input(self._checked(x_q), *self._args, self._row_ptr,
                                   ffi.from_buffer("int8_t[]", out, require_writable=True), ffi.NULL, 0)
        return out.reshape(fold.folded_shape).view(np.int8)

    def write_parts(self, x_q: np.ndarray, stripe, at: int) -> None:
        """Writes ``x_q`` folded straight into a striped segment's parts, at
        segment offset ``at`` (``stripe``: ``Segment.stripe_target``), a row of
        output pixels at a time while it is in cache: the folded input is
        written once, not into the host copy and again into the parts."""
        if self._out_row is None:
            self._out_row = np.empty(self.nbytes // self.fold.folded_shape[0], np.int8)
            self._out_row_ptr = _marshal.ffi.from_buffer("int8_t[]", self._out_row)
        _marshal.lib.vf_fold_input(self._checked(x_q), *self._args, self._row_ptr, self._out_row_ptr, stripe, at)

    def _checked(self, x_q: np.ndarray):
        if x_q.shape != self._shape or x_q.dtype != np.int8:
            raise ValueError(f"the fold takes an int8 HWC input of shape {self.fold.shape}, not {x_q.dtype} "
                             f"{tuple(x_q.shape)}")
        return _marshal.ffi.from_buffer("int8_t[]", np.ascontiguousarray(x_q))


def _steps(kh: int, kw: int, channels: int, icp: int) -> int:
    return kh * kw * -(-channels // icp)


def choose(graph: ir.Graph, icp: int) -> InputFold | None:
    """The fold of the graph's first convolution that needs fewest MAC-array
    steps on cores of ``icp`` input lanes, or None when folding gains nothing
    (or the input feeds anything else, or the convolution is grouped)."""
    x = graph.inputs[0]
    readers = [layer for layer in graph.layers if x in graph.layer_inputs(layer)]
    if len(readers) != 1 or readers[0].kind != "conv" or x in graph.outputs:
        return None
    conv = readers[0]
    oc, cin, kh, kw = conv.weight.shape
    sh, sw = conv.stride
    if conv.groups != 1 or sh != sw:
        return None
    h, w, c = graph.tensors[x].shape
    assert c == cin
    pt, pl, pb, pr = conv.pads
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    s = sh
    kh2, kw2 = -(-kh // s), -(-kw // s)
    best, best_steps = None, _steps(kh, kw, cin, icp)
    for cols in (1, kw2):
        channels = cin * s * s * cols
        steps = _steps(kh2, kw2 // cols, channels, icp)
        if s == 1 and cols == 1:
            continue  # the convolution itself
        if steps < best_steps:
            best_steps = steps
            best = InputFold((h, w, c), s, tuple(conv.pads), (kh, kw), cols,
                             (oh + kh2 - 1, ow + (kw2 - 1 if cols == 1 else 0), channels))
    return best


def fold_graph(graph: ir.Graph, fold: InputFold) -> ir.Graph:
    """The graph with the input tensor in its folded shape and the first
    convolution regrouped to read it (stride 1, no padding)."""
    x = graph.inputs[0]
    conv = next(layer for layer in graph.layers if x in graph.layer_inputs(layer))
    oc, cin, kh, kw = conv.weight.shape
    s = fold.stride
    kh2, kw2 = -(-kh // s), -(-kw // s)
    w = np.zeros((oc, cin, kh2 * s, kw2 * s), np.int8)
    w[:, :, :kh, :kw] = conv.weight
    # [o, c, U, a, V, b] -> [o, (a, b, c), U, V]
    w2 = w.reshape(oc, cin, kh2, s, kw2, s).transpose(0, 3, 5, 1, 2, 4).reshape(oc, s * s * cin, kh2, kw2)
    if fold.cols > 1:  # [o, (a, b, c), U, V] -> [o, (V, a, b, c), U, 1]
        w2 = w2.transpose(0, 3, 1, 2).reshape(oc, kw2 * s * s * cin, kh2, 1)
    folded = dataclasses.replace(conv, weight=np.ascontiguousarray(w2), stride=(1, 1), pads=(0, 0, 0, 0))
    tensors = dict(graph.tensors)
    tensors[x] = dataclasses.replace(graph.tensors[x], shape=tuple(fold.folded_shape))
    layers = [folded if layer is conv else layer for layer in graph.layers]
    out = dataclasses.replace(graph, tensors=tensors, layers=layers)
    return out
