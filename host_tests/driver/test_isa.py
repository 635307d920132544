"""The Python view of the ISA is derived from hls/include/vfpga_isa.h."""

import os
import re

import numpy as np
import pytest
from harness import REPO_ROOT as ROOT

from vfpga.driver import isa
from vfpga.driver._isa import ffi

HEADER = os.path.join(ROOT, "hls", "include", "vfpga_isa.h")


def test_every_opcode_of_the_header_has_a_format():
    with open(HEADER) as f:
        defined = dict(re.findall(r"#define VF_OP_(\w+) (\d+)", f.read()))
    defined.pop("COUNT")
    assert {k: int(v) for k, v in defined.items()} == isa.OPCODES
    assert set(isa.FORMAT_OF) == set(isa.OPCODES.values())


@pytest.mark.parametrize("fmt,ctype", [("mem", "vf_insn_mem_t"), ("linear", "vf_insn_linear_t"),
                                       ("conv", "vf_insn_conv_t"), ("pool", "vf_insn_pool_t"),
                                       ("add", "vf_insn_add_t"), ("marker", "vf_insn_marker_t")])
def test_numpy_layout_matches_the_compiled_struct(fmt, ctype):
    dt = isa.FORMATS[fmt]
    assert dt.itemsize == isa.INSN_BYTES == 64
    for name, field in ffi.typeof(ctype).fields:
        assert dt.fields[name][1] == field.offset
        assert dt.fields[name][0].itemsize == ffi.sizeof(field.type)


@pytest.mark.parametrize("struct, dtype, ctype", [("REQUEST_STRUCT", "REQUEST", "vf_disp_request_t"),
                                                   ("COMPLETION_STRUCT", "COMPLETION", "vf_disp_completion_t")])
def test_the_ring_structs_read_and_write_what_c_does(struct, dtype, ctype):
    """The driver packs ring entries and unpacks records with struct: the
    same bytes as the compiled C struct's fields, in dtype.names order."""
    st, dt = getattr(isa, struct), getattr(isa, dtype)
    assert st.size == dt.itemsize == ffi.sizeof(ctype)
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, dt.itemsize, dtype=np.uint8).tobytes()
    c = ffi.new(f"{ctype} *")
    ffi.memmove(c, raw, len(raw))
    values = st.unpack_from(raw)
    assert values == tuple(getattr(c, name) for name in dt.names) == np.frombuffer(raw, dt)[0].item()
    buf = bytearray(len(raw))
    st.pack_into(buf, 0, *values)
    assert bytes(buf) == raw


def test_struct_of_keeps_padding_and_refuses_what_it_cannot_pack():
    dt = np.dtype({"names": ["a", "b"], "formats": ["<u8", "<i2"], "offsets": [0, 12], "itemsize": 16})
    assert isa.struct_of(dt).format == "<Qxxxxhxx"
    with pytest.raises(TypeError, match="'v' .* not a scalar integer"):
        isa.struct_of(np.dtype([("v", "<f4")]))
    with pytest.raises(TypeError, match="'b' .* after the one before it"):
        isa.struct_of(np.dtype({"names": ["a", "b"], "formats": ["<u4", "<u4"], "offsets": [4, 0]}))


def test_encode_writes_the_bytes_c_reads():
    raw = isa.encode("CONV", deps=isa.DEP["POP_PREV"], flags=isa.CONV_ACC_INIT, tag=7, in_addr=0x1234,
                     kh=11, sw=3, clip_lo=-5, clip_hi=99, param_addr=513)
    c = ffi.new("vf_insn_t *")
    ffi.memmove(c, raw, 64)
    assert c.head.opcode == isa.OPCODES["CONV"] and c.head.tag == 7
    assert (c.conv.in_addr, c.conv.kh, c.conv.sw, c.conv.clip_lo, c.conv.clip_hi, c.conv.param_addr) == \
        (0x1234, 11, 3, -5, 99, 513)


