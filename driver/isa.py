"""The ISA as Python sees it, derived from hls/include/vfpga_isa.h.

The header is compiled into ``vfpga.driver._isa`` by cffi in API mode, so the
C compiler has checked every layout used here. Numpy dtypes for each
instruction format are built from cffi's field table: no field is named in
Python except where an instruction is filled in.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

from vfpga.driver._isa import ffi, lib

INSN_BYTES = lib.VF_INSN_BYTES
ISA_VERSION = lib.VF_ISA_VERSION


def _constants(prefix: str) -> dict[str, int]:
    return {name[len(prefix):]: getattr(lib, name) for name in dir(lib) if name.startswith(prefix)}


OPCODES = {k: v for k, v in _constants("VF_OP_").items() if k != "COUNT"}
OPCODE_NAMES = {v: k for k, v in OPCODES.items()}
FAULTS = _constants("VF_FAULT_")
FAULT_NAMES = {v: k for k, v in FAULTS.items()}

_PRIMITIVES = {
    "uint8_t": "u1", "int8_t": "i1", "uint16_t": "<u2", "int16_t": "<i2",
    "uint32_t": "<u4", "int32_t": "<i4", "uint64_t": "<u8", "int64_t": "<i8",
}


def _dtype_of(ctype) -> np.dtype:
    if ctype.kind == "primitive":
        return np.dtype(_PRIMITIVES[ctype.cname])
    if ctype.kind == "array":
        return np.dtype((_dtype_of(ctype.item), (ctype.length,)))
    if ctype.kind == "struct":
        names, formats, offsets = [], [], []
        for name, field in ctype.fields:
            names.append(name)
            formats.append(_dtype_of(field.type))
            offsets.append(field.offset)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": ffi.sizeof(ctype)})
    raise TypeError(f"no numpy equivalent for {ctype.cname}")


# struct's standard-size codes ("<"): numpy's own chars name native C types, whose sizes differ
_STRUCT_CODES = {(kind, 1 << n): code for kind, codes in (("u", "BHIQ"), ("i", "bhiq")) for n, code in enumerate(codes)}


def struct_of(dtype: np.dtype) -> struct.Struct:
    """A struct.Struct of a structured dtype of scalar fields (little-endian,
    its padding as pad bytes; values in ``dtype.names`` order), for a host
    path that packs or unpacks one record: one C call, where a numpy record
    view takes several."""
    fmt, at = "<", 0
    for name in dtype.names:  # (a header's struct: its fields in the order of their offsets, as packed)
        field, offset = dtype.fields[name][:2]
        code = _STRUCT_CODES.get((field.kind, field.itemsize))
        if code is None or offset < at:
            raise TypeError(f"field {name!r} of {dtype} is not a scalar integer after the one before it")
        fmt += "x" * (offset - at) + code
        at = offset + field.itemsize
    return struct.Struct(fmt + "x" * (dtype.itemsize - at))


def _insn_dtype(struct_name: str) -> np.dtype:
    d = _dtype_of(ffi.typeof(struct_name))
    # Every format occupies a whole instruction slot.
    return np.dtype({"names": d.names, "formats": [d.fields[n][0] for n in d.names],
                     "offsets": [d.fields[n][1] for n in d.names], "itemsize": INSN_BYTES})


HEAD = _dtype_of(ffi.typeof("vf_insn_head_t"))
FORMATS = {
    "mem": _insn_dtype("vf_insn_mem_t"),
    "linear": _insn_dtype("vf_insn_linear_t"),
    "conv": _insn_dtype("vf_insn_conv_t"),
    "pool": _insn_dtype("vf_insn_pool_t"),
    "add": _insn_dtype("vf_insn_add_t"),
    "lut": _insn_dtype("vf_insn_lut_t"),
    "mul": _insn_dtype("vf_insn_mul_t"),
    "marker": _insn_dtype("vf_insn_marker_t"),
}
# Which format each opcode uses (mirrors the union members in the header).
FORMAT_OF = {
    OPCODES["NOP"]: "marker",
    OPCODES["LOAD_TILE"]: "mem",
    OPCODES["SAVE"]: "mem",
    OPCODES["LOAD_LINEAR"]: "linear",
    OPCODES["CONV"]: "conv",
    OPCODES["POOL"]: "pool",
    OPCODES["ADD"]: "add",
    OPCODES["LUT"]: "lut",
    OPCODES["MUL"]: "mul",
    OPCODES["FRAME"]: "marker",
    OPCODES["BARRIER"]: "marker",
    OPCODES["END"]: "marker",
}
assert ffi.sizeof("vf_insn_t") == INSN_BYTES
assert set(FORMAT_OF) == set(OPCODES.values()), "an opcode in vfpga_isa.h has no format here"

DEP = _constants("VF_DEP_")
CONV_ACC_INIT = lib.VF_CONV_ACC_INIT
CONV_ACC_FINAL = lib.VF_CONV_ACC_FINAL
POOL_AVG = lib.VF_POOL_AVG
POOL_COUNT_PAD = lib.VF_POOL_COUNT_PAD
LUT_SRC_OBUF = lib.VF_LUT_SRC_OBUF
LUT_ENTRIES = lib.VF_LUT_ENTRIES
MUL_BCAST = lib.VF_MUL_BCAST
BUF_WGT = lib.VF_BUF_WGT
BUF_PARAM = lib.VF_BUF_PARAM
PARAM_ENTRY_WORDS = lib.VF_PARAM_ENTRY_WORDS


# Level-1 dispatch program entries (vf_dispatch_t).
DISPATCH = _dtype_of(ffi.typeof("vf_dispatch_t"))
DISPATCH_OPS = _constants("VF_DISPATCH_")

# RNN core opcodes (the RNN section of the header) and their formats.
RNN_OPCODES = {k: v for k, v in _constants("VF_RNN_OP_").items() if k not in ("FIRST", "LIMIT")}
RNN_FORMATS = {
    "mem": _insn_dtype("vf_insn_rnn_mem_t"),
    "matvec": _insn_dtype("vf_insn_rnn_matvec_t"),
    "gates": _insn_dtype("vf_insn_rnn_gates_t"),
}

# The level-1 dispatcher's tenant interface: request ring entries, completion
# records, tenant status, mask results, record status, its own fault codes.
REQUEST = _dtype_of(ffi.typeof("vf_disp_request_t"))
COMPLETION = _dtype_of(ffi.typeof("vf_disp_completion_t"))
# the same two layouts as structs: the driver packs an entry and unpacks a record on every request
REQUEST_STRUCT, COMPLETION_STRUCT = struct_of(REQUEST), struct_of(COMPLETION)
TENANT_CONTROL = {"ENABLE": lib.VF_TENANT_ENABLE, "STRIPED": lib.VF_TENANT_STRIPED}  # control register bits
TENANT_STATUS = {v: k for k, v in _constants("VF_TENANT_").items() if k not in TENANT_CONTROL}
MASK_RESULTS = {v: k for k, v in _constants("VF_MASK_").items()}
RECORD_STATUS = {v: k for k, v in _constants("VF_CPL_").items()}
DISPATCH_FAULTS = _constants("VF_DFAULT_")
FAULT_NAMES.update({v: k for k, v in DISPATCH_FAULTS.items()})


def encode(opcode: str, deps: int = 0, flags: int = 0, tag: int = 0, **fields) -> bytes:
    """One instruction as its 64 bytes. Unknown field names raise."""
    op = OPCODES[opcode]
    dt = FORMATS[FORMAT_OF[op]]
    rec = np.zeros((), dtype=dt)
    rec["head"]["opcode"] = op
    rec["head"]["deps"] = deps
    rec["head"]["flags"] = flags
    rec["head"]["tag"] = tag
    for name, value in fields.items():
        if name not in dt.names or name in ("head", "reserved"):
            raise KeyError(f"{opcode} has no field {name!r}; fields: {', '.join(dt.names[1:])}")
        if not _fits(dt.fields[name][0], value):
            raise ValueError(f"{opcode}.{name} = {value} does not fit {dt.fields[name][0]}")
        rec[name] = value
    return rec.tobytes()


def _fits(dtype: np.dtype, value) -> bool:
    lo, hi = _limits(dtype)
    return lo <= int(value) <= hi


@functools.cache
def _limits(dtype: np.dtype) -> tuple[int, int]:
    """(min, max) of an integer field type (np.iinfo builds a new object each call)."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def decode(raw) -> dict:
    """Fields of one instruction (64 bytes) as a dict, opcode named."""
    buf = bytes(raw)
    if len(buf) != INSN_BYTES:
        raise ValueError(f"an instruction is {INSN_BYTES} bytes, got {len(buf)}")
    op = buf[0]
    if op not in FORMAT_OF:
        return {"opcode": f"<invalid {op}>"}
    rec = np.frombuffer(buf, dtype=FORMATS[FORMAT_OF[op]])[0]
    out = {"opcode": OPCODE_NAMES[op], "deps": int(rec["head"]["deps"]),
           "flags": int(rec["head"]["flags"]), "tag": int(rec["head"]["tag"])}
    for name in rec.dtype.names:
        if name not in ("head", "reserved"):
            out[name] = int(rec[name])
    return out


