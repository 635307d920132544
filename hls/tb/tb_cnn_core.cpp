/*
 * C-simulation testbench of the vfpga CNN core (hls/cnn_core.cpp and the HLS
 * top hls/cnn_core_top.cpp).
 *
 * Programs are built by filling vf_insn_t structs, placed in a tenant segment
 * and run through vf_cnn_core_step(). A small reference model written here
 * from the text of vfpga_isa.h executes the same programs in program order;
 * every on-chip buffer and the whole segment are compared after each run, and
 * the segment is surrounded by guard bytes (canaries, and under ASan poisoned
 * memory) so that any access outside [0, seg_limit) is caught. Iteration
 * counts are checked against the formulas of the cycle-model contract.
 *
 * Runs with a fixed seed; exit status 0 when every test passes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "vfpga_cnn_core.h"
#include "tb_common.h"

/* the synthesizable top (hls/cnn_core_top.cpp) */
tb_core_top_fn vf_cnn_core_top;

/* ========================================================================== */
/* Instruction builders                                                        */
/* ========================================================================== */

static vf_insn_t blank(uint8_t opcode, uint8_t deps = 0, uint16_t flags = 0)
{
    return tb_blank<vf_insn_t>(opcode, deps, flags);
}

static vf_insn_t mk_marker(uint8_t opcode, uint32_t frame_id = 0) { return tb_marker<vf_insn_t>(opcode, frame_id, 0); }

static vf_insn_t mk_mem(uint8_t opcode, uint32_t dram, uint32_t buf, uint32_t h, uint32_t w, uint32_t ps,
                        uint32_t ch, int32_t y0, int32_t x0, uint32_t th, uint32_t tw, int8_t pad = 0,
                        uint8_t deps = 0)
{
    return tb_mem(opcode, deps, dram, buf, h, w, ps, ch, y0, x0, th, tw, pad);
}

static vf_insn_t mk_linear(uint32_t dram, uint32_t buf, uint32_t n, uint8_t buffer, uint8_t deps = 0)
{
    return tb_linear(deps, dram, buf, n, buffer);
}

struct ConvShape {
    uint32_t groups, cin_g, cout_g, kh, kw, sh, sw, in_h, in_w, out_h, out_w;
};

static vf_insn_t mk_conv(const ConvShape &s, uint16_t flags, uint32_t in_addr, uint32_t wgt_addr, uint32_t out_addr,
                         uint32_t acc_addr, uint32_t param_addr, int8_t zp = 0, int8_t lo = -128, int8_t hi = 127,
                         uint8_t deps = 0)
{
    vf_insn_t i = blank(VF_OP_CONV, deps, flags);
    i.conv.in_addr = in_addr;
    i.conv.wgt_addr = wgt_addr;
    i.conv.out_addr = out_addr;
    i.conv.acc_addr = acc_addr;
    i.conv.param_addr = (uint16_t)param_addr;
    i.conv.in_h = (uint16_t)s.in_h;
    i.conv.in_w = (uint16_t)s.in_w;
    i.conv.out_h = (uint16_t)s.out_h;
    i.conv.out_w = (uint16_t)s.out_w;
    i.conv.groups = (uint16_t)s.groups;
    i.conv.cin_g = (uint16_t)s.cin_g;
    i.conv.cout_g = (uint16_t)s.cout_g;
    i.conv.kh = (uint8_t)s.kh;
    i.conv.kw = (uint8_t)s.kw;
    i.conv.sh = (uint8_t)s.sh;
    i.conv.sw = (uint8_t)s.sw;
    i.conv.out_zp = zp;
    i.conv.clip_lo = lo;
    i.conv.clip_hi = hi;
    return i;
}

/* ========================================================================== */
/* Reference model (from the text of vfpga_isa.h, program order)               */
/* ========================================================================== */

/* CONV weights: beat-major words (tb_common.h) */
static size_t ref_wgt_offset(uint32_t groups, uint32_t cin_g, uint32_t cout_g, uint32_t kh, uint32_t kw, size_t oc,
                             size_t ky, size_t kx, size_t i)
{
    (void)groups;
    return tb_conv_wgt_offset(cin_g, cout_g, kh, kw, oc, ky, kx, i);
}

static size_t wgt_bytes(const ConvShape &s) { return tb_conv_wgt_bytes(s.groups, s.cin_g, s.cout_g, s.kh, s.kw); }

static std::vector<int8_t> pack_wgt(const ConvShape &s, const std::vector<int8_t> &w)
{
    return tb_pack_conv_wgt(s.groups, s.cin_g, s.cout_g, s.kh, s.kw, w);
}

static uint32_t word_align(uint32_t a) { return (a + VF_CONV_WORD - 1) / VF_CONV_WORD * VF_CONV_WORD; }

static int64_t ref_rshift_round(int64_t v, int s) { return s == 0 ? v : (v + ((int64_t)1 << (s - 1))) >> s; }
static int64_t ref_rdiv(int64_t n, int64_t d)
{
    const int64_t a = n < 0 ? -n : n;
    const int64_t q = (a + d / 2) / d;
    return n < 0 ? -q : q;
}
static int8_t ref_clamp(int64_t v, int lo, int hi) { return (int8_t)(v < lo ? lo : v > hi ? hi : v); }
static int32_t wrap32(int64_t v) { return (int32_t)(uint32_t)(uint64_t)v; }

struct Mem {
    std::vector<int8_t> seg, ibuf, wbuf, obuf;
    std::vector<int32_t> acc, param;
};

static void ref_exec(Mem &m, const vf_insn_t &in)
{
    switch (in.head.opcode) {
    case VF_OP_LOAD_TILE: {
        const vf_insn_mem_t &t = in.mem;
        for (int r = 0; r < t.tile_h; ++r)
            for (int c = 0; c < t.tile_w; ++c)
                for (int k = 0; k < t.channels; ++k) {
                    const long y = t.y0 + r, x = t.x0 + c;
                    int8_t v = t.pad_value;
                    if (y >= 0 && y < t.height && x >= 0 && x < t.width)
                        v = m.seg.at(t.dram_addr + ((size_t)y * t.width + (size_t)x) * t.pixel_stride + k);
                    m.ibuf.at(t.buf_addr + ((size_t)r * t.tile_w + c) * t.channels + k) = v;
                }
        break;
    }
    case VF_OP_SAVE: {
        const vf_insn_mem_t &t = in.mem;
        const int sy = t.step_y > 1 ? t.step_y : 1, sx = t.step_x > 1 ? t.step_x : 1;
        for (int r = 0; r < t.tile_h; ++r)
            for (int c = 0; c < t.tile_w; ++c)
                for (int k = 0; k < t.channels; ++k)
                    m.seg.at(t.dram_addr +
                             ((size_t)(t.y0 + r * sy) * t.width + (size_t)(t.x0 + c * sx)) * t.pixel_stride + k) =
                        m.obuf.at(t.buf_addr + ((size_t)r * t.tile_w + c) * t.channels + k);
        break;
    }
    case VF_OP_LOAD_LINEAR: {
        const vf_insn_linear_t &l = in.linear;
        if (l.buffer == VF_BUF_WGT) {
            for (uint32_t k = 0; k < l.nbytes; ++k)
                m.wbuf.at(l.buf_addr + k) = m.seg.at(l.dram_addr + k);
        } else {
            uint8_t *p = (uint8_t *)m.param.data();
            for (uint32_t k = 0; k < l.nbytes; ++k) {
                if (l.buf_addr + k >= m.param.size() * 4)
                    abort();
                p[l.buf_addr + k] = (uint8_t)m.seg.at(l.dram_addr + k); /* little-endian host */
            }
        }
        break;
    }
    case VF_OP_CONV: {
        const vf_insn_conv_t &c = in.conv;
        const size_t ict = (size_t)c.groups * c.cin_g, oct = (size_t)c.groups * c.cout_g;
        for (int g = 0; g < c.groups; ++g)
            for (int oy = 0; oy < c.out_h; ++oy)
                for (int ox = 0; ox < c.out_w; ++ox)
                    for (int o = 0; o < c.cout_g; ++o) {
                        const size_t oc = (size_t)g * c.cout_g + o;
                        const size_t pix = (size_t)oy * c.out_w + ox;
                        int64_t acc = (c.head.flags & VF_CONV_ACC_INIT)
                                          ? m.param.at((c.param_addr + oc) * 3)
                                          : m.acc.at(c.acc_addr + pix * oct + oc);
                        for (int ky = 0; ky < c.kh; ++ky)
                            for (int kx = 0; kx < c.kw; ++kx)
                                for (int i = 0; i < c.cin_g; ++i)
                                    acc += (int64_t)m.ibuf.at(c.in_addr +
                                                              (((size_t)oy * c.sh + ky) * c.in_w + (size_t)ox * c.sw +
                                                               kx) * ict +
                                                              (size_t)g * c.cin_g + i) *
                                           m.wbuf.at(c.wgt_addr + ref_wgt_offset(c.groups, c.cin_g, c.cout_g, c.kh,
                                                                                 c.kw, oc, ky, kx, i));
                        const int32_t a = wrap32(acc);
                        if (c.head.flags & VF_CONV_ACC_FINAL) {
                            const int32_t mult = m.param.at((c.param_addr + oc) * 3 + 1);
                            const int32_t shift = m.param.at((c.param_addr + oc) * 3 + 2);
                            m.obuf.at(c.out_addr + pix * oct + oc) =
                                ref_clamp(c.out_zp + ref_rshift_round((int64_t)a * mult, shift), c.clip_lo, c.clip_hi);
                        } else {
                            m.acc.at(c.acc_addr + pix * oct + oc) = a;
                        }
                    }
        break;
    }
    case VF_OP_POOL: {
        const vf_insn_pool_t &p = in.pool;
        const bool avg = p.head.flags & VF_POOL_AVG;
        for (int oy = 0; oy < p.out_h; ++oy)
            for (int ox = 0; ox < p.out_w; ++ox)
                for (int ch = 0; ch < p.channels; ++ch) {
                    int64_t v = 0, n = 0;
                    bool any = false;
                    for (int ky = 0; ky < p.kh; ++ky)
                        for (int kx = 0; kx < p.kw; ++kx) {
                            const int iy = oy * p.sh + ky, ix = ox * p.sw + kx;
                            if (!(iy >= p.valid_y0 && iy < p.valid_y1 && ix >= p.valid_x0 && ix < p.valid_x1))
                                continue;
                            const int64_t x =
                                m.ibuf.at(p.in_addr + ((size_t)iy * p.in_w + ix) * p.channels + ch) - p.in_zp;
                            if (avg)
                                v += x;
                            else
                                v = any ? (x > v ? x : v) : x;
                            any = true;
                            ++n;
                        }
                    int64_t count = 1;
                    if (avg)
                        count = (p.head.flags & VF_POOL_COUNT_PAD) ? (int64_t)p.kh * p.kw : n;
                    int8_t y;
                    if (count == 0)
                        y = ref_clamp(p.out_zp, p.clip_lo, p.clip_hi);
                    else
                        y = ref_clamp(p.out_zp + ref_rdiv(v * p.mult, count << p.shift), p.clip_lo, p.clip_hi);
                    m.obuf.at(p.out_addr + ((size_t)oy * p.out_w + ox) * p.channels + ch) = y;
                }
        break;
    }
    case VF_OP_ADD: {
        const vf_insn_add_t &a = in.add;
        for (uint32_t i = 0; i < a.length; ++i) {
            const int64_t v = (int64_t)(m.ibuf.at(a.a_addr + i) - a.a_zp) * a.a_mult +
                              (int64_t)(m.ibuf.at(a.b_addr + i) - a.b_zp) * a.b_mult;
            m.obuf.at(a.out_addr + i) = ref_clamp(a.out_zp + ref_rshift_round(v, a.shift), a.clip_lo, a.clip_hi);
        }
        break;
    }
    case VF_OP_LUT: {
        const vf_insn_lut_t &l = in.lut;
        const std::vector<int8_t> src = (l.head.flags & VF_LUT_SRC_OBUF) ? m.obuf : m.ibuf; /* a copy: in place */
        for (uint32_t i = 0; i < l.length; ++i)
            m.obuf.at(l.out_addr + i) = m.wbuf.at(l.table_addr + (size_t)(src.at(l.in_addr + i) + 128));
        break;
    }
    case VF_OP_MUL: {
        const vf_insn_mul_t &u = in.mul;
        for (uint32_t p = 0; p < u.pixels; ++p)
            for (uint32_t c = 0; c < u.channels; ++c) {
                const size_t i = (size_t)p * u.channels + c;
                const size_t j = (u.head.flags & VF_MUL_BCAST) ? c : i;
                const int64_t v = (int64_t)(m.ibuf.at(u.a_addr + i) - u.a_zp) * (m.ibuf.at(u.b_addr + j) - u.b_zp);
                m.obuf.at(u.out_addr + i) =
                    ref_clamp(u.out_zp + ref_rshift_round(v * u.mult, u.shift), u.clip_lo, u.clip_hi);
            }
        break;
    }
    default:
        break;
    }
}

/* The cycle-model contract. */
static uint64_t expect_iters(const vf_insn_t &i)
{
    switch (i.head.opcode) {
    case VF_OP_LOAD_TILE:
    case VF_OP_SAVE: {
        const vf_insn_mem_t &m = i.mem;
        if (m.pixel_stride == m.channels && m.step_x <= 1)
            return (uint64_t)m.tile_h * cdiv((uint64_t)m.tile_w * m.channels, VF_AXI_BYTES);
        return (uint64_t)m.tile_h * m.tile_w * cdiv(m.channels, VF_AXI_BYTES);
    }
    case VF_OP_LOAD_LINEAR:
        return cdiv(i.linear.nbytes, VF_AXI_BYTES);
    case VF_OP_CONV: {
        const vf_insn_conv_t &c = i.conv;
        const uint64_t base = (uint64_t)c.out_h * c.out_w * c.kh * c.kw;
        if (c.cin_g == 1)
            return base * cdiv((uint64_t)c.groups * c.cout_g, VF_OCP);
        return c.groups * base * cdiv(c.cin_g, VF_ICP) * cdiv(c.cout_g, VF_OCP);
    }
    case VF_OP_POOL:
        return (uint64_t)i.pool.out_h * i.pool.out_w * i.pool.kh * i.pool.kw * cdiv(i.pool.channels, VF_OCP);
    case VF_OP_ADD:
        return cdiv(i.add.length, VF_OCP);
    case VF_OP_LUT:
        return cdiv(i.lut.length, VF_OCP);
    case VF_OP_MUL:
        return (uint64_t)i.mul.pixels * cdiv(i.mul.channels, VF_OCP);
    default:
        return 0;
    }
}

