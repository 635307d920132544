"""The RNN compiler's data: the recurrent layers it read, the geometry and
tiling variants of the RNN cores, and the compiled model (segment image,
frames of every variant, phases)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from vfpga.driver import isa
from vfpga.runtime.hw import rnn_golden as rg

ALIGN = 64
L = isa.lib
CELLS = {"LSTM": "lstm", "GRU": "gru"}
DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
# ``cycles``: the frame alone on a core; ``ddr_bytes``: what it moves (both
# from the RNN cycle model).
FRAME_DTYPE = np.dtype([("variant", np.int16), ("phase", np.int32), ("slot", np.int16), ("offset", np.int64),
                        ("n_insns", np.int32), ("cycles", np.int64), ("ddr_bytes", np.int64)])


class RnnCompileError(ValueError):
    """A model, node or size the RNN compiler cannot map onto the RNN cores."""


def align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a



@dataclass
class RnnLayer:
    """One ONNX LSTM/GRU node as the compiler sees it (ONNX values)."""

    node: str
    op: str  # "LSTM" | "GRU"
    hidden: int
    input_size: int
    directions: int  # 1 or 2
    reverse: bool  # direction == "reverse"
    layout: int
    lbr: int
    w: np.ndarray  # [D, G*H, I]
    r: np.ndarray  # [D, G*H, H]
    b: np.ndarray  # [D, 2*G*H]
    seq_lens: np.ndarray | None  # [B] int or None
    h0_name: str | None  # runtime input name or None
    c0_name: str | None
    h0: np.ndarray | None  # constant initial state [D, B, H] or None
    c0: np.ndarray | None
    x_name: str
    outputs: list  # ONNX output names (Y, Y_h, Y_c), '' if unused
    # quantization, filled by calibration
    x_scale: float = 1 / 127
    h_scale: float = 1 / 127
    params: list = field(default_factory=list)  # rg.RnnParams per direction
    # placement, filled by compile_rnn
    seq_steps: int = 0
    seq_batch: int = 0
    addr: dict = field(default_factory=dict)
    history: bool = False  # the Q.15 h of every step is saved (Y read at full precision)

    @property
    def cell(self) -> str:
        return CELLS[self.op]

    @property
    def gates(self) -> int:
        return rg.LSTM_GATES if self.op == "LSTM" else rg.GRU_GATES

    def direction_reversed(self, d: int) -> bool:
        return d == 1 or self.reverse





@dataclass
class Geometry:
    """The RNN core's buffers and arrays (board config "rnn_core")."""

    rows: int
    cols: int
    lanes: int
    wbuf: int
    vbuf: int
    acc: int
    param: int
    state: int
    act: int
    segments: int
    step_log2: int
    count: int

    @classmethod
    def of(cls, cfg: dict) -> Geometry:
        r = cfg.get("rnn_core")
        if not r or not r.get("count"):
            raise RnnCompileError(f"board {cfg.get('name')!r} has no RNN cores")
        return cls(r["rows"], r["cols"], r["lanes"], r["wbuf_bytes"], r["vbuf_bytes"], r["acc_words"],
                   r["param_entries"], r["state_words"], r["act_words"], r["act_segments"], r["act_step_log2"],
                   r["count"])


@dataclass
class Tiling:
    """How one frame of a v-slice variant uses the core: sub-slices of m
    units, batch groups of bg items, resident or streamed weights."""

    v: int
    cuts: list
    m: int
    bg: int
    resident: bool


@dataclass
class Phase:
    """One barrier-delimited group of frames (a layer-direction preload, or
    one timestep / GRU half-step): per variant, the frames' rows in
    ``CompiledRnn.frames``."""

    layer: int
    direction: int
    step: int  # -1: preload
    kind: str  # "preload" | "step" | "rh" (GRU first half) | "gru2"
    frames: dict = field(default_factory=dict)  # variant v -> array of frame row indices


@dataclass
class CompiledRnn:
    board: str
    config: dict
    model: onnx.ModelProto
    layers: list
    tilings: list  # per layer: {v: Tiling}
    phases: list
    frames: np.ndarray  # FRAME_DTYPE
    program: np.ndarray  # uint8 [n, 64]
    program_offset: int
    consts: bytes
    const_offset: int
    addr: dict  # named segment offsets
    steps: int
    batch: int
    input_name: str
    input_scale: float
    post: onnx.ModelProto | None  # host subgraph after the RNN chain
    post_inputs: list
    outputs: list
    segment_size: int
    variants: list

    def segment_image(self) -> dict[int, bytes]:
        """Bytes uploaded once at deploy: {segment offset: bytes}."""
        return {self.const_offset: self.consts, self.program_offset: self.program.tobytes()}

    @property
    def n_insns(self) -> int:
        return self.program.shape[0]