def opcodes_of(program: np.ndarray) -> np.ndarray:
    """Opcode of every instruction of a program given as uint8 [n, 64]."""
    return program.reshape(-1, INSN_BYTES)[:, 0]


# ---- CONV weights: beat-major words (the CONV comment in vfpga_isa.h) ----------

def conv_word_bytes(icp: int, ocp: int) -> int:
    """One MAC beat's weights, ICP * OCP bytes: the alignment of a CONV's
    wgt_addr and the WBUF partition factor."""
    return icp * ocp


def conv_weight_bytes(groups: int, cin_g: int, cout_g: int, kh: int, kw: int, icp: int, ocp: int) -> int:
    """WBUF bytes of a CONV's beat-major weights, padding included."""
    if cin_g == 1:
        return -(-groups * cout_g // ocp) * ocp * kh * kw
    return groups * -(-cout_g // ocp) * kh * kw * -(-cin_g // icp) * icp * ocp


def pack_conv_weights(w: np.ndarray, groups: int, icp: int, ocp: int) -> np.ndarray:
    """The int8 weights ``w[oc][ky][kx][cin_g]`` (oc = g * cout_g + o) of one
    CONV as the core reads them: beat-major words, zero in the padding.
    Returns a flat int8 array of :func:`conv_weight_bytes` bytes."""
    w = np.asarray(w, dtype=np.int8)
    if w.ndim != 4 or groups < 1 or w.shape[0] % groups:
        raise ValueError(f"CONV weights of shape {w.shape} are not [groups * cout_g][kh][kw][cin_g] "
                         f"for {groups} groups")
    oct_, kh, kw, cin_g = w.shape
    cout_g = oct_ // groups
    if cin_g == 1:
        # lanes across groups: per block of ocp channels, per tap, one row of ocp bytes
        nb = -(-oct_ // ocp)
        rows = np.zeros((nb * ocp, kh * kw), np.int8)
        rows[:oct_] = w.reshape(oct_, kh * kw)
        return np.ascontiguousarray(rows.reshape(nb, ocp, kh * kw).transpose(0, 2, 1)).reshape(-1)
    nob, nib = -(-cout_g // ocp), -(-cin_g // icp)
    full = np.zeros((groups, nob * ocp, kh, kw, nib * icp), np.int8)
    full[:, :cout_g, :, :, :cin_g] = w.reshape(groups, cout_g, kh, kw, cin_g)
    # [g][ob][o][ky][kx][ib][i] -> [g][ob][ky][kx][ib][o][i]
    words = full.reshape(groups, nob, ocp, kh, kw, nib, icp).transpose(0, 1, 3, 4, 5, 2, 6)
    return np.ascontiguousarray(words).reshape(-1)