/* ========================================================================== */
/* Environment: a segment with guards, the core's buffers, the model           */
/* ========================================================================== */

struct Env : TbSegment {
    std::vector<int8_t> ibuf, wbuf, obuf;
    std::vector<int32_t> acc, param;
    vf_cnn_buffers_t bufs;
    vf_cnn_state_t st;
    vf_cnn_counters_t cnt;
    std::vector<vf_insn_t> prog;
    uint32_t insn_offset;
    std::vector<uint32_t> iters;
    Mem model;

    explicit Env(uint32_t seg_limit)
        : TbSegment(seg_limit), ibuf(VF_IBUF_BYTES), wbuf(VF_WBUF_BYTES), obuf(VF_OBUF_BYTES), acc(VF_ACC_WORDS),
          param((size_t)VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS), insn_offset(0)
    {
        fill_random(ibuf.data(), ibuf.size());
        fill_random(wbuf.data(), wbuf.size());
        fill_random(obuf.data(), obuf.size());
        fill_random(acc.data(), acc.size() * 4);
        fill_random(param.data(), param.size() * 4);
        bufs.ibuf = ibuf.data();
        bufs.wbuf = wbuf.data();
        bufs.acc = acc.data();
        bufs.obuf = obuf.data();
        bufs.param = param.data();
        memset(&st, 0, sizeof st);
        memset(&cnt, 0, sizeof cnt);
    }

    /* place the program at a fresh aligned area */
    void place_program()
    {
        insn_offset = alloc((uint32_t)prog.size() * VF_INSN_BYTES);
        if (!prog.empty())
            memcpy(seg() + insn_offset, prog.data(), prog.size() * VF_INSN_BYTES);
        iters.assign(prog.size(), 0xdeadbeefu);
    }

    void snapshot()
    {
        model.seg.assign(seg(), seg() + limit);
        model.ibuf = ibuf;
        model.wbuf = wbuf;
        model.obuf = obuf;
        model.acc = acc;
        model.param = param;
    }

    /* reference: instructions [0, upto) in program order */
    void model_run(size_t upto)
    {
        for (size_t i = 0; i < upto && i < prog.size(); ++i) {
            if (prog[i].head.opcode == VF_OP_END)
                break;
            ref_exec(model, prog[i]);
        }
    }

    uint32_t step() { return vf_cnn_core_step(seg(), limit, insn_offset, (uint32_t)prog.size(), &bufs, &st, &cnt, iters.data()); }

    /* steps until END or a fault; returns the last step result */
    uint32_t run()
    {
        uint32_t r = VF_STEP_FRAME;
        for (size_t n = 0; n <= prog.size() + 1 && r == VF_STEP_FRAME; ++n)
            r = step();
        return r;
    }

    size_t size() const { return prog.size(); }
    vf_cnn_state_t &state() { return st; }
    vf_cnn_counters_t &counters() { return cnt; }

    bool same_as_model(bool report = true)
    {
        const TbMemPair c[] = {
            {"seg", seg(), model.seg.data(), limit, 1},
            {"ibuf", ibuf.data(), model.ibuf.data(), ibuf.size(), 1},
            {"wbuf", wbuf.data(), model.wbuf.data(), wbuf.size(), 1},
            {"obuf", obuf.data(), model.obuf.data(), obuf.size(), 1},
            {"acc", acc.data(), model.acc.data(), acc.size(), 4},
            {"param", param.data(), model.param.data(), param.size(), 4},
        };
        return tb_same_memories(c, sizeof c / sizeof c[0], report);
    }

    /* iters[] and counters against the formulas, for a run of the whole
     * program up to and including its END */
    void check_counts()
    {
        vf_cnn_counters_t want;
        memset(&want, 0, sizeof want);
        for (size_t i = 0; i < prog.size(); ++i) {
            const vf_insn_t &p = prog[i];
            ++want.insns;
            const uint64_t e = expect_iters(p);
            CHECK_EQ(iters[i], e);
            switch (p.head.opcode) {
            case VF_OP_LOAD_TILE: {
                want.load_iters += e;
                const vf_insn_mem_t &m = p.mem;
                for (long r = 0; r < m.tile_h; ++r)
                    for (long c = 0; c < m.tile_w; ++c) {
                        const long y = m.y0 + r, x = m.x0 + c;
                        if (y >= 0 && y < m.height && x >= 0 && x < m.width)
                            want.load_bytes += m.channels;
                    }
                break;
            }
            case VF_OP_LOAD_LINEAR:
                want.load_iters += e;
                want.load_bytes += p.linear.nbytes;
                break;
            case VF_OP_CONV:
                want.compute_iters += e;
                want.macs += (uint64_t)p.conv.groups * p.conv.out_h * p.conv.out_w * p.conv.kh * p.conv.kw *
                             p.conv.cin_g * p.conv.cout_g;
                break;
            case VF_OP_POOL:
            case VF_OP_ADD:
            case VF_OP_LUT:
            case VF_OP_MUL:
                want.compute_iters += e;
                break;
            case VF_OP_SAVE:
                want.save_iters += e;
                want.save_bytes += (uint64_t)p.mem.tile_h * p.mem.tile_w * p.mem.channels;
                break;
            case VF_OP_FRAME:
                ++want.frames;
                break;
            default:
                break;
            }
            if (p.head.opcode == VF_OP_END)
                break;
        }
        tb_check_counters(cnt, want);
    }

    void expect_clean_run() { tb_expect_clean_run(*this); }
    void expect_fault(uint32_t fault, uint32_t at, uint32_t opcode, uint64_t addr)
    {
        tb_expect_fault(*this, fault, at, opcode, addr);
    }
};

/* Random HWC tensor view (channels inside a wider pixel) in the segment. */
struct View {
    uint32_t addr, h, w, ps, ch;
};

static View alloc_view(Env &e, uint32_t h, uint32_t w, uint32_t ch, uint32_t extra)
{
    View v;
    v.h = h;
    v.w = w;
    v.ch = ch;
    v.ps = ch + extra;
    v.addr = e.alloc(h * w * v.ps + 16, 1) + rnd(16);
    return v;
}

/* Write params {bias, mult, shift} into the segment. */
static uint32_t put_params(Env &e, const std::vector<int32_t> &words)
{
    return e.put(words.data(), (uint32_t)words.size() * 4, 4);
}

/* ========================================================================== */
/* Tests                                                                       */
/* ========================================================================== */

static void test_geometry()
{
    vf_cnn_geometry_t g;
    memset(&g, 0xff, sizeof g);
    vf_cnn_core_geometry(&g);
    CHECK_EQ(g.icp, VF_ICP);
    CHECK_EQ(g.ocp, VF_OCP);
    CHECK_EQ(g.axi_bytes, VF_AXI_BYTES);
    CHECK_EQ(g.ibuf_bytes, VF_IBUF_BYTES);
    CHECK_EQ(g.wbuf_bytes, VF_WBUF_BYTES);
    CHECK_EQ(g.acc_words, VF_ACC_WORDS);
    CHECK_EQ(g.obuf_bytes, VF_OBUF_BYTES);
    CHECK_EQ(g.param_entries, VF_PARAM_ENTRIES);
    CHECK_EQ(sizeof(vf_insn_t), VF_INSN_BYTES);
}

