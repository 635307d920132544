"""The quantized layer graph the compiler lowers: what the front end
produces from ONNX and what the golden model executes.

Activations are int8 HWC tensors of batch 1 with a per-tensor scale and zero
point (real = scale * (q - zero_point)). Every layer carries integer
parameters only; the float scales are kept for reporting and dequantizing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Tensor:
    name: str
    shape: tuple[int, int, int]  # (H, W, C)
    scale: float
    zero_point: int  # int8
    # Shape of the tensor in the ONNX model (NCHW or flattened [1, K]) when it
    # differs from plain [1, C, H, W], e.g. a flattened graph output; the
    # front end sets it on graph inputs/outputs so results keep ONNX's shape.
    onnx_shape: tuple[int, ...] | None = None
    # "int8" for every accelerator tensor. "float32" only for a graph output
    # that a CpuOp computes in float (e.g. a final op onnxruntime left
    # unquantized): it holds float32 values in HWC, scale 1.0 / zero point 0
    # are meaningless, and the host returns it as it is.
    dtype: str = "int8"


@dataclass
class Conv:
    """Grouped 2-D convolution with fused bias, requantization and clip.
    out = clamp(out_zp + rshift_round((bias + sum((x - in_zp) * w)) * mult, shift), lo, hi)
    with x padded by real zeros (q = in_zp)."""

    name: str
    input: str
    output: str
    weight: np.ndarray  # int8 [OC, IC // groups, KH, KW]
    bias: np.ndarray  # int32 [OC]
    mult: np.ndarray  # int32 [OC]
    shift: np.ndarray  # int32 [OC]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    clip: tuple[int, int] = (-128, 127)
    onnx_nodes: list[str] = field(default_factory=list)
    kind: str = "conv"
    # An activation table applied after the clamp (int8 [256], entry q + 128),
    # run by the core's LUT on the tile before it is saved; None: none.
    table: np.ndarray | None = None
    # With a table: the zero point of the requantized value the table reads
    # (the output tensor's quantization is the table's own).
    requant_zp: int | None = None


@dataclass
class ConvTranspose:
    """Transposed 2-D convolution (ONNX ConvTranspose) with the requantization
    of :class:`Conv`. weight is in ONNX's [IC, OC // groups, KH, KW] layout;
    y[oc, oy, ox] = bias + sum over (ic, iy, ix, ky, kx) with
    oy = iy * sh + ky - pad_top (same for x) of (x - in_zp) * w. The
    compiler runs it as sh * sw ordinary convolutions (one per output phase)
    whose tiles the SAVE unit interleaves."""

    name: str
    input: str
    output: str
    weight: np.ndarray  # int8 [IC, OC // groups, KH, KW]
    bias: np.ndarray  # int32 [OC]
    mult: np.ndarray
    shift: np.ndarray
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # cropped from the full output: top, left, bottom, right
    output_padding: tuple[int, int] = (0, 0)
    groups: int = 1
    clip: tuple[int, int] = (-128, 127)
    onnx_nodes: list[str] = field(default_factory=list)
    kind: str = "convtranspose"
    table: np.ndarray | None = None
    requant_zp: int | None = None


@dataclass
class Lut:
    """An element-wise function of one int8 tensor as a 256-entry table:
    out = table[x + 128] (hard-swish, HardSigmoid, Sigmoid, SiLU, Clip, any
    chain of element-wise ops of one quantized input and its quantization)."""

    name: str
    input: str
    output: str
    table: np.ndarray  # int8 [256]
    onnx_nodes: list[str] = field(default_factory=list)
    kind: str = "lut"


@dataclass
class Mul:
    """Element-wise product with requantization; ``broadcast``: b is [1, 1, C]
    (one value per channel, the squeeze-and-excitation scale).
    out = clamp(out_zp + rshift_round((a - a_zp) * (b - b_zp) * mult, shift), lo, hi)"""

    name: str
    inputs: tuple[str, str]
    output: str
    mult: int
    shift: int
    broadcast: bool = False
    clip: tuple[int, int] = (-128, 127)
    onnx_nodes: list[str] = field(default_factory=list)
    kind: str = "mul"


@dataclass
class Upsample:
    """Upsampling by integer factors (Resize).
    mode "nearest": out[y, x] = requant(in[y // sy, x // sx]) with the 1x1
    requantization of :class:`Pool` (mult, shift, clip; in_zp / out_zp of
    the tensors).
    mode "linear" (bilinear, coordinates ``transform`` "half_pixel" or
    "asymmetric"): per axis, the source coordinate of output o is clamped to
    [0, n - 1] (half_pixel: (o + 0.5) / s - 0.5; asymmetric: o / s), its two
    neighbours i0 = floor, i1 = min(i0 + 1, n - 1) get the integer weights
    D - a and a (a = frac * D, D = 2s for half_pixel, s for asymmetric);
    out = clamp(out_zp + rshift_round(sum_{taps} wy * wx * (x - in_zp) * mult, shift), clip),
    mult / shift the real multiplier in_scale / (out_scale * Dy * Dx)."""

    name: str
    input: str
    output: str
    scale: tuple[int, int]
    mult: int = 1 << 30
    shift: int = 30
    clip: tuple[int, int] = (-128, 127)
    onnx_nodes: list[str] = field(default_factory=list)
    kind: str = "upsample"
    mode: str = "nearest"
    transform: str = "half_pixel"


@dataclass
class Pool:
    """Max or average pooling (global pooling is a kernel covering the input).
    v = max(x - in_zp) or sum(x - in_zp) over the valid window positions;
    out = clamp(out_zp + rdiv(v * mult, count << shift), lo, hi)."""

    name: str
    input: str
    output: str
    mode: str  # "max" | "avg"
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    count_include_pad: bool = False
    mult: int = 1 << 30
    shift: int = 30
    clip: tuple[int, int] = (-128, 127)
    onnx_nodes: list[str] = field(default_factory=list)
    kind: str = "pool"


@dataclass
class Add:
    """Element-wise sum with per-input requantization.
    out = clamp(out_zp + rshift_round((a - a_zp) * a_mult + (b - b_zp) * b_mult, shift), lo, hi)"""

    name: str
    inputs: tuple[str, str]
    output: str
    a_mult: int
    b_mult: int
    shift: int
    clip: tuple[int, int] = (-128, 127)
    onnx_nodes: list[str] = field(default_factory=list)
    kind: str = "add"


@dataclass
class Concat:
    """Channel concatenation (the HWC last axis). No data moves: the compiler
    places every input as a channel slice of the output. Inputs must carry
    the output's scale and zero point (the front end inserts requantizing
    copies where they differ). The front end also guarantees: no tensor is
    an input of two Concats or twice of one, and the graph input never is
    (copies again); an input may be another Concat's output (nested slices,
    DenseNet), a CpuOp's output, or read by other layers too."""

    name: str
    inputs: tuple[str, ...]
    output: str
    onnx_nodes: list[str] = field(default_factory=list)
    kind: str = "concat"


