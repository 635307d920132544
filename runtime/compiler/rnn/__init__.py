"""RNN compiler: ONNX LSTM / GRU -> RNN core frames, a tenant segment image
and, for any core count, a level-1 dispatch program.

Why it looks like this
----------------------
The RNN core (hls/rnn_core.cpp, RNN section of vfpga_isa.h) runs one frame
per call: loads, matrix-vector products, the gate unit, saves. A recurrent
layer is sequential in time but parallel along the hidden units, so the
static stage splits the hidden dimension into ``v`` slices for every
``v`` in :func:`vfpga.runtime.compiler.static.core_counts` (the "variants") and
emits, per timestep, one frame per slice; a barrier separates timesteps
because every slice needs the whole h_{t-1} (exchanged through DDR). GRU with
linear_before_reset = 0 needs r * h_{t-1} of *all* units before its
candidate gate, so its timestep is two phases (r * h, then the rest), each
with its own barrier. :func:`plan_rnn` (the dynamic stage) picks per layer
the variant that is fastest on k cores by the cycle model and writes the
vf_dispatch_t program; nothing is recompiled for a new k (a variant with
more slices than cores folds onto them, slot = frame index mod k).

Weights: per row symmetric int8 (vfpga.runtime.hw.rnn_golden.quantize), x and h parts
of every gate with their own PARAM entry. A variant whose slice (weights,
PARAM, tables) fits the core's buffers keeps them *resident*: one preload
frame per slot at the start of each layer and direction, then timestep frames
that move only x_t, h_{t-1}, the state and the outputs. Otherwise the
variant *streams*: every frame loads its slice's weights in chunks through
the two halves of WBUF (load of chunk q+1 overlaps the products of chunk q).
Resident plans assume a slot stays on the same physical core for the whole
request (see ``RnnPlan.resident``); ``compile_rnn(resident=False)`` makes
every frame self-contained.

Numerics: inputs int8 (scale from calibration), h int8 for the products
(scale max|h| / 127 from calibration), Q.15 state; the last layer's outputs
are read from the Q.15 state history, so int8 rounding of h only affects the
products, not the reported Y / Y_h / Y_c.

Segment layout (every address a segment offset, 64-byte aligned):

    [ constants: tables, per layer and direction W, R, PARAM x / h
    | request data: x, per layer h0 (int8 and Q.15), c0
    | work: per layer Y int8 [T, B, D, H], Y_h / Y_c Q.15 [D, B, H],
      r*h scratch and saved accumulators (GRU), h history [T, B, D, H]
    | frames of every variant ]

Supported: LSTM and GRU (opsets 7-22), forward / reverse / bidirectional,
initial_h / initial_c, sequence_lens (a constant: frames are per timestep),
batch >= 1, layout 0 and 1, GRU linear_before_reset 0 and 1, stacked layers
joined by layout-only ops (Squeeze, Transpose, Reshape, ...), anything after
the last layer (Gemm / MatMul heads ...) on the host CPU through onnxruntime.
Not supported (RnnCompileError naming node and attribute): peepholes that are
not all zero, activations other than the defaults, activation_alpha/beta,
clip, input_forget, ops before the first layer.

Where things are: :mod:`.graph` reads the ONNX graph, :mod:`.frames` tiles
and emits the frames (:mod:`.emit` encodes them), :mod:`.compile` is the
static stage, :mod:`.plan` the dynamic stage, :mod:`.host` the request image
and outputs, :mod:`.csim` runs a model on the RNN core's C-simulation,
:mod:`.batch` the batched variants one tenant's dynamic batching runs on.
"""

from .batch import BatchedRnn, batch_sizes, compile_batched, split_values, stack_feeds
from .compile import compile_rnn, scales_of
from .csim import RnnCoreSim, core_module
from .graph import layout0_equivalent, random_feeds
from .host import head_outputs, output_span, read_outputs, request_image, rnn_values
from .model import CELLS, FRAME_DTYPE, CompiledRnn, Geometry, RnnCompileError, RnnLayer, Tiling
from .plan import RnnPlan, plan_rnn

__all__ = ["CELLS", "FRAME_DTYPE", "BatchedRnn", "CompiledRnn", "Geometry", "RnnCompileError", "RnnCoreSim", "RnnLayer",
           "RnnPlan", "Tiling", "batch_sizes", "compile_batched", "compile_rnn", "core_module", "head_outputs",
           "layout0_equivalent", "output_span", "plan_rnn", "random_feeds", "read_outputs", "request_image", "rnn_values", "scales_of",
           "split_values", "stack_feeds"]