def test_decode_roundtrips_every_format():
    rng = np.random.default_rng(0)
    for name, op in isa.OPCODES.items():
        dt = isa.FORMATS[isa.FORMAT_OF[op]]
        fields = {}
        for f in dt.names:
            if f in ("head", "reserved"):
                continue
            info = np.iinfo(dt.fields[f][0])
            fields[f] = int(rng.integers(info.min, info.max, endpoint=True))
        d = isa.decode(isa.encode(name, tag=3, **fields))
        assert d["opcode"] == name and d["tag"] == 3
        assert {k: d[k] for k in fields} == fields


def test_encode_rejects_unknown_fields_and_out_of_range_values():
    with pytest.raises(KeyError, match="no field 'kernel'"):
        isa.encode("POOL", kernel=3)
    with pytest.raises(ValueError, match="kh = 300"):
        isa.encode("CONV", kh=300)
    with pytest.raises(ValueError, match="out_zp = -129"):
        isa.encode("CONV", out_zp=-129)


def test_decode_names_invalid_opcodes():
    assert isa.decode(bytes([200]) + bytes(63))["opcode"] == "<invalid 200>"
    with pytest.raises(ValueError, match="64 bytes"):
        isa.decode(bytes(10))


# ---- CONV weights: beat-major words ----------------------------------------------------

def _word_offset(groups, cin_g, cout_g, kh, kw, icp, ocp, oc, ky, kx, i):
    """The CONV comment of vfpga_isa.h, term by term."""
    if cin_g == 1:
        return ocp * (((oc // ocp) * kh + ky) * kw + kx) + oc % ocp
    g, o = divmod(oc, cout_g)
    nob, nib = -(-cout_g // ocp), -(-cin_g // icp)
    word = (((g * nob + o // ocp) * kh + ky) * kw + kx) * nib + i // icp
    return icp * ocp * word + (o % ocp) * icp + i % icp


@pytest.mark.parametrize("groups, cin_g, cout_g, kh, kw, icp, ocp", [
    (1, 3, 64, 3, 3, 16, 16),    # a first conv: 3 input channels padded to a block of 16
    (1, 20, 9, 2, 3, 8, 16),     # partial blocks both ways, icp != ocp
    (3, 5, 18, 1, 2, 16, 16),    # grouped: each group its own blocks
    (40, 1, 1, 3, 3, 16, 16),    # depthwise: lanes across groups, 40 = 2.5 blocks
    (4, 1, 3, 2, 2, 8, 16),      # channel multiplier
])
def test_pack_conv_weights_follows_the_isa(groups, cin_g, cout_g, kh, kw, icp, ocp):
    rng = np.random.default_rng(groups * 100 + cin_g)
    w = rng.integers(-128, 128, size=(groups * cout_g, kh, kw, cin_g), dtype=np.int8)
    packed = isa.pack_conv_weights(w, groups, icp, ocp)
    assert packed.dtype == np.int8 and packed.size == isa.conv_weight_bytes(groups, cin_g, cout_g, kh, kw, icp, ocp)
    used = np.zeros(packed.size, bool)
    for oc, ky, kx, i in np.ndindex(*w.shape):
        at = _word_offset(groups, cin_g, cout_g, kh, kw, icp, ocp, oc, ky, kx, i)
        assert packed[at] == w[oc, ky, kx, i]
        used[at] = True
    assert used.sum() == w.size and not packed[~used].any()  # padding is zero
    if cin_g > 1:
        assert packed.size % isa.conv_word_bytes(icp, ocp) == 0


def test_pack_conv_weights_rejects_a_bad_shape():
    with pytest.raises(ValueError, match="not .*groups \\* cout_g.* for 3 groups"):
        isa.pack_conv_weights(np.zeros((4, 1, 1, 2), np.int8), 3, 16, 16)
    with pytest.raises(ValueError, match="shape"):
        isa.pack_conv_weights(np.zeros((4, 2), np.int8), 1, 16, 16)
