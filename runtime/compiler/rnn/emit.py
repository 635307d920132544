"""Encoding RNN core instructions in bulk with the numpy dtypes derived from
vfpga_isa.h (no field table here)."""

from __future__ import annotations

import numpy as np

from vfpga.driver import isa

from .model import L

# ----------------------------------------------------------------- encoding

def _flat_dtype(name: str) -> np.dtype:
    return isa._insn_dtype(name)


_FMT = {"mem": _flat_dtype("vf_insn_rnn_mem_t"), "matvec": _flat_dtype("vf_insn_rnn_matvec_t"),
        "gates": _flat_dtype("vf_insn_rnn_gates_t"), "marker": isa.FORMATS["marker"]}


class Emitter:
    """Collects instructions as field tuples and encodes them in bulk with
    the numpy dtypes derived from vfpga_isa.h (no field table here)."""

    def __init__(self):
        self.rows: dict[str, list] = {k: [] for k in _FMT}
        self.pos: dict[str, list] = {k: [] for k in _FMT}
        self.n = 0

    def _add(self, fmt, opcode, deps, flags, tag, fields):
        self.rows[fmt].append(((opcode, deps, flags, tag), *fields))
        self.pos[fmt].append(self.n)
        self.n += 1

    def marker(self, op, frame_id=0, layer=0):
        self._add("marker", op, 0, 0, layer, (frame_id, layer))

    def mem(self, op, buffer, dram, buf, row_bytes, rows=1, planes=1, row_stride=0, plane_stride=0, deps=0, tag=0):
        self._add("mem", op, deps, 0, tag, (dram, row_stride, plane_stride, buf, row_bytes, rows, planes, buffer,
                                            (0, 0, 0)))

    def matvec(self, wgt, stride, vec, acc, param, rows, cols, deps=0, tag=0):
        self._add("matvec", L.VF_RNN_OP_MATVEC, deps, L.VF_RNN_MV_INIT, tag, (wgt, stride, vec, acc, param, rows, cols))

    def gates(self, g: dict, deps=0, tag=0):
        self._add("gates", L.VF_RNN_OP_GATES, deps, 0, tag, (
            g["acc_x"], g["acc_h"], g["param_x"], g["param_h"], g["state_c"], g["state_h"], g["out_addr"], g["n"],
            g["gate_stride"], g["sig_addr"], g["tanh_addr"], g["out_mult"], g["out_shift"], g["out_zp"], g["cell"], 0))

    def encode(self) -> np.ndarray:
        out = np.zeros((self.n, isa.INSN_BYTES), np.uint8)
        for fmt, rows in self.rows.items():
            if rows:
                arr = np.array(rows, dtype=_FMT[fmt])
                out[np.array(self.pos[fmt])] = arr.view(np.uint8).reshape(-1, isa.INSN_BYTES)
        return out