@dataclass
class CpuOp:
    """A cut-out ONNX subgraph the accelerator lacks, run on the host by
    onnxruntime (CPU fallback). ``model`` is a serialized ONNX model whose
    inputs and outputs are the int8 tensors named in ``inputs``/``outputs``
    in ONNX layout (NCHW, or [1, K] where ir.Tensor.onnx_shape says so);
    it dequantizes at its inputs and quantizes at its outputs itself. The
    one exception: a graph output the CPU computes in float (ir.Tensor.dtype
    "float32") is a float32 output of the model. Run it with onnxruntime's
    graph optimizations off (the QDQ semantics; see golden.cpu_op)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    model: bytes
    onnx_nodes: list[str] = field(default_factory=list)
    kind: str = "cpu"
    # compute node -> why it runs on the host (the accelerator's refusal)
    reasons: dict = field(default_factory=dict)


@dataclass
class Graph:
    """Layers in a valid execution order over named tensors."""

    tensors: dict[str, Tensor]
    layers: list
    inputs: list[str]
    outputs: list[str]
    name: str = "model"
    # (node name, op_type) of every node of the source QDQ model, in model
    # order; frontend.placement_report reads it with the layers' onnx_nodes.
    onnx_nodes: list = field(default_factory=list)

    def layer_inputs(self, layer) -> list[str]:
        return list(layer.inputs) if hasattr(layer, "inputs") else [layer.input]

    def layer_outputs(self, layer) -> list[str]:
        return list(layer.outputs) if hasattr(layer, "outputs") else [layer.output]