/* LOAD_TILE with padding on every side, dense and strided views. */
static void test_load_tile()
{
    for (int t = 0; t < 120; ++t) {
        Env e(1 << 18);
        const uint32_t ch = 1 + rnd(t % 3 == 0 ? 70 : 20);
        const uint32_t extra = t % 2 ? rnd(9) : 0;
        const View v = alloc_view(e, 1 + rnd(12), 1 + rnd(12), ch, extra);
        const uint32_t th = 1 + rnd(14), tw = 1 + rnd(14);
        const int32_t y0 = (int32_t)rnd(v.h + 4) - 3, x0 = (int32_t)rnd(v.w + 4) - 3;
        if ((uint64_t)th * tw * ch > VF_IBUF_BYTES)
            continue;
        const uint32_t buf = rnd(VF_IBUF_BYTES - th * tw * ch + 1);
        g_ctx = "trial " + std::to_string(t);
        e.prog = {mk_marker(VF_OP_FRAME), mk_mem(VF_OP_LOAD_TILE, v.addr, buf, v.h, v.w, v.ps, v.ch, y0, x0, th, tw,
                                                 rnd_i8()),
                  mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
    }
    /* a tile entirely outside its view reads nothing, even at a bad address */
    {
        Env e(4096);
        g_ctx = "all padding";
        e.prog = {mk_mem(VF_OP_LOAD_TILE, 0xfffff000u, 0, 4, 4, 8, 8, -6, 0, 3, 2, 7), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
    }
}

static void test_load_linear()
{
    for (int t = 0; t < 60; ++t) {
        Env e(1 << 19);
        g_ctx = "trial " + std::to_string(t);
        const uint32_t nw = 1 + rnd(t % 4 == 0 ? (VF_WBUF_BYTES < (1u << 18) ? VF_WBUF_BYTES : (1u << 18)) : 5000);
        const uint32_t wsrc = e.alloc(nw, 1);
        /* WBUF runs start on a bus word (VF_FAULT_FIELD otherwise); any length, so the first and the
         * last WBUF word are merged with what they held */
        const uint32_t wdst = VF_AXI_BYTES * rnd((VF_WBUF_BYTES - nw) / VF_AXI_BYTES + 1);
        /* at most 128 KiB of parameters: with the weights' 256 KiB they fit the test's segment */
        const uint32_t pall = VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS;
        const uint32_t pwords = 1 + rnd(pall < (1u << 15) ? pall : (1u << 15));
        const uint32_t psrc = e.alloc(pwords * 4, 1); /* unaligned DDR source is fine */
        const uint32_t pdst = 4 * rnd(VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS - pwords + 1);
        e.prog = {mk_linear(wsrc, wdst, nw, VF_BUF_WGT), mk_linear(psrc, pdst, pwords * 4, VF_BUF_PARAM),
                  mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
    }
}

/* Parameters of a conv test: a view of the input, weights and params in DDR. */
struct ConvCase {
    ConvShape s;
    std::vector<int8_t> wgt;     /* [oc][ky][kx][cin_g] */
    std::vector<int32_t> prm;    /* [oc]{bias, mult, shift} */
    int8_t zp, lo, hi;
};

static bool conv_fits(const ConvShape &s)
{
    const uint64_t ict = (uint64_t)s.groups * s.cin_g, oct = (uint64_t)s.groups * s.cout_g;
    /* padded weights under 256 KiB: the tests' segments hold them (the big core's 4 KiB beat words) */
    return (uint64_t)s.in_h * s.in_w * ict <= VF_IBUF_BYTES / 2 && wgt_bytes(s) <= VF_WBUF_BYTES / 2 &&
           wgt_bytes(s) <= (1u << 18) &&
           (uint64_t)s.out_h * s.out_w * oct <= VF_OBUF_BYTES / 2 &&
           (uint64_t)s.out_h * s.out_w * oct <= VF_ACC_WORDS / 2 && oct <= VF_PARAM_ENTRIES / 2;
}

static void random_params(ConvCase &c, bool edge)
{
    const uint64_t oct = (uint64_t)c.s.groups * c.s.cout_g;
    const double n = (double)c.s.kh * c.s.kw * c.s.cin_g;
    c.prm.resize(oct * 3);
    for (uint64_t oc = 0; oc < oct; ++oc) {
        int32_t bias = (int32_t)rrange(-20000, 20000);
        int32_t mult = (int32_t)rrange(1 << 28, (1u << 31) - 1);
        /* aim at outputs of tens of LSBs: acc ~ 60 * 60 * sqrt(n) */
        int shift = 0;
        while ((double)(1ull << shift) < 3600.0 * __builtin_sqrt(n) * mult / 40.0 && shift < 62)
            ++shift;
        shift += (int)rrange(-2, 2);
        if (edge) {
            switch (rnd(6)) {
            case 0: bias = (int32_t)(rnd(2) ? INT32_MAX - rnd(1000) : INT32_MIN + rnd(1000)); break; /* wraps */
            case 1: mult = rnd(2) ? INT32_MIN : INT32_MAX; break;
            case 2: shift = rnd(2) ? 0 : 62; break;
            case 3: mult = -mult; break;
            default: break;
            }
        }
        if (shift < 0) shift = 0;
        if (shift > 62) shift = 62;
        if (rnd(2)) mult = -(mult / 2);
        c.prm[oc * 3] = bias;
        c.prm[oc * 3 + 1] = mult;
        c.prm[oc * 3 + 2] = shift;
    }
}

static ConvShape random_conv_shape(int kind)
{
    for (;;) {
        ConvShape s;
        s.kh = 1 + rnd(rnd(4) ? 3 : 7);
        s.kw = rnd(3) ? s.kh : 1 + rnd(4);
        s.sh = 1 + rnd(3);
        s.sw = rnd(3) ? s.sh : 1 + rnd(3);
        s.out_h = 1 + rnd(5);
        s.out_w = 1 + rnd(6);
        s.in_h = (s.out_h - 1) * s.sh + s.kh + rnd(2);
        s.in_w = (s.out_w - 1) * s.sw + s.kw + rnd(2);
        switch (kind) {
        case 0: /* dense */
            s.groups = 1;
            s.cin_g = 2 + rnd(rnd(3) ? 40 : 90);
            s.cout_g = 1 + rnd(rnd(3) ? 40 : 70);
            break;
        case 1: /* grouped */
            s.groups = 2 + rnd(3);
            s.cin_g = 2 + rnd(20);
            s.cout_g = 1 + rnd(20);
            break;
        case 2: /* depthwise */
            s.groups = 1 + rnd(50);
            s.cin_g = 1;
            s.cout_g = 1;
            break;
        default: /* channel multiplier, or a single input channel */
            s.groups = rnd(3) ? 1 + rnd(12) : 1;
            s.cin_g = 1;
            s.cout_g = 2 + rnd(s.groups == 1 ? 30 : 3);
            break;
        }
        if (conv_fits(s))
            return s;
    }
}

/* LOAD_LINEAR weights + params, LOAD_TILE input with padding, CONV, SAVE into
 * a strided view. Returns the output view. */
static View build_conv_program(Env &e, const ConvCase &c, uint16_t conv_flags_extra = 0)
{
    const ConvShape &s = c.s;
    const uint32_t ict = s.groups * s.cin_g, oct = s.groups * s.cout_g;
    /* input view and tile origin: padding may fall on any side */
    const int32_t y0 = -(int32_t)rnd(3), x0 = -(int32_t)rnd(3);
    const uint32_t vh = 1 + rnd(s.in_h + 2), vw = 1 + rnd(s.in_w + 2);
    const View in = alloc_view(e, vh, vw, ict, rnd(2) ? rnd(5) : 0);
    const std::vector<int8_t> packed = pack_wgt(s, c.wgt);
    const uint32_t wsrc = e.alloc((uint32_t)packed.size(), 1);
    memcpy(e.seg() + wsrc, packed.data(), packed.size());
    const uint32_t psrc = put_params(e, c.prm);
    const View out = alloc_view(e, s.out_h + rnd(3), s.out_w + rnd(3), oct, rnd(2) ? rnd(5) : 0);
    const uint32_t oy = rnd(out.h - s.out_h + 1), ox = rnd(out.w - s.out_w + 1);

    const uint32_t in_bytes = s.in_h * s.in_w * ict, w_bytes = (uint32_t)packed.size();
    const uint32_t out_n = s.out_h * s.out_w * oct;
    const uint32_t ib = rnd(VF_IBUF_BYTES - in_bytes + 1);
    const uint32_t wb = VF_CONV_WORD * rnd((VF_WBUF_BYTES - w_bytes) / VF_CONV_WORD + 1); /* word aligned */
    const uint32_t ob = rnd(VF_OBUF_BYTES - out_n + 1), ab = rnd(VF_ACC_WORDS - out_n + 1);
    const uint32_t pb = rnd(VF_PARAM_ENTRIES - oct + 1);
    e.prog = {mk_marker(VF_OP_FRAME),
              mk_linear(wsrc, wb, w_bytes, VF_BUF_WGT),
              mk_linear(psrc, pb * 12, oct * 12, VF_BUF_PARAM),
              mk_mem(VF_OP_LOAD_TILE, in.addr, ib, in.h, in.w, in.ps, in.ch, y0, x0, s.in_h, s.in_w, rnd_i8(),
                     VF_DEP_PUSH_NEXT),
              mk_conv(s, (uint16_t)(VF_CONV_ACC_INIT | VF_CONV_ACC_FINAL | conv_flags_extra), ib, wb, ob, ab, pb, c.zp,
                      c.lo, c.hi, VF_DEP_POP_PREV | VF_DEP_PUSH_NEXT),
              mk_mem(VF_OP_SAVE, out.addr, ob, out.h, out.w, out.ps, out.ch, oy, ox, s.out_h, s.out_w, 0,
                     VF_DEP_POP_PREV),
              mk_marker(VF_OP_END)};
    e.place_program();
    return out;
}

static void random_conv_case(ConvCase &c, int kind, bool edge)
{
    c.s = random_conv_shape(kind);
    const uint64_t oct = (uint64_t)c.s.groups * c.s.cout_g;
    c.wgt.resize(oct * c.s.kh * c.s.kw * c.s.cin_g);
    for (auto &w : c.wgt) w = rnd_i8();
    random_params(c, edge);
    c.zp = (int8_t)rrange(-20, 20);
    c.lo = -128;
    c.hi = 127;
    if (rnd(4) == 0) {
        c.lo = (int8_t)rrange(-128, 10);
        c.hi = (int8_t)rrange(c.lo, 127);
    }
}

static void test_conv_random()
{
    for (int t = 0; t < 240; ++t) {
        Env e(1 << 19);
        ConvCase c;
        random_conv_case(c, t % 4, t % 5 == 4);
        g_ctx = "trial " + std::to_string(t) + " g" + std::to_string(c.s.groups) + " cin" + std::to_string(c.s.cin_g) +
                " cout" + std::to_string(c.s.cout_g) + " k" + std::to_string(c.s.kh) + "x" + std::to_string(c.s.kw) +
                " s" + std::to_string(c.s.sh) + "x" + std::to_string(c.s.sw);
        build_conv_program(e, c);
        e.expect_clean_run();
        if (g_checks_failed)
            return;
    }
}

/* Input channels split over several CONVs: ACC_INIT on the first, plain
 * accumulation in the middle, ACC_FINAL on the last, each on a strided
 * channel-slice load. Must give the bytes of the same conv done at once. */
static void test_conv_split_accumulation()
{
    for (int t = 0; t < 60; ++t) {
        ConvCase c;
        do
            random_conv_case(c, 0, t % 3 == 2);
        while (c.s.cin_g < 3);
        const ConvShape s = c.s;
        const uint32_t parts = 2 + rnd(s.cin_g >= 4 ? 2 : 1);
        g_ctx = "trial " + std::to_string(t) + " cin" + std::to_string(s.cin_g) + " parts " + std::to_string(parts);
        Env e(1 << 21); /* each slice's weights are padded to whole beat words */
        const uint32_t oct = s.cout_g, out_n = s.out_h * s.out_w * oct;
        std::vector<uint32_t> cut(parts + 1);
        cut[0] = 0;
        cut[parts] = s.cin_g;
        for (uint32_t p = 1; p < parts; ++p)
            cut[p] = cut[p - 1] + 1 + rnd(s.cin_g - cut[p - 1] - (parts - p));
        const int32_t y0 = -(int32_t)rnd(2), x0 = -(int32_t)rnd(2);
        const int8_t pad = rnd_i8();
        const View in = alloc_view(e, s.in_h, s.in_w, s.cin_g, rnd(3));
        const uint32_t psrc = put_params(e, c.prm);
        const std::vector<int8_t> packed = pack_wgt(s, c.wgt);
        const uint32_t wsrc = e.alloc((uint32_t)packed.size(), 1);
        memcpy(e.seg() + wsrc, packed.data(), packed.size());
        const View whole = alloc_view(e, s.out_h, s.out_w, oct, 0);
        const View split = alloc_view(e, s.out_h, s.out_w, oct, 0);
        const uint32_t in_n = s.in_h * s.in_w * s.cin_g, w_n = (uint32_t)packed.size();
        const uint32_t ab = rnd(VF_ACC_WORDS - out_n + 1);

        /* frame 1: the whole conv (IBUF/WBUF/OBUF first halves) */
        e.prog = {mk_marker(VF_OP_FRAME), mk_linear(psrc, 0, oct * 12, VF_BUF_PARAM), mk_linear(wsrc, 0, w_n, VF_BUF_WGT),
                  mk_mem(VF_OP_LOAD_TILE, in.addr, 0, in.h, in.w, in.ps, in.ch, y0, x0, s.in_h, s.in_w, pad,
                         VF_DEP_PUSH_NEXT),
                  mk_conv(s, VF_CONV_ACC_INIT | VF_CONV_ACC_FINAL, 0, 0, 0, 0, 0, c.zp, c.lo, c.hi,
                          VF_DEP_POP_PREV | VF_DEP_PUSH_NEXT),
                  mk_mem(VF_OP_SAVE, whole.addr, 0, whole.h, whole.w, whole.ps, whole.ch, 0, 0, s.out_h, s.out_w, 0,
                         VF_DEP_POP_PREV),
                  mk_marker(VF_OP_FRAME)};
        /* frame 2: the same conv over input-channel slices (second halves;
         * WBUF from 0 again when the slices' padded words do not fit after
         * the whole conv's: frame 1 is over by then) */
        uint32_t ib = in_n, wb = word_align(w_n);
        {
            size_t need = 0;
            for (uint32_t p = 0; p < parts; ++p) {
                ConvShape ps = s;
                ps.cin_g = cut[p + 1] - cut[p];
                need += word_align((uint32_t)wgt_bytes(ps));
            }
            if (need > VF_WBUF_BYTES) {
                --t;
                continue;
            }
            if (wb + need > VF_WBUF_BYTES)
                wb = 0;
        }
        for (uint32_t p = 0; p < parts; ++p) {
            const uint32_t n = cut[p + 1] - cut[p];
            std::vector<int8_t> slice; /* [oc][ky][kx][n] */
            for (uint32_t oc = 0; oc < oct; ++oc)
                for (uint32_t k = 0; k < s.kh * s.kw; ++k)
                    for (uint32_t i = cut[p]; i < cut[p + 1]; ++i)
                        slice.push_back(c.wgt[((size_t)oc * s.kh * s.kw + k) * s.cin_g + i]);
            ConvShape ps = s;
            ps.cin_g = n;
            const std::vector<int8_t> w = pack_wgt(ps, slice);
            const uint32_t src = e.alloc((uint32_t)w.size(), 1);
            memcpy(e.seg() + src, w.data(), w.size());
            uint16_t flags = 0;
            if (p == 0)
                flags |= VF_CONV_ACC_INIT;
            if (p == parts - 1)
                flags |= VF_CONV_ACC_FINAL;
            e.prog.push_back(mk_linear(src, wb, (uint32_t)w.size(), VF_BUF_WGT));
            e.prog.push_back(mk_mem(VF_OP_LOAD_TILE, in.addr + cut[p], ib, in.h, in.w, in.ps, n, y0, x0, s.in_h,
                                    s.in_w, pad, VF_DEP_PUSH_NEXT));
            e.prog.push_back(mk_conv(ps, flags, ib, wb, out_n, ab, 0, c.zp, c.lo, c.hi,
                                     (uint8_t)(VF_DEP_POP_PREV | (p == parts - 1 ? VF_DEP_PUSH_NEXT : 0))));
            ib += s.in_h * s.in_w * n;
            wb = word_align(wb + (uint32_t)w.size());
        }
        e.prog.push_back(mk_mem(VF_OP_SAVE, split.addr, out_n, split.h, split.w, split.ps, split.ch, 0, 0, s.out_h,
                                s.out_w, 0, VF_DEP_POP_PREV));
        e.prog.push_back(mk_marker(VF_OP_END));
        e.place_program();
        e.expect_clean_run();
        CHECK(memcmp(e.seg() + whole.addr, e.seg() + split.addr, out_n) == 0);
        if (g_checks_failed)
            return;
    }
}

/* max / avg pooling with a valid window (padding), COUNT_PAD, strides. */
static void test_pool_random()
{
    for (int t = 0; t < 200; ++t) {
        Env e(1 << 18);
        vf_insn_t p = blank(VF_OP_POOL);
        const uint32_t C = 1 + rnd(t % 4 == 0 ? 300 : 40);
        const uint32_t kh = 1 + rnd(t % 9 == 0 ? 7 : 3), kw = rnd(3) ? kh : 1 + rnd(4);
        const uint32_t sh = 1 + rnd(3), sw = rnd(3) ? sh : 1 + rnd(3);
        const uint32_t oh = 1 + rnd(5), ow = 1 + rnd(5);
        const uint32_t ih = (oh - 1) * sh + kh + rnd(2), iw = (ow - 1) * sw + kw + rnd(2);
        if ((uint64_t)ih * iw * C > VF_IBUF_BYTES / 2 || (uint64_t)oh * ow * C > VF_OBUF_BYTES / 2)
            continue;
        const uint32_t vy0 = rnd(3) ? rnd(3) % (ih + 1) : 0, vx0 = rnd(3) ? rnd(3) % (iw + 1) : 0;
        const uint32_t vy1 = rnd(6) == 0 ? vy0 : ih - rnd(ih - vy0 + 1) * (rnd(2) ? 0 : 1);
        const uint32_t vx1 = iw - rnd(iw - vx0 + 1) * (rnd(2) ? 0 : 1);
        const uint32_t mode = rnd(3);
        p.head.flags = (uint16_t)(mode == 0 ? 0 : mode == 1 ? VF_POOL_AVG : VF_POOL_AVG | VF_POOL_COUNT_PAD);
        const uint32_t shift = rnd(31);
        const int64_t unit = (int64_t)1 << shift;
        int64_t mult = unit + rrange(-unit / 3, unit / 3);
        if (rnd(5) == 0)
            mult = rnd(2) ? INT32_MAX : INT32_MIN;
        if (mult > INT32_MAX) mult = INT32_MAX;
        p.pool.mult = (int32_t)mult;
        p.pool.shift = (uint8_t)shift;
        p.pool.channels = (uint16_t)C;
        p.pool.kh = (uint16_t)kh;
        p.pool.kw = (uint16_t)kw;
        p.pool.sh = (uint8_t)sh;
        p.pool.sw = (uint8_t)sw;
        p.pool.in_h = (uint16_t)ih;
        p.pool.in_w = (uint16_t)iw;
        p.pool.out_h = (uint16_t)oh;
        p.pool.out_w = (uint16_t)ow;
        p.pool.valid_y0 = (uint16_t)vy0;
        p.pool.valid_y1 = (uint16_t)vy1;
        p.pool.valid_x0 = (uint16_t)vx0;
        p.pool.valid_x1 = (uint16_t)vx1;
        p.pool.in_zp = (int8_t)rrange(-30, 30);
        p.pool.out_zp = (int8_t)rrange(-30, 30);
        p.pool.clip_lo = -128;
        p.pool.clip_hi = 127;
        if (rnd(4) == 0) {
            p.pool.clip_lo = (int8_t)rrange(-128, 0);
            p.pool.clip_hi = (int8_t)rrange(p.pool.clip_lo, 127);
        }
        const uint32_t in_n = ih * iw * C, out_n = oh * ow * C;
        p.pool.in_addr = rnd(VF_IBUF_BYTES - in_n + 1);
        p.pool.out_addr = rnd(VF_OBUF_BYTES - out_n + 1);
        const View in = alloc_view(e, ih, iw, C, 0);
        const View out = alloc_view(e, oh, ow, C, rnd(3));
        g_ctx = "trial " + std::to_string(t) + " C" + std::to_string(C) + " k" + std::to_string(kh) + "x" +
                std::to_string(kw) + " mode " + std::to_string(mode);
        e.prog = {mk_mem(VF_OP_LOAD_TILE, in.addr, p.pool.in_addr, ih, iw, C, C, 0, 0, ih, iw, 0, VF_DEP_PUSH_NEXT),
                  p, mk_mem(VF_OP_SAVE, out.addr, p.pool.out_addr, oh, ow, out.ps, C, 0, 0, oh, ow, 0, VF_DEP_POP_PREV),
                  mk_marker(VF_OP_END)};
        e.prog[1].head.deps = VF_DEP_POP_PREV | VF_DEP_PUSH_NEXT;
        e.place_program();
        e.expect_clean_run();
        if (g_checks_failed)
            return;
    }
    /* a global average pool as ResNet ends with */
    {
        Env e(1 << 18);
        const uint32_t C = (uint32_t)(VF_IBUF_BYTES / 49 < 300 ? VF_IBUF_BYTES / 49 : 300);
        vf_insn_t p = blank(VF_OP_POOL, VF_DEP_POP_PREV, VF_POOL_AVG);
        p.pool.channels = (uint16_t)C;
        p.pool.kh = p.pool.kw = 7;
        p.pool.sh = p.pool.sw = 1;
        p.pool.in_h = p.pool.in_w = 7;
        p.pool.out_h = p.pool.out_w = 1;
        p.pool.valid_y1 = p.pool.valid_x1 = 7;
        p.pool.mult = 1 << 20;
        p.pool.shift = 20;
        p.pool.clip_lo = -128;
        p.pool.clip_hi = 127;
        const View in = alloc_view(e, 7, 7, C, 0);
        e.prog = {mk_mem(VF_OP_LOAD_TILE, in.addr, 0, 7, 7, C, C, 0, 0, 7, 7, 0, VF_DEP_PUSH_NEXT), p,
                  mk_marker(VF_OP_END)};
        e.place_program();
        g_ctx = "global avg pool";
        e.expect_clean_run();
    }
}

static void test_add_random()
{
    for (int t = 0; t < 150; ++t) {
        Env e(1 << 18);
        const uint32_t n = 1 + rnd(t % 5 == 0 ? 5000 : 300);
        if (n > VF_IBUF_BYTES / 2 || n > VF_OBUF_BYTES)
            continue;
        vf_insn_t a = blank(VF_OP_ADD, VF_DEP_POP_PREV | VF_DEP_PUSH_NEXT);
        a.add.length = n;
        a.add.a_addr = rnd(VF_IBUF_BYTES - n + 1);
        a.add.b_addr = rnd(VF_IBUF_BYTES - n + 1);
        a.add.out_addr = rnd(VF_OBUF_BYTES - n + 1);
        const uint32_t shift = t % 7 == 6 ? rnd(63) : 20 + rnd(12);
        const int64_t unit = (int64_t)1 << (shift > 31 ? 30 : (shift ? shift - 1 : 0));
        a.add.a_mult = (int32_t)(rrange(-unit, unit) % INT32_MAX);
        a.add.b_mult = (int32_t)(rrange(-unit, unit) % INT32_MAX);
        if (t % 11 == 10) {
            a.add.a_mult = INT32_MIN;
            a.add.b_mult = INT32_MIN;
        }
        a.add.shift = (uint8_t)shift;
        a.add.a_zp = rnd_i8();
        a.add.b_zp = rnd_i8();
        a.add.out_zp = rnd_i8();
        a.add.clip_lo = -128;
        a.add.clip_hi = 127;
        if (rnd(3) == 0) {
            a.add.clip_lo = (int8_t)rrange(-128, 0);
            a.add.clip_hi = (int8_t)rrange(a.add.clip_lo, 127);
        }
        const View va = alloc_view(e, 1, n, 1, 0), vb = alloc_view(e, 1, n, 1, 0);
        const View vo = alloc_view(e, 1, n, 1, 0);
        g_ctx = "trial " + std::to_string(t) + " n" + std::to_string(n);
        e.prog = {mk_mem(VF_OP_LOAD_TILE, va.addr, a.add.a_addr, 1, n, 1, 1, 0, 0, 1, n),
                  mk_mem(VF_OP_LOAD_TILE, vb.addr, a.add.b_addr, 1, n, 1, 1, 0, 0, 1, n, 0, VF_DEP_PUSH_NEXT), a,
                  mk_mem(VF_OP_SAVE, vo.addr, a.add.out_addr, 1, n, 1, 1, 0, 0, 1, n, 0, VF_DEP_POP_PREV),
                  mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
        if (g_checks_failed)
            return;
    }
}

/* SAVE into a wider tensor (Concat placement): only the tile's channels of
 * the tile's pixels change; the rest of the segment is compared too. */
static void test_save_view()
{
    for (int t = 0; t < 80; ++t) {
        Env e(1 << 18);
        const uint32_t ch = 1 + rnd(40), extra = t % 3 ? 1 + rnd(30) : 0;
        const View v = alloc_view(e, 1 + rnd(10), 1 + rnd(10), ch, extra);
        const uint32_t th = 1 + rnd(v.h), tw = 1 + rnd(v.w);
        const uint32_t y0 = rnd(v.h - th + 1), x0 = rnd(v.w - tw + 1);
        const uint32_t ob = rnd(VF_OBUF_BYTES - th * tw * ch + 1);
        g_ctx = "trial " + std::to_string(t);
        e.prog = {mk_marker(VF_OP_FRAME), mk_mem(VF_OP_SAVE, v.addr, ob, v.h, v.w, v.ps, ch, (int32_t)y0,
                                                 (int32_t)x0, th, tw),
                  mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
    }
}

static void expect_single_fault(const char *name, const vf_insn_t &bad, uint32_t fault, uint64_t addr);

/* SAVE with steps: tiles interleaved into a larger view (upsampling and
 * transposed-convolution phases), dense and inside wider pixels. */
static void test_save_steps()
{
    for (int t = 0; t < 120; ++t) {
        Env e(1 << 18);
        const uint32_t ch = 1 + rnd(t % 4 ? 40 : 3), extra = t % 3 ? 0 : 1 + rnd(8);
        const uint32_t sy = rnd(4), sx = rnd(4); /* 0 and 1 both mean adjacent */
        const View v = alloc_view(e, 1 + rnd(12), 1 + rnd(12), ch, extra);
        const uint32_t ey = sy > 1 ? sy : 1, ex = sx > 1 ? sx : 1;
        const uint32_t y0 = rnd(v.h), x0 = rnd(v.w);
        const uint32_t th = 1 + rnd((v.h - 1 - y0) / ey + 1), tw = 1 + rnd((v.w - 1 - x0) / ex + 1);
        const uint32_t ob = rnd(VF_OBUF_BYTES - th * tw * ch + 1);
        vf_insn_t sv = mk_mem(VF_OP_SAVE, v.addr, ob, v.h, v.w, v.ps, ch, (int32_t)y0, (int32_t)x0, th, tw);
        sv.mem.step_y = (uint8_t)sy;
        sv.mem.step_x = (uint8_t)sx;
        g_ctx = "trial " + std::to_string(t) + " steps " + std::to_string(sy) + "x" + std::to_string(sx);
        e.prog = {mk_marker(VF_OP_FRAME), sv, mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
        if (g_checks_failed)
            return;
    }
    /* a stepped tile reaching one row past the view is a FIELD fault */
    {
        vf_insn_t sv = mk_mem(VF_OP_SAVE, 0, 0, 5, 5, 4, 4, 1, 0, 3, 2);
        sv.mem.step_y = 2;
        expect_single_fault("save step_y past the view", sv, VF_FAULT_FIELD, offsetof(vf_insn_mem_t, tile_h));
        sv.mem.step_y = 0;
        sv.mem.tile_h = 2;
        sv.mem.step_x = 5;
        expect_single_fault("save step_x past the view", sv, VF_FAULT_FIELD, offsetof(vf_insn_mem_t, tile_w));
        vf_insn_t ld = mk_mem(VF_OP_LOAD_TILE, 0, 0, 5, 5, 4, 4, 0, 0, 2, 2);
        ld.mem.step_x = 2;
        expect_single_fault("load with a step", ld, VF_FAULT_FIELD, offsetof(vf_insn_mem_t, step_x));
    }
}

/* LUT: random tables from IBUF, and in place on OBUF after a CONV's output. */
static void test_lut_random()
{
    for (int t = 0; t < 150; ++t) {
        Env e(1 << 18);
        const uint32_t n = 1 + rnd(t % 5 == 0 ? 5000 : 300);
        if (n > VF_IBUF_BYTES || n > VF_OBUF_BYTES / 2)
            continue;
        std::vector<int8_t> table(VF_LUT_ENTRIES);
        fill_random(table.data(), table.size());
        const uint32_t tsrc = e.put(table.data(), VF_LUT_ENTRIES, 1);
        const bool in_obuf = t % 3 == 0;
        vf_insn_t l = blank(VF_OP_LUT, VF_DEP_POP_PREV | VF_DEP_PUSH_NEXT, in_obuf ? VF_LUT_SRC_OBUF : 0);
        l.lut.length = n;
        l.lut.table_addr = VF_AXI_BYTES * rnd((VF_WBUF_BYTES - VF_LUT_ENTRIES) / VF_AXI_BYTES + 1); /* loadable */
        if (in_obuf && t % 2) { /* in place */
            l.lut.in_addr = l.lut.out_addr = rnd(VF_OBUF_BYTES - n + 1);
        } else if (in_obuf) { /* from one half into the other */
            l.lut.in_addr = rnd(VF_OBUF_BYTES / 2 - n + 1);
            l.lut.out_addr = VF_OBUF_BYTES / 2 + rnd(VF_OBUF_BYTES / 2 - n + 1);
        } else {
            l.lut.in_addr = rnd(VF_IBUF_BYTES - n + 1);
            l.lut.out_addr = rnd(VF_OBUF_BYTES - n + 1);
        }
        const View vi = alloc_view(e, 1, n, 1, 0), vo = alloc_view(e, 1, n, 1, 0);
        g_ctx = "trial " + std::to_string(t) + " n" + std::to_string(n) + (in_obuf ? " obuf" : " ibuf");
        e.prog = {mk_linear(tsrc, l.lut.table_addr, VF_LUT_ENTRIES, VF_BUF_WGT)};
        if (!in_obuf)
            e.prog.push_back(mk_mem(VF_OP_LOAD_TILE, vi.addr, l.lut.in_addr, 1, n, 1, 1, 0, 0, 1, n));
        e.prog.back().head.deps = VF_DEP_PUSH_NEXT;
        e.prog.push_back(l);
        e.prog.push_back(mk_mem(VF_OP_SAVE, vo.addr, l.lut.out_addr, 1, n, 1, 1, 0, 0, 1, n, 0, VF_DEP_POP_PREV));
        e.prog.push_back(mk_marker(VF_OP_END));
        e.place_program();
        e.expect_clean_run();
        if (g_checks_failed)
            return;
    }
    /* partly overlapping OBUF ranges would depend on the lane order */
    vf_insn_t l = blank(VF_OP_LUT, 0, VF_LUT_SRC_OBUF);
    l.lut.length = 64;
    l.lut.in_addr = 0;
    l.lut.out_addr = 32;
    expect_single_fault("lut overlap", l, VF_FAULT_FIELD, offsetof(vf_insn_lut_t, in_addr));
    l.lut.out_addr = 0;
    l.lut.table_addr = VF_WBUF_BYTES - VF_LUT_ENTRIES + 1;
    expect_single_fault("lut table outside WBUF", l, VF_FAULT_BUFFER, VF_WBUF_BYTES);
    l.lut.table_addr = 0;
    l.lut.length = 0;
    expect_single_fault("lut length 0", l, VF_FAULT_FIELD, offsetof(vf_insn_lut_t, length));
}

/* MUL: element-wise and per-channel broadcast products. */
static void test_mul_random()
{
    for (int t = 0; t < 150; ++t) {
        Env e(1 << 18);
        const bool bcast = t % 2 == 0;
        const uint32_t C = 1 + rnd(t % 5 == 0 ? 300 : 40), P = 1 + rnd(t % 7 == 0 ? 60 : 12);
        const uint32_t n = P * C, nb = bcast ? C : n;
        if (n + nb > VF_IBUF_BYTES || n > VF_OBUF_BYTES)
            continue;
        vf_insn_t u = blank(VF_OP_MUL, VF_DEP_POP_PREV | VF_DEP_PUSH_NEXT, bcast ? VF_MUL_BCAST : 0);
        u.mul.pixels = P;
        u.mul.channels = (uint16_t)C;
        u.mul.a_addr = rnd(VF_IBUF_BYTES - n - nb + 1);
        u.mul.b_addr = u.mul.a_addr + n + rnd(VF_IBUF_BYTES - u.mul.a_addr - n - nb + 1);
        u.mul.out_addr = rnd(VF_OBUF_BYTES - n + 1);
        const uint32_t shift = t % 7 == 6 ? rnd(63) : 20 + rnd(16);
        u.mul.shift = (uint8_t)shift;
        u.mul.mult = (int32_t)rrange(-(int64_t)INT32_MAX, INT32_MAX);
        if (t % 11 == 10)
            u.mul.mult = INT32_MIN;
        u.mul.a_zp = rnd_i8();
        u.mul.b_zp = rnd_i8();
        u.mul.out_zp = rnd_i8();
        u.mul.clip_lo = -128;
        u.mul.clip_hi = 127;
        if (rnd(3) == 0) {
            u.mul.clip_lo = (int8_t)rrange(-128, 0);
            u.mul.clip_hi = (int8_t)rrange(u.mul.clip_lo, 127);
        }
        const View va = alloc_view(e, P, 1, C, 0), vb = alloc_view(e, bcast ? 1 : P, 1, C, 0);
        const View vo = alloc_view(e, P, 1, C, 0);
        g_ctx = "trial " + std::to_string(t) + " P" + std::to_string(P) + " C" + std::to_string(C);
        e.prog = {mk_mem(VF_OP_LOAD_TILE, va.addr, u.mul.a_addr, P, 1, C, C, 0, 0, P, 1),
                  mk_mem(VF_OP_LOAD_TILE, vb.addr, u.mul.b_addr, vb.h, 1, C, C, 0, 0, vb.h, 1, 0, VF_DEP_PUSH_NEXT),
                  u, mk_mem(VF_OP_SAVE, vo.addr, u.mul.out_addr, P, 1, C, C, 0, 0, P, 1, 0, VF_DEP_POP_PREV),
                  mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
        if (g_checks_failed)
            return;
    }
    vf_insn_t u = blank(VF_OP_MUL, 0, 0);
    u.mul.pixels = 2;
    u.mul.channels = 8;
    u.mul.shift = 63;
    expect_single_fault("mul shift 63", u, VF_FAULT_FIELD, offsetof(vf_insn_mul_t, shift));
    u.mul.shift = 10;
    u.mul.channels = 0;
    expect_single_fault("mul channels 0", u, VF_FAULT_FIELD, offsetof(vf_insn_mul_t, channels));
    u.mul.channels = 8;
    u.head.flags = 2;
    expect_single_fault("mul flags", u, VF_FAULT_FIELD, offsetof(vf_insn_head_t, flags));
    u.head.flags = VF_MUL_BCAST;
    u.mul.b_addr = VF_IBUF_BYTES - 7;
    expect_single_fault("mul b outside IBUF", u, VF_FAULT_BUFFER, VF_IBUF_BYTES);
}

/* Dependency tokens: a double-buffered tile pipeline over the three units.
 * Tile t uses IBUF/OBUF half t % 2; the load of tile t waits until compute has
 * released the half (t >= 2), compute waits for its load and for the save of
 * tile t - 2, save waits for compute. */
struct Pipeline {
    ConvCase c;
    View in, out;
    uint32_t tiles;
};

static void build_pipeline(Env &e, Pipeline &pl, uint32_t drop)
{
    /* a 1x1 conv over a row-tiled image */
    ConvCase &c = pl.c;
    c.s.groups = 1;
    c.s.cin_g = 3 + rnd(30);
    c.s.cout_g = 1 + rnd(30);
    c.s.kh = c.s.kw = 1;
    c.s.sh = c.s.sw = 1;
    c.s.out_w = c.s.in_w = 4 + rnd(6);
    c.s.out_h = c.s.in_h = 1;
    c.wgt.resize((size_t)c.s.cout_g * c.s.cin_g);
    for (auto &w : c.wgt) w = rnd_i8();
    random_params(c, false);
    c.zp = 0;
    c.lo = -128;
    c.hi = 127;
    pl.tiles = 4 + rnd(4);
    pl.in = alloc_view(e, pl.tiles, c.s.in_w, c.s.cin_g, 0);
    pl.out = alloc_view(e, pl.tiles, c.s.out_w, c.s.cout_g, 0);
    const std::vector<int8_t> packed = pack_wgt(c.s, c.wgt);
    const uint32_t wsrc = e.alloc((uint32_t)packed.size(), 1);
    memcpy(e.seg() + wsrc, packed.data(), packed.size());
    const uint32_t psrc = put_params(e, c.prm);
    const uint32_t ihalf = VF_IBUF_BYTES / 2, ohalf = VF_OBUF_BYTES / 2;
    /* weights and params in a frame of their own: the units of the next
     * frame can only race on the IBUF/OBUF halves */
    e.prog = {mk_marker(VF_OP_FRAME), mk_linear(wsrc, 0, (uint32_t)packed.size(), VF_BUF_WGT),
              mk_linear(psrc, 0, (uint32_t)c.prm.size() * 4, VF_BUF_PARAM), mk_marker(VF_OP_FRAME)};
    for (uint32_t t = 0; t < pl.tiles; ++t) {
        const uint32_t h = t % 2;
        uint8_t ld = VF_DEP_PUSH_NEXT | (t >= 2 ? VF_DEP_POP_NEXT : 0);
        uint8_t cp = VF_DEP_POP_PREV | VF_DEP_PUSH_PREV | VF_DEP_PUSH_NEXT | (t >= 2 ? VF_DEP_POP_NEXT : 0);
        uint8_t sv = VF_DEP_POP_PREV | VF_DEP_PUSH_PREV;
        if (drop == 1)
            cp &= (uint8_t)~VF_DEP_POP_PREV; /* compute does not wait for its load (RAW) */
        if (drop == 2)
            ld &= (uint8_t)~VF_DEP_POP_NEXT; /* load overwrites a half still in use (WAR) */
        if (drop == 3)
            sv &= (uint8_t)~VF_DEP_POP_PREV; /* save does not wait for compute (RAW) */
        e.prog.push_back(mk_mem(VF_OP_LOAD_TILE, pl.in.addr, h * ihalf, pl.in.h, pl.in.w, pl.in.ps, pl.in.ch,
                                (int32_t)t, 0, 1, c.s.in_w, 0, ld));
        e.prog.push_back(mk_conv(c.s, VF_CONV_ACC_INIT | VF_CONV_ACC_FINAL, h * ihalf, 0, h * ohalf, 0, 0, 0, -128,
                                 127, cp));
        e.prog.push_back(mk_mem(VF_OP_SAVE, pl.out.addr, h * ohalf, pl.out.h, pl.out.w, pl.out.ps, pl.out.ch,
                                (int32_t)t, 0, 1, c.s.out_w, 0, sv));
    }
    e.prog.push_back(mk_marker(VF_OP_END));
    e.place_program();
}

static void test_tokens_double_buffer()
{
    for (int t = 0; t < 30; ++t) {
        Env e(1 << 18);
        Pipeline pl;
        g_ctx = "trial " + std::to_string(t);
        build_pipeline(e, pl, 0);
        e.expect_clean_run();
        CHECK_EQ(e.cnt.frames, 2);
    }
}

/* The C-sim is a faithful model of concurrent units: dropping a token makes
 * the units race, and the result is wrong, as it could be on the board. */
static void test_tokens_missing_give_wrong_order()
{
    for (uint32_t drop = 1; drop <= 3; ++drop) {
        Env e(1 << 18);
        Pipeline pl;
        g_ctx = "drop " + std::to_string(drop);
        build_pipeline(e, pl, drop);
        e.snapshot();
        CHECK_EQ(e.run(), VF_STEP_END);
        CHECK_EQ(e.st.fault, VF_FAULT_NONE);
        e.model_run(e.prog.size());
        CHECK(!e.same_as_model(false));
        CHECK(e.guards_intact());
    }
}

static void test_deadlock()
{
    /* compute waits for a load that never announces its tile */
    {
        Env e(1 << 16);
        g_ctx = "pop without push";
        ConvShape s = {1, 4, 4, 1, 1, 1, 1, 2, 2, 2, 2};
        e.prog = {mk_marker(VF_OP_FRAME), mk_mem(VF_OP_LOAD_TILE, 0, 0, 2, 2, 4, 4, 0, 0, 2, 2),
                  mk_conv(s, VF_CONV_ACC_INIT, 0, 0, 0, 0, 0, 0, -128, 127, VF_DEP_POP_PREV), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_DEADLOCK, 2, VF_OP_CONV, 1);
    }
    /* a cycle: load waits for compute, compute waits for load */
    {
        Env e(1 << 16);
        g_ctx = "cycle";
        ConvShape s = {1, 4, 4, 1, 1, 1, 1, 2, 2, 2, 2};
        e.prog = {mk_mem(VF_OP_LOAD_TILE, 0, 0, 2, 2, 4, 4, 0, 0, 2, 2, 0, VF_DEP_POP_NEXT | VF_DEP_PUSH_NEXT),
                  mk_conv(s, VF_CONV_ACC_INIT, 0, 0, 0, 0, 0, 0, -128, 127, VF_DEP_POP_PREV | VF_DEP_PUSH_PREV),
                  mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_DEADLOCK, 0, VF_OP_LOAD_TILE, 1);
    }
    /* the lowest-indexed blocked instruction is reported, whatever the unit */
    {
        Env e(1 << 16);
        g_ctx = "cycle, compute first";
        ConvShape s = {1, 4, 4, 1, 1, 1, 1, 2, 2, 2, 2};
        e.prog = {mk_conv(s, VF_CONV_ACC_INIT, 0, 0, 0, 0, 0, 0, -128, 127, VF_DEP_POP_PREV | VF_DEP_PUSH_PREV),
                  mk_mem(VF_OP_LOAD_TILE, 0, 0, 2, 2, 4, 4, 0, 0, 2, 2, 0, VF_DEP_POP_NEXT | VF_DEP_PUSH_NEXT),
                  mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_DEADLOCK, 0, VF_OP_CONV, 1);
    }
    /* tokens do not cross frames */
    {
        Env e(1 << 16);
        g_ctx = "token across a frame";
        ConvShape s = {1, 4, 4, 1, 1, 1, 1, 2, 2, 2, 2};
        e.prog = {mk_marker(VF_OP_FRAME), mk_mem(VF_OP_LOAD_TILE, 0, 0, 2, 2, 4, 4, 0, 0, 2, 2, 0, VF_DEP_PUSH_NEXT),
                  mk_marker(VF_OP_FRAME),
                  mk_conv(s, VF_CONV_ACC_INIT, 0, 0, 0, 0, 0, 0, -128, 127, VF_DEP_POP_PREV), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_DEADLOCK, 3, VF_OP_CONV, 1);
        CHECK_EQ(e.cnt.frames, 2);
    }
    /* save waits for compute, which is never pushed */
    {
        Env e(1 << 16);
        g_ctx = "save waits";
        e.prog = {mk_mem(VF_OP_SAVE, 0, 0, 1, 4, 4, 4, 0, 0, 1, 4, 0, VF_DEP_POP_PREV), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_DEADLOCK, 0, VF_OP_SAVE, 1);
    }
}

/* The step rule: FRAME starts a frame; a step stops before the next FRAME,
 * after a BARRIER, at END or at the end of the stream. */
static void test_step_rule()
{
    Env e(1 << 16);
    const View v = alloc_view(e, 2, 2, 8, 0);
    const vf_insn_t ld = mk_mem(VF_OP_LOAD_TILE, v.addr, 0, 2, 2, 8, 8, 0, 0, 2, 2);
    const vf_insn_t sv = mk_mem(VF_OP_SAVE, v.addr, 0, 2, 2, 8, 8, 0, 0, 2, 2);
    e.prog = {
        ld,                           /* 0: no FRAME before the first body */
        mk_marker(VF_OP_FRAME, 1),    /* 1 */
        ld,                           /* 2 */
        blank(VF_OP_NOP, 0xff, 0xff), /* 3: NOP ignores deps and flags */
        mk_marker(VF_OP_FRAME, 2),    /* 4: an empty frame */
        mk_marker(VF_OP_FRAME, 3),    /* 5 */
        sv,                           /* 6 */
        mk_marker(VF_OP_BARRIER),     /* 7 */
        ld,                           /* 8 */
        mk_marker(VF_OP_BARRIER),     /* 9 */
        mk_marker(VF_OP_END),         /* 10 */
        sv,                           /* 11: after END, never runs */
    };
    e.place_program();
    e.snapshot();
    struct Expect {
        uint32_t ret, pc, insns, frames;
    } steps[] = {
        {VF_STEP_FRAME, 1, 1, 0}, {VF_STEP_FRAME, 4, 4, 1}, {VF_STEP_FRAME, 5, 5, 2}, {VF_STEP_FRAME, 8, 8, 3},
        {VF_STEP_FRAME, 10, 10, 3}, {VF_STEP_END, 11, 11, 3}, {VF_STEP_END, 11, 11, 3},
    };
    for (const Expect &x : steps) {
        const uint32_t r = e.step();
        g_ctx = "pc " + std::to_string(x.pc);
        CHECK_EQ(r, x.ret);
        CHECK_EQ(e.st.pc, x.pc);
        CHECK_EQ(e.cnt.insns, x.insns);
        CHECK_EQ(e.cnt.frames, x.frames);
        CHECK_EQ(e.st.fault, VF_FAULT_NONE);
    }
    CHECK_EQ(e.st.running, 0);
    e.model_run(10);
    CHECK(e.same_as_model());
    CHECK_EQ(e.iters[11], 0xdeadbeefu);
    CHECK_EQ(e.iters[3], 0);
    CHECK_EQ(e.iters[10], 0);
    CHECK_EQ(e.iters[2], expect_iters(ld));

    /* a stream without END ends when exhausted; a BARRIER last ends it too */
    {
        Env f(1 << 16);
        f.prog = {mk_marker(VF_OP_FRAME), ld, mk_marker(VF_OP_FRAME), ld};
        f.place_program();
        g_ctx = "exhausted";
        CHECK_EQ(f.step(), VF_STEP_FRAME);
        CHECK_EQ(f.step(), VF_STEP_END);
        CHECK_EQ(f.st.pc, 4);
        CHECK_EQ(f.st.running, 0);
        CHECK_EQ(f.step(), VF_STEP_END);
        CHECK_EQ(f.cnt.insns, 4);
    }
    {
        Env f(1 << 16);
        f.prog = {ld, mk_marker(VF_OP_BARRIER)};
        f.place_program();
        g_ctx = "barrier last";
        CHECK_EQ(f.step(), VF_STEP_END);
        CHECK_EQ(f.st.running, 0);
        CHECK_EQ(f.cnt.insns, 2);
    }
    {
        Env f(1 << 16);
        f.prog.clear();
        f.place_program();
        g_ctx = "empty";
        CHECK_EQ(vf_cnn_core_step(f.seg(), f.limit, 0, 0, &f.bufs, &f.st, &f.cnt, NULL), VF_STEP_END);
        CHECK_EQ(f.cnt.insns, 0);
    }
    /* counters and iters are optional */
    {
        Env f(1 << 16);
        f.prog = {mk_marker(VF_OP_FRAME), ld, mk_marker(VF_OP_END)};
        f.place_program();
        g_ctx = "no counters";
        CHECK_EQ(vf_cnn_core_step(f.seg(), f.limit, f.insn_offset, 3, &f.bufs, &f.st, NULL, NULL), VF_STEP_END);
        CHECK_EQ(f.st.fault, VF_FAULT_NONE);
    }
}

/* brute force: lowest DDR offset >= limit touched by a tile access */
static uint64_t first_outside(const vf_insn_mem_t &m, uint64_t limit, bool load)
{
    uint64_t best = UINT64_MAX;
    for (long r = 0; r < m.tile_h; ++r)
        for (long c = 0; c < m.tile_w; ++c) {
            const long y = m.y0 + r, x = m.x0 + c;
            if (load && !(y >= 0 && y < m.height && x >= 0 && x < m.width))
                continue;
            for (long k = 0; k < m.channels; ++k) {
                const uint64_t a = m.dram_addr + ((uint64_t)y * m.width + (uint64_t)x) * m.pixel_stride + (uint64_t)k;
                if (a >= limit && a < best)
                    best = a;
            }
        }
    return best;
}

static void test_fault_segment()
{
    /* LOAD_TILE / SAVE views that cross seg_limit, dense and strided */
    for (int t = 0; t < 80; ++t) {
        const bool load = t % 2 == 0;
        Env e(1 << 14);
        const uint32_t ch = 1 + rnd(20), ps = ch + (t % 4 < 2 ? 0 : rnd(10));
        const uint32_t h = 1 + rnd(12), w = 1 + rnd(12);
        const uint32_t bytes = h * w * ps;
        /* place the view so that it ends past the limit */
        const uint32_t dram = e.limit - rnd(bytes) - 1 + (t % 7 == 0 ? rnd(100) : 0);
        const uint32_t th = 1 + rnd(h), tw = 1 + rnd(w);
        const int32_t y0 = load ? (int32_t)rnd(h + 2) - 1 : (int32_t)rnd(h - th + 1);
        const int32_t x0 = load ? (int32_t)rnd(w + 2) - 1 : (int32_t)rnd(w - tw + 1);
        vf_insn_t m = mk_mem(load ? VF_OP_LOAD_TILE : VF_OP_SAVE, dram, 0, h, w, ps, ch, y0, x0, th, tw, 3);
        const uint64_t first = first_outside(m.mem, e.limit, load);
        g_ctx = "trial " + std::to_string(t) + (load ? " load" : " save");
        e.prog = {mk_marker(VF_OP_FRAME), m, mk_marker(VF_OP_END)};
        e.place_program();
        if (first == UINT64_MAX)
            e.expect_clean_run();
        else
            e.expect_fault(VF_FAULT_SEGMENT, 1, m.head.opcode, first);
    }
    /* exactly at the limit, and one byte past it */
    for (int t = 0; t < 16; ++t) {
        const bool load = t & 1, strided = t & 2, over = t & 4, wide = t & 8;
        Env e(1 << 14);
        const uint32_t ch = 5, ps = strided ? 9 : ch, h = 3, w = wide ? 7 : 4;
        /* the tile's last byte is the view's last byte */
        const uint32_t span = ((h - 1) * w + (w - 1)) * ps + ch;
        const uint32_t dram = e.limit - span + (over ? 1 : 0);
        vf_insn_t m = mk_mem(load ? VF_OP_LOAD_TILE : VF_OP_SAVE, dram, 0, h, w, ps, ch, 0, 0, h, w, 3);
        if (load) { /* padding before, the last pixel inside */
            m.mem.y0 = -1;
            m.mem.x0 = -1;
            m.mem.tile_h = (uint16_t)(h + 1);
            m.mem.tile_w = (uint16_t)(w + 1);
        }
        g_ctx = std::string("limit ") + (load ? "load" : "save") + (strided ? " strided" : " dense") +
                (over ? " +1" : " exact");
        e.prog = {mk_marker(VF_OP_FRAME), m, mk_marker(VF_OP_END)};
        e.place_program();
        if (over)
            e.expect_fault(VF_FAULT_SEGMENT, 1, m.head.opcode, e.limit);
        else
            e.expect_clean_run();
    }
    /* extreme addresses: no wrap-around */
    {
        Env e(1 << 14);
        g_ctx = "load at 0xffffffff";
        e.prog = {mk_mem(VF_OP_LOAD_TILE, 0xffffffffu, 0, 1, 1, 1, 1, 0, 0, 1, 1), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_SEGMENT, 0, VF_OP_LOAD_TILE, 0xffffffffu);
    }
    {
        Env e(1 << 14);
        g_ctx = "save huge view";
        /* the tile's only byte lies beyond 4 GiB: fault_addr saturates */
        e.prog = {mk_mem(VF_OP_SAVE, 0xfffff000u, 0, 0xffff, 0xffff, 1, 1, 0x7fff, 0x7fff, 1, 1),
                  mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_SEGMENT, 0, VF_OP_SAVE, 0xffffffffu);
    }
    /* LOAD_LINEAR */
    {
        Env e(1 << 14);
        g_ctx = "linear crossing";
        e.prog = {mk_linear(e.limit - 10, 0, 64, VF_BUF_WGT), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_SEGMENT, 0, VF_OP_LOAD_LINEAR, e.limit);
    }
    {
        Env e(1 << 14);
        g_ctx = "linear wrap";
        e.prog = {mk_marker(VF_OP_FRAME), mk_linear(0xfffffff0u, 0, 0x20, VF_BUF_PARAM), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_SEGMENT, 1, VF_OP_LOAD_LINEAR, 0xfffffff0u);
    }
    /* the instructions before the faulting one (same unit) did run */
    {
        Env e(1 << 14);
        g_ctx = "earlier load ran";
        e.prog = {mk_linear(0, 0, 256, VF_BUF_WGT), mk_linear(e.limit - 4, 256, 8, VF_BUF_WGT), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_SEGMENT, 1, VF_OP_LOAD_LINEAR, e.limit);
        CHECK_EQ(e.iters[0], expect_iters(e.prog[0]));
        CHECK_EQ(e.cnt.insns, 1);
    }
}

static void test_fault_fetch()
{
    /* the program runs off the end of the segment */
    {
        Env e(4096);
        const View v = alloc_view(e, 1, 4, 4, 0);
        e.prog = {mk_marker(VF_OP_FRAME), mk_mem(VF_OP_LOAD_TILE, v.addr, 0, 1, 4, 4, 4, 0, 0, 1, 4),
                  mk_marker(VF_OP_FRAME), mk_mem(VF_OP_LOAD_TILE, v.addr, 64, 1, 4, 4, 4, 0, 0, 1, 4)};
        e.insn_offset = e.limit - 3 * 64; /* the 4th instruction is outside */
        memcpy(e.seg() + e.insn_offset, e.prog.data(), 3 * 64);
        e.iters.assign(4, 0);
        g_ctx = "fetch crossing";
        e.snapshot();
        CHECK_EQ(e.step(), VF_STEP_FRAME);
        CHECK_EQ(e.step(), VF_STEP_FAULT);
        CHECK_EQ(e.st.fault, VF_FAULT_FETCH);
        CHECK_EQ(e.st.fault_insn, 3);
        CHECK_EQ(e.st.fault_addr, e.limit);
        CHECK_EQ(e.st.fault_opcode, 0xffffffffu);
        e.model_run(2);
        CHECK(e.same_as_model());
        CHECK(e.guards_intact());
    }
    /* an instruction straddling the limit */
    {
        Env e(4096);
        e.prog = {mk_marker(VF_OP_END)};
        e.insn_offset = e.limit - 32;
        e.iters.assign(1, 0);
        g_ctx = "straddling";
        e.snapshot();
        CHECK_EQ(e.step(), VF_STEP_FAULT);
        CHECK_EQ(e.st.fault, VF_FAULT_FETCH);
        CHECK_EQ(e.st.fault_insn, 0);
        CHECK_EQ(e.st.fault_addr, e.limit);
        CHECK(e.same_as_model());
        CHECK(e.guards_intact());
    }
    /* the last instruction ends exactly at the limit / one byte past it */
    for (uint32_t over = 0; over < 2; ++over) {
        Env e(4096);
        e.prog = {mk_marker(VF_OP_END)};
        e.insn_offset = e.limit - 64 + over;
        memcpy(e.seg() + e.insn_offset, e.prog.data(), 64 - over);
        e.iters.assign(1, 0);
        g_ctx = over ? "one byte past" : "exactly at the limit";
        e.snapshot();
        CHECK_EQ(e.step(), over ? VF_STEP_FAULT : VF_STEP_END);
        CHECK_EQ(e.st.fault, over ? VF_FAULT_FETCH : VF_FAULT_NONE);
        CHECK_EQ(e.st.fault_addr, over ? e.limit : 0);
        CHECK(e.same_as_model());
        CHECK(e.guards_intact());
    }
    /* offsets near 4 GiB do not wrap */
    {
        Env e(4096);
        e.prog = {mk_marker(VF_OP_END)};
        e.iters.assign(4, 0);
        g_ctx = "offset wrap";
        e.snapshot();
        CHECK_EQ(vf_cnn_core_step(e.seg(), e.limit, 0xffffffc0u, 4, &e.bufs, &e.st, &e.cnt, e.iters.data()),
                 VF_STEP_FAULT);
        CHECK_EQ(e.st.fault, VF_FAULT_FETCH);
        CHECK_EQ(e.st.fault_addr, 0xffffffc0u);
        CHECK(e.same_as_model());
        CHECK(e.guards_intact());
    }
    /* a NULL segment has no bytes */
    {
        Env e(4096);
        g_ctx = "null segment";
        CHECK_EQ(vf_cnn_core_step(NULL, 4096, 0, 1, &e.bufs, &e.st, &e.cnt, NULL), VF_STEP_FAULT);
        CHECK_EQ(e.st.fault, VF_FAULT_FETCH);
    }
}

/* One faulting instruction after a setup frame; checks that nothing of it was
 * written. */
static void expect_single_fault(const char *name, const vf_insn_t &bad, uint32_t fault, uint64_t addr)
{
    Env e(1 << 16);
    g_ctx = name;
    const View v = alloc_view(e, 2, 2, 4, 0);
    e.prog = {mk_marker(VF_OP_FRAME), mk_mem(VF_OP_LOAD_TILE, v.addr, 8, 2, 2, 4, 4, 0, 0, 2, 2),
              mk_marker(VF_OP_FRAME), bad, mk_marker(VF_OP_END)};
    e.place_program();
    e.expect_fault(fault, 3, bad.head.opcode, addr);
}

static void test_fault_buffer()
{
    ConvShape s = {2, 8, 8, 3, 3, 1, 1, 6, 6, 4, 4};
    const uint32_t F = VF_CONV_ACC_INIT | VF_CONV_ACC_FINAL;
    expect_single_fault("load ibuf", mk_mem(VF_OP_LOAD_TILE, 0, VF_IBUF_BYTES - 20, 4, 4, 4, 4, 0, 0, 2, 3),
                        VF_FAULT_BUFFER, VF_IBUF_BYTES);
    expect_single_fault("load ibuf start", mk_mem(VF_OP_LOAD_TILE, 0, 0xfffffff0u, 4, 4, 4, 4, 0, 0, 1, 1),
                        VF_FAULT_BUFFER, 0xfffffff0u);
    expect_single_fault("save obuf", mk_mem(VF_OP_SAVE, 0, VF_OBUF_BYTES - 1, 4, 4, 4, 4, 0, 0, 1, 1),
                        VF_FAULT_BUFFER, VF_OBUF_BYTES);
    expect_single_fault("linear wbuf", mk_linear(0, VF_WBUF_BYTES - VF_AXI_BYTES, VF_AXI_BYTES + 8, VF_BUF_WGT),
                        VF_FAULT_BUFFER, VF_WBUF_BYTES);
    expect_single_fault("linear param",
                        mk_linear(0, VF_PARAM_ENTRIES * 12 - 8, 16, VF_BUF_PARAM), VF_FAULT_BUFFER,
                        VF_PARAM_ENTRIES * 12);
    expect_single_fault("conv ibuf", mk_conv(s, F, VF_IBUF_BYTES - 100, 0, 0, 0, 0), VF_FAULT_BUFFER, VF_IBUF_BYTES);
    expect_single_fault("conv wbuf", mk_conv(s, F, 0, VF_WBUF_BYTES - VF_CONV_WORD, 0, 0, 0), VF_FAULT_BUFFER,
                        VF_WBUF_BYTES);
    expect_single_fault("conv obuf", mk_conv(s, F, 0, 0, VF_OBUF_BYTES - 100, 0, 0), VF_FAULT_BUFFER, VF_OBUF_BYTES);
    expect_single_fault("conv acc", mk_conv(s, VF_CONV_ACC_INIT, 0, 0, 0, VF_ACC_WORDS - 100, 0), VF_FAULT_BUFFER,
                        VF_ACC_WORDS);
    expect_single_fault("conv acc read", mk_conv(s, VF_CONV_ACC_FINAL, 0, 0, 0, VF_ACC_WORDS, 0), VF_FAULT_BUFFER,
                        VF_ACC_WORDS);
    expect_single_fault("conv param", mk_conv(s, F, 0, 0, 0, 0, VF_PARAM_ENTRIES - 15), VF_FAULT_BUFFER,
                        VF_PARAM_ENTRIES);
    {
        /* huge shapes saturate instead of wrapping */
        ConvShape big = {0xffff, 0xffff, 0xffff, 1, 1, 1, 1, 0xffff, 0xffff, 0xffff, 0xffff};
        expect_single_fault("conv saturated", mk_conv(big, F, 0, 0, 0, 0, 0), VF_FAULT_BUFFER, VF_IBUF_BYTES);
    }
    {
        vf_insn_t p = blank(VF_OP_POOL);
        p.pool.channels = 16;
        p.pool.kh = p.pool.kw = p.pool.sh = p.pool.sw = 1;
        p.pool.in_h = p.pool.in_w = p.pool.out_h = p.pool.out_w = 4;
        p.pool.valid_y1 = p.pool.valid_x1 = 4;
        p.pool.clip_lo = -128;
        p.pool.clip_hi = 127;
        p.pool.in_addr = VF_IBUF_BYTES - 255;
        expect_single_fault("pool ibuf", p, VF_FAULT_BUFFER, VF_IBUF_BYTES);
        p.pool.in_addr = 0;
        p.pool.out_addr = VF_OBUF_BYTES;
        expect_single_fault("pool obuf", p, VF_FAULT_BUFFER, VF_OBUF_BYTES);
    }
    {
        vf_insn_t a = blank(VF_OP_ADD);
        a.add.length = 100;
        a.add.clip_lo = -128;
        a.add.clip_hi = 127;
        a.add.b_addr = VF_IBUF_BYTES - 99;
        expect_single_fault("add b", a, VF_FAULT_BUFFER, VF_IBUF_BYTES);
        a.add.b_addr = 0;
        a.add.out_addr = 0xffffffffu;
        expect_single_fault("add out", a, VF_FAULT_BUFFER, 0xffffffffu);
    }
}

static void test_fault_opcode()
{
    vf_insn_t bad = blank(VF_OP_COUNT);
    expect_single_fault("opcode 10", bad, VF_FAULT_OPCODE, VF_OP_COUNT);
    bad = blank(0xff);
    expect_single_fault("opcode 255", bad, VF_FAULT_OPCODE, 0xff);
    /* an unknown opcode later in the step stops the step before anything of it runs */
    {
        Env e(1 << 16);
        g_ctx = "decode first";
        e.prog = {mk_marker(VF_OP_FRAME), mk_linear(0, 0, 64, VF_BUF_WGT), blank(77), mk_marker(VF_OP_END)};
        e.place_program();
        e.snapshot();
        CHECK_EQ(e.run(), VF_STEP_FAULT);
        CHECK_EQ(e.st.fault, VF_FAULT_OPCODE);
        CHECK_EQ(e.st.fault_insn, 2);
        CHECK_EQ(e.st.fault_opcode, 77);
        CHECK(e.same_as_model()); /* the LOAD_LINEAR did not run either */
        CHECK_EQ(e.cnt.insns, 1); /* only the FRAME retired */
    }
}

static void test_fault_field()
{
    const vf_insn_t ld = mk_mem(VF_OP_LOAD_TILE, 0, 0, 4, 4, 8, 8, -1, -1, 3, 3);
    const vf_insn_t sv = mk_mem(VF_OP_SAVE, 0, 0, 4, 4, 8, 8, 1, 1, 3, 3);
    ConvShape s = {2, 4, 4, 3, 3, 2, 2, 7, 7, 3, 3};
    const vf_insn_t cv = mk_conv(s, VF_CONV_ACC_INIT | VF_CONV_ACC_FINAL, 0, 0, 0, 0, 0);
    vf_insn_t pl = blank(VF_OP_POOL);
    pl.pool.channels = 8;
    pl.pool.kh = pl.pool.kw = 3;
    pl.pool.sh = pl.pool.sw = 2;
    pl.pool.in_h = pl.pool.in_w = 7;
    pl.pool.out_h = pl.pool.out_w = 3;
    pl.pool.valid_y0 = pl.pool.valid_x0 = 1;
    pl.pool.valid_y1 = pl.pool.valid_x1 = 6;
    pl.pool.clip_lo = -128;
    pl.pool.clip_hi = 127;
    vf_insn_t ad = blank(VF_OP_ADD);
    ad.add.length = 50;
    ad.add.clip_lo = -128;
    ad.add.clip_hi = 127;

    struct Case {
        const char *name;
        vf_insn_t insn;
        size_t field;
    };
    std::vector<Case> cases;
#define MUT(base, type, member, value, field)                                                          \
    do {                                                                                               \
        vf_insn_t x_ = base;                                                                           \
        x_.type.member = value;                                                                        \
        cases.push_back({#base "." #member "=" #value, x_, field});                                    \
    } while (0)
    MUT(ld, mem, channels, 0, offsetof(vf_insn_mem_t, channels));
    MUT(ld, mem, pixel_stride, 7, offsetof(vf_insn_mem_t, pixel_stride));
    MUT(ld, mem, height, 0, offsetof(vf_insn_mem_t, height));
    MUT(ld, mem, width, 0, offsetof(vf_insn_mem_t, width));
    MUT(ld, mem, tile_h, 0, offsetof(vf_insn_mem_t, tile_h));
    MUT(ld, mem, tile_w, 0, offsetof(vf_insn_mem_t, tile_w));
    MUT(ld, head, flags, 1, offsetof(vf_insn_head_t, flags));
    MUT(sv, mem, y0, -1, offsetof(vf_insn_mem_t, y0));
    MUT(sv, mem, x0, -1, offsetof(vf_insn_mem_t, x0));
    MUT(sv, mem, tile_h, 4, offsetof(vf_insn_mem_t, tile_h));
    MUT(sv, mem, tile_w, 4, offsetof(vf_insn_mem_t, tile_w));
    MUT(sv, mem, channels, 9, offsetof(vf_insn_mem_t, pixel_stride));
    MUT(cv, conv, groups, 0, offsetof(vf_insn_conv_t, groups));
    MUT(cv, conv, cin_g, 0, offsetof(vf_insn_conv_t, cin_g));
    MUT(cv, conv, cout_g, 0, offsetof(vf_insn_conv_t, cout_g));
    MUT(cv, conv, kh, 0, offsetof(vf_insn_conv_t, kh));
    MUT(cv, conv, kw, 0, offsetof(vf_insn_conv_t, kw));
    MUT(cv, conv, sh, 0, offsetof(vf_insn_conv_t, sh));
    MUT(cv, conv, sw, 0, offsetof(vf_insn_conv_t, sw));
    MUT(cv, conv, out_h, 0, offsetof(vf_insn_conv_t, out_h));
    MUT(cv, conv, out_w, 0, offsetof(vf_insn_conv_t, out_w));
    MUT(cv, conv, in_h, 6, offsetof(vf_insn_conv_t, in_h));
    MUT(cv, conv, in_w, 6, offsetof(vf_insn_conv_t, in_w));
    MUT(cv, conv, kh, 4, offsetof(vf_insn_conv_t, in_h));
    MUT(cv, head, flags, 4, offsetof(vf_insn_head_t, flags));
    MUT(pl, pool, channels, 0, offsetof(vf_insn_pool_t, channels));
    MUT(pl, pool, kh, 0, offsetof(vf_insn_pool_t, kh));
    MUT(pl, pool, sw, 0, offsetof(vf_insn_pool_t, sw));
    MUT(pl, pool, out_w, 0, offsetof(vf_insn_pool_t, out_w));
    MUT(pl, pool, in_h, 6, offsetof(vf_insn_pool_t, in_h));
    MUT(pl, pool, in_w, 6, offsetof(vf_insn_pool_t, in_w));
    MUT(pl, pool, kw, 4, offsetof(vf_insn_pool_t, in_w));
    MUT(pl, pool, out_h, 4, offsetof(vf_insn_pool_t, in_h));
    MUT(pl, pool, sh, 0, offsetof(vf_insn_pool_t, sh));
    MUT(pl, pool, valid_x0, 7, offsetof(vf_insn_pool_t, valid_x0));
    MUT(pl, pool, valid_y0, 7, offsetof(vf_insn_pool_t, valid_y0));
    MUT(pl, pool, valid_y1, 8, offsetof(vf_insn_pool_t, valid_y1));
    MUT(pl, pool, valid_x1, 8, offsetof(vf_insn_pool_t, valid_x1));
    MUT(pl, pool, shift, 31, offsetof(vf_insn_pool_t, shift));
    MUT(pl, head, flags, 4, offsetof(vf_insn_head_t, flags));
    MUT(ad, add, length, 0, offsetof(vf_insn_add_t, length));
    MUT(ad, add, shift, 63, offsetof(vf_insn_add_t, shift));
    MUT(ad, head, flags, 1, offsetof(vf_insn_head_t, flags));
    {
        vf_insn_t l = mk_linear(0, 0, 16, 2);
        cases.push_back({"linear buffer 2", l, offsetof(vf_insn_linear_t, buffer)});
        l = mk_linear(0, 2, 16, VF_BUF_PARAM);
        cases.push_back({"param buf_addr % 4", l, offsetof(vf_insn_linear_t, buf_addr)});
        l = mk_linear(0, 0, 14, VF_BUF_PARAM);
        cases.push_back({"param nbytes % 4", l, offsetof(vf_insn_linear_t, nbytes)});
        l = mk_linear(0, 0, 0, VF_BUF_WGT);
        cases.push_back({"linear nbytes 0", l, offsetof(vf_insn_linear_t, nbytes)});
        l = mk_linear(0, VF_AXI_BYTES / 2, 16, VF_BUF_WGT);
        cases.push_back({"wbuf buf_addr % VF_AXI_BYTES", l, offsetof(vf_insn_linear_t, buf_addr)});
    }
    /* deps a unit cannot use */
    {
        vf_insn_t x = ld;
        x.head.deps = VF_DEP_POP_PREV;
        cases.push_back({"load pop prev", x, offsetof(vf_insn_head_t, deps)});
        x = sv;
        x.head.deps = VF_DEP_PUSH_NEXT;
        cases.push_back({"save push next", x, offsetof(vf_insn_head_t, deps)});
        x = cv;
        x.head.deps = 0x10;
        cases.push_back({"compute deps 0x10", x, offsetof(vf_insn_head_t, deps)});
    }
    {
        vf_insn_t x = cv;
        x.conv.clip_lo = 5;
        x.conv.clip_hi = 4;
        cases.push_back({"conv clip_lo > clip_hi", x, offsetof(vf_insn_conv_t, clip_lo)});
        /* weights start on a beat word; a misaligned wgt_addr is a field fault even where it is also out of WBUF */
        x = cv;
        x.conv.wgt_addr = VF_CONV_WORD / 2;
        cases.push_back({"conv wgt_addr not word aligned", x, offsetof(vf_insn_conv_t, wgt_addr)});
        x.conv.wgt_addr = VF_WBUF_BYTES + 1;
        cases.push_back({"conv wgt_addr misaligned past WBUF", x, offsetof(vf_insn_conv_t, wgt_addr)});
        x = cv;
        x.conv.cin_g = 1;
        x.conv.wgt_addr = 1;
        cases.push_back({"depthwise wgt_addr not word aligned", x, offsetof(vf_insn_conv_t, wgt_addr)});
        x = pl;
        x.pool.clip_lo = 0;
        x.pool.clip_hi = -1;
        cases.push_back({"pool clip_lo > clip_hi", x, offsetof(vf_insn_pool_t, clip_lo)});
        x = ad;
        x.add.clip_lo = 127;
        x.add.clip_hi = 126;
        cases.push_back({"add clip_lo > clip_hi", x, offsetof(vf_insn_add_t, clip_lo)});
    }
    for (const Case &c : cases)
        expect_single_fault(c.name, c.insn, VF_FAULT_FIELD, c.field);

    /* a PARAM shift outside [0, 62] under ACC_FINAL, found before any output */
    {
        Env e(1 << 16);
        g_ctx = "param shift";
        std::vector<int32_t> prm(s.groups * s.cout_g * 3, 0);
        for (size_t i = 0; i < prm.size(); i += 3)
            prm[i + 2] = 10;
        prm[prm.size() - 1] = 63;
        const uint32_t psrc = put_params(e, prm);
        e.prog = {mk_marker(VF_OP_FRAME), mk_linear(psrc, 0, (uint32_t)prm.size() * 4, VF_BUF_PARAM),
                  mk_marker(VF_OP_FRAME), cv, mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_FIELD, 3, VF_OP_CONV, offsetof(vf_insn_conv_t, param_addr));
    }
    /* a faulting SAVE writes nothing, whatever the reason */
    {
        Env e(1 << 12);
        g_ctx = "save writes nothing";
        /* the last pixel crosses the limit */
        e.prog = {mk_mem(VF_OP_SAVE, e.limit - 4 * 4 * 8 + 4, 0, 4, 4, 8, 8, 0, 0, 4, 4), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_SEGMENT, 0, VF_OP_SAVE, e.limit);
    }
}

/* deps usually legal for the opcode's unit, sometimes anything */
static uint8_t fz_deps(uint8_t opcode)
{
    if (edge())
        return (uint8_t)rnd64();
    if (rnd(6))
        return 0;
    const uint8_t load = VF_DEP_POP_NEXT | VF_DEP_PUSH_NEXT, save = VF_DEP_POP_PREV | VF_DEP_PUSH_PREV;
    const uint8_t allowed = opcode == VF_OP_LOAD_TILE || opcode == VF_OP_LOAD_LINEAR ? load
                            : opcode == VF_OP_SAVE                                    ? save
                                                                                      : (uint8_t)(load | save);
    return (uint8_t)(rnd64() & allowed);
}

/* Fuzzed instruction streams: never touch memory outside the segment or the
 * buffers (guards + ASan), never hang, a fault is sticky. */
static void test_fuzz()
{
    static const uint8_t ops[] = {VF_OP_LOAD_TILE, VF_OP_LOAD_TILE, VF_OP_LOAD_LINEAR, VF_OP_CONV, VF_OP_CONV,
                                  VF_OP_POOL,      VF_OP_ADD,       VF_OP_SAVE,        VF_OP_SAVE, VF_OP_NOP,
                                  VF_OP_FRAME,     VF_OP_BARRIER,   VF_OP_LUT,         VF_OP_MUL};
    const int programs = 1500;
    TbFuzzTally f;
    memset(&f, 0, sizeof f);
    for (int t = 0; t < programs; ++t) {
        Env e(1 << 14);
        static const uint32_t levels[] = {6, 24, 100, 1000};
        g_edge = levels[t % 4];
        const uint32_t n = 1 + rnd(24);
        e.prog.resize(n);
        for (uint32_t i = 0; i < n; ++i) {
            vf_insn_t &x = e.prog[i];
            fill_random(x.raw, sizeof x.raw);
            if (rnd(4 * g_edge) == 0)
                continue; /* all 64 bytes random */
            x.head.opcode = rnd(4 * g_edge) == 0 ? (uint8_t)(VF_OP_COUNT + rnd(246)) : ops[rnd(sizeof ops)];
            if (rnd(60) == 0)
                x.head.opcode = VF_OP_END;
            x.head.deps = fz_deps(x.head.opcode);
            x.head.flags = (uint16_t)(!edge() ? rnd(4) : rnd64());
            switch (x.head.opcode) {
            case VF_OP_LOAD_TILE:
            case VF_OP_SAVE:
                x.mem.dram_addr = !edge() ? rnd(e.limit) : (uint32_t)rnd64();
                x.mem.buf_addr = !edge() ? rnd(4096) : (uint32_t)rnd64();
                x.mem.height = (uint16_t)fz(1, 9);
                x.mem.width = (uint16_t)fz(1, 9);
                x.mem.channels = (uint16_t)fz(1, 40);
                x.mem.pixel_stride = (uint16_t)(!edge() ? x.mem.channels + rnd(5) : fz(0, 50));
                x.mem.y0 = (int16_t)(!edge() ? (int32_t)rnd(12) - 3 : (int16_t)rnd64());
                x.mem.x0 = (int16_t)(!edge() ? (int32_t)rnd(12) - 3 : (int16_t)rnd64());
                x.mem.tile_h = (uint16_t)fz(1, 9);
                x.mem.tile_w = (uint16_t)fz(1, 9);
                x.mem.step_y = (uint8_t)(!edge() ? (rnd(4) ? 0 : rnd(3)) : rnd64());
                x.mem.step_x = (uint8_t)(!edge() ? (rnd(4) ? 0 : rnd(3)) : rnd64());
                if (x.head.opcode == VF_OP_SAVE && !edge()) { /* mostly inside the view */
                    x.mem.y0 = (int16_t)rnd(x.mem.height ? x.mem.height : 1);
                    x.mem.x0 = (int16_t)rnd(x.mem.width ? x.mem.width : 1);
                    x.mem.tile_h = (uint16_t)(1 + rnd(x.mem.height > x.mem.y0 ? x.mem.height - x.mem.y0 : 1));
                    x.mem.tile_w = (uint16_t)(1 + rnd(x.mem.width > x.mem.x0 ? x.mem.width - x.mem.x0 : 1));
                }
                if (!edge())
                    x.head.flags = 0;
                break;
            case VF_OP_LOAD_LINEAR:
                x.linear.dram_addr = !edge() ? rnd(e.limit) : (uint32_t)rnd64();
                x.linear.buf_addr = !edge() ? 4 * rnd(2048) : (uint32_t)rnd64();
                x.linear.nbytes = !edge() ? 4 * (1 + rnd(800)) : (uint32_t)rnd64();
                x.linear.buffer = (uint8_t)(!edge() ? rnd(2) : rnd64());
                if (!edge())
                    x.head.flags = 0;
                break;
            case VF_OP_CONV:
                x.conv.in_addr = !edge() ? rnd(4096) : (uint32_t)rnd64();
                x.conv.wgt_addr = !edge() ? VF_CONV_WORD * rnd(4096 / VF_CONV_WORD + 1) : (uint32_t)rnd64();
                x.conv.out_addr = !edge() ? rnd(4096) : (uint32_t)rnd64();
                x.conv.acc_addr = !edge() ? rnd(1024) : (uint32_t)rnd64();
                x.conv.param_addr = (uint16_t)fz(0, 64);
                x.conv.groups = (uint16_t)fz(1, 3);
                x.conv.cin_g = (uint16_t)(rnd(3) ? 1 : fz(1, 20));
                x.conv.cout_g = (uint16_t)fz(1, 20);
                x.conv.kh = (uint8_t)fz(1, 3);
                x.conv.kw = (uint8_t)fz(1, 3);
                x.conv.sh = (uint8_t)fz(1, 2);
                x.conv.sw = (uint8_t)fz(1, 2);
                x.conv.out_h = (uint16_t)fz(1, 5);
                x.conv.out_w = (uint16_t)fz(1, 5);
                x.conv.in_h = (uint16_t)((x.conv.out_h - 1) * x.conv.sh + x.conv.kh + (!edge() ? 0 : (int)rnd(3) - 1));
                x.conv.in_w = (uint16_t)((x.conv.out_w - 1) * x.conv.sw + x.conv.kw + (!edge() ? 0 : (int)rnd(3) - 1));
                x.conv.clip_lo = (int8_t)(!edge() ? -128 : rnd_i8());
                x.conv.clip_hi = (int8_t)(!edge() ? 127 : rnd_i8());
                break;
            case VF_OP_POOL:
                x.pool.in_addr = !edge() ? rnd(4096) : (uint32_t)rnd64();
                x.pool.out_addr = !edge() ? rnd(4096) : (uint32_t)rnd64();
                x.pool.channels = (uint16_t)fz(1, 40);
                x.pool.kh = (uint16_t)fz(1, 3);
                x.pool.kw = (uint16_t)fz(1, 3);
                x.pool.sh = (uint8_t)fz(1, 2);
                x.pool.sw = (uint8_t)fz(1, 2);
                x.pool.out_h = (uint16_t)fz(1, 5);
                x.pool.out_w = (uint16_t)fz(1, 5);
                x.pool.in_h = (uint16_t)((x.pool.out_h - 1) * x.pool.sh + x.pool.kh + (!edge() ? 0 : (int)rnd(3) - 1));
                x.pool.in_w = (uint16_t)((x.pool.out_w - 1) * x.pool.sw + x.pool.kw + (!edge() ? 0 : (int)rnd(3) - 1));
                x.pool.valid_y1 = (uint16_t)(!edge() ? x.pool.in_h - rnd(2) : fz(0, 20));
                x.pool.valid_y0 = (uint16_t)(!edge() ? rnd(x.pool.valid_y1 < 2 ? x.pool.valid_y1 + 1 : 3) : fz(0, 3));
                x.pool.valid_x1 = (uint16_t)(!edge() ? x.pool.in_w - rnd(2) : fz(0, 20));
                x.pool.valid_x0 = (uint16_t)(!edge() ? rnd(x.pool.valid_x1 < 2 ? x.pool.valid_x1 + 1 : 3) : fz(0, 3));
                x.pool.shift = (uint8_t)(!edge() ? rnd(31) : rnd64());
                x.pool.clip_lo = (int8_t)(!edge() ? -128 : rnd_i8());
                x.pool.clip_hi = (int8_t)(!edge() ? 127 : rnd_i8());
                break;
            case VF_OP_LUT:
                x.lut.in_addr = !edge() ? rnd(8192) : (uint32_t)rnd64();
                x.lut.out_addr = !edge() ? (rnd(2) ? x.lut.in_addr : rnd(8192)) : (uint32_t)rnd64();
                x.lut.table_addr = !edge() ? rnd(4096) : (uint32_t)rnd64();
                x.lut.length = fz(1, 2000);
                if (!edge())
                    x.head.flags &= VF_LUT_SRC_OBUF;
                break;
            case VF_OP_MUL:
                x.mul.a_addr = !edge() ? rnd(8192) : (uint32_t)rnd64();
                x.mul.b_addr = !edge() ? rnd(8192) : (uint32_t)rnd64();
                x.mul.out_addr = !edge() ? rnd(8192) : (uint32_t)rnd64();
                x.mul.pixels = fz(1, 50);
                x.mul.channels = (uint16_t)fz(1, 60);
                x.mul.shift = (uint8_t)(!edge() ? rnd(63) : rnd64());
                x.mul.clip_lo = (int8_t)(!edge() ? -128 : rnd_i8());
                x.mul.clip_hi = (int8_t)(!edge() ? 127 : rnd_i8());
                if (!edge())
                    x.head.flags &= VF_MUL_BCAST;
                break;
            case VF_OP_ADD:
                x.add.a_addr = !edge() ? rnd(8192) : (uint32_t)rnd64();
                x.add.b_addr = !edge() ? rnd(8192) : (uint32_t)rnd64();
                x.add.out_addr = !edge() ? rnd(8192) : (uint32_t)rnd64();
                x.add.length = fz(1, 2000);
                x.add.shift = (uint8_t)(!edge() ? rnd(63) : rnd64());
                x.add.clip_lo = (int8_t)(!edge() ? -128 : rnd_i8());
                x.add.clip_hi = (int8_t)(!edge() ? 127 : rnd_i8());
                if (!edge())
                    x.head.flags = 0;
                break;
            default:
                break;
            }
        }
        e.place_program();
        /* PARAM shifts in range most of the time */
        for (size_t i = 2; i < e.param.size(); i += 3)
            e.param[i] = (int32_t)(rnd(50 * g_edge) ? rnd(63) : (uint32_t)rnd64());
        /* sometimes the program sticks out of the segment */
        tb_fuzz_run(f, e, e.prog, e.insn_offset, VF_OP_COUNT, e.st, e.cnt,
                    [&e](uint32_t offset, uint32_t count, uint32_t *it) {
                        return vf_cnn_core_step(e.seg(), e.limit, offset, count, &e.bufs, &e.st, &e.cnt, it);
                    },
                    t);
        if (g_checks_failed)
            return;
    }
    static const char *const names[] = {"load_tile", "load_linear", "conv", "pool", "add", "lut", "mul", "save"};
    static const uint8_t units[] = {VF_OP_LOAD_TILE, VF_OP_LOAD_LINEAR, VF_OP_CONV, VF_OP_POOL,
                                    VF_OP_ADD,       VF_OP_LUT,         VF_OP_MUL,  VF_OP_SAVE};
    tb_fuzz_report(f, programs, names, units, sizeof units);
}

/* The HLS top runs a whole program and reports through its registers. */
static void test_top()
{
    {
        Env e(1 << 19);
        ConvCase c;
        random_conv_case(c, 0, false);
        build_conv_program(e, c);
        g_ctx = "top conv";
        e.snapshot();
        /* the top's static buffers start with whatever an earlier run left:
         * the program loads everything it reads */
        const TbTopRun regs = tb_run_top(vf_cnn_core_top, e.seg(), e.limit, e.insn_offset, (uint32_t)e.prog.size());
        CHECK_EQ(regs.fault, VF_FAULT_NONE);
        CHECK_EQ(regs.insns, e.prog.size());
        uint64_t el = 0, ec = 0, es = 0;
        for (const vf_insn_t &p : e.prog) {
            const uint32_t u = p.head.opcode;
            (u == VF_OP_LOAD_TILE || u == VF_OP_LOAD_LINEAR ? el : u == VF_OP_SAVE ? es : ec) += expect_iters(p);
        }
        CHECK_EQ(regs.load_iters, el);
        CHECK_EQ(regs.compute_iters, ec);
        CHECK_EQ(regs.save_iters, es);
        e.model_run(e.prog.size());
        /* only the segment is visible: the top's buffers are its own */
        CHECK(memcmp(e.seg(), e.model.seg.data(), e.limit) == 0);
        CHECK(e.guards_intact());
    }
    {
        Env e(1 << 14);
        g_ctx = "top fault";
        e.prog = {mk_marker(VF_OP_FRAME), mk_linear(0, 0, 64, VF_BUF_WGT), mk_marker(VF_OP_FRAME),
                  mk_mem(VF_OP_SAVE, e.limit - 8, 0, 1, 2, 8, 8, 0, 0, 1, 2), mk_marker(VF_OP_END)};
        e.place_program();
        e.snapshot();
        const TbTopRun regs = tb_run_top(vf_cnn_core_top, e.seg(), e.limit, e.insn_offset, (uint32_t)e.prog.size());
        tb_check_top_fault(regs, e.limit, expect_iters(e.prog[1]));
        CHECK(memcmp(e.seg(), e.model.seg.data(), e.limit) == 0);
        CHECK(e.guards_intact());
    }
}

int main()
{
    printf("tb_cnn_core: ICP %d OCP %d AXI %d IBUF %d WBUF %d ACC %d OBUF %d PARAM %d%s\n", VF_ICP, VF_OCP,
           VF_AXI_BYTES, VF_IBUF_BYTES, VF_WBUF_BYTES, VF_ACC_WORDS, VF_OBUF_BYTES, VF_PARAM_ENTRIES, TB_BODIES);
    run_test("geometry", test_geometry);
    run_test("load_tile", test_load_tile);
    run_test("load_linear", test_load_linear);
    run_test("conv_random", test_conv_random);
    run_test("conv_split_accumulation", test_conv_split_accumulation);
    run_test("pool_random", test_pool_random);
    run_test("add_random", test_add_random);
    run_test("save_view", test_save_view);
    run_test("save_steps", test_save_steps);
    run_test("lut_random", test_lut_random);
    run_test("mul_random", test_mul_random);
    run_test("tokens_double_buffer", test_tokens_double_buffer);
    run_test("tokens_missing_give_wrong_order", test_tokens_missing_give_wrong_order);
    run_test("deadlock", test_deadlock);
    run_test("step_rule", test_step_rule);
    run_test("fault_segment", test_fault_segment);
    run_test("fault_fetch", test_fault_fetch);
    run_test("fault_buffer", test_fault_buffer);
    run_test("fault_opcode", test_fault_opcode);
    run_test("fault_field", test_fault_field);
    run_test("fuzz", test_fuzz);
    run_test("top", test_top);
    return tb_summary("tb_cnn_core");
}
