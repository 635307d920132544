/*
 * C-simulation testbench of the vfpga level-1 dispatcher (hls/dispatcher.cpp
 * and the HLS top hls/dispatcher_top.cpp) driving real CNN-core frames
 * (hls/cnn_core.cpp).
 *
 * A device-memory window holds the tenants' segments, separated by gaps of a
 * known byte pattern and surrounded by guard bytes (canaries, and under ASan
 * poisoned memory). Each tenant image is built from its own seed: weights,
 * inputs, CNN frames (conv 3x3 + ReLU, max-pool 2x2, conv 1x1; layers tiled
 * into row frames) or "counter" frames (each run adds 1 to a cell: a lost or
 * duplicated frame shows), dispatch programs for k slots, request ring and
 * completion records. Results are checked against a golden model written here
 * from vfpga_isa.h, against single-slot and alone runs of the same image, and
 * every byte of the window outside the segments that may change is compared
 * with its initial value.
 *
 * Schedules of the one free-running machine (include/vfpga_pool.h):
 * vf_dispatch_step() (every frame issued by an advance ends before the
 * next), an asynchronous harness that calls vf_dispatch_advance(), keeps
 * frames in flight across calls and retires them in random order (running
 * each on its core when it retires), as a cycle model would, the processes'
 * own iterations with some cores held busy for many dispatcher iterations,
 * and the synthesizable top itself. The harness checks at every issue: the
 * core was idle, it is the core the mapping rule names, and no frame before
 * the last BARRIER is still in flight.
 *
 * Runs with fixed seeds; prints "tb_dispatcher: N passed, M failed"; exit
 * status 0 when every test passes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "vfpga_dispatcher.h"
#include "vfpga_pool.h" /* the processes and the synthesizable top (hls/dispatcher_top.cpp) */
#define TB_TAG 0x2000u /* instruction tags of this testbench */
#include "tb_common.h"

/* the window through every bank port of the top */
#if VF_DDR_BANKS == 1
#define TB_PORTS(p) (p)
#elif VF_DDR_BANKS == 2
#define TB_PORTS(p) (p), (p)
#elif VF_DDR_BANKS == 3
#define TB_PORTS(p) (p), (p), (p)
#else
#define TB_PORTS(p) (p), (p), (p), (p)
#endif

/* The same streams on every host, one per seed. */
static void seed(uint64_t s) { g_rng = s * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull; }

static uint32_t popcount(uint32_t m)
{
    uint32_t n = 0;
    for (; m; m &= m - 1)
        ++n;
    return n;
}

static uint32_t nth_core(uint32_t m, uint32_t n)
{
    for (uint32_t c = 0; c < 32; ++c)
        if ((m >> c) & 1u) {
            if (n == 0)
                return c;
            --n;
        }
    return VF_DISP_NO_CORE;
}

static uint32_t all_cores() { return VF_CNN_CORES == 32 ? 0xffffffffu : (1u << VF_CNN_CORES) - 1u; }

/* cores [first, first + n) of the pool, wrapped */
static uint32_t cores_range(uint32_t first, uint32_t n)
{
    uint32_t m = 0;
    for (uint32_t i = 0; i < n && i < VF_CNN_CORES; ++i)
        m |= 1u << ((first + i) % VF_CNN_CORES);
    return m;
}

/* ========================================================================== */
/* Instruction builders                                                        */
/* ========================================================================== */

static vf_insn_t blank(uint8_t opcode, uint8_t deps = 0, uint16_t flags = 0)
{
    return tb_blank<vf_insn_t>(opcode, deps, flags);
}

static vf_insn_t mk_marker(uint8_t opcode, uint32_t frame_id, uint32_t layer)
{
    return tb_marker<vf_insn_t>(opcode, frame_id, layer);
}

static vf_insn_t mk_mem(uint8_t opcode, uint32_t dram, uint32_t buf, uint32_t h, uint32_t w, uint32_t ps, uint32_t ch,
                        int32_t y0, int32_t x0, uint32_t th, uint32_t tw, uint8_t deps)
{
    return tb_mem(opcode, deps, dram, buf, h, w, ps, ch, y0, x0, th, tw, 0);
}

static vf_insn_t mk_linear(uint32_t dram, uint32_t buf, uint32_t n, uint8_t buffer)
{
    return tb_linear(0, dram, buf, n, buffer);
}

static vf_insn_t mk_conv(uint32_t in_h, uint32_t in_w, uint32_t out_h, uint32_t out_w, uint32_t cin, uint32_t cout,
                         uint32_t k, int8_t zp, int8_t lo, int8_t hi)
{
    vf_insn_t i = blank(VF_OP_CONV, VF_DEP_POP_PREV | VF_DEP_PUSH_NEXT, VF_CONV_ACC_INIT | VF_CONV_ACC_FINAL);
    i.conv.in_h = (uint16_t)in_h;
    i.conv.in_w = (uint16_t)in_w;
    i.conv.out_h = (uint16_t)out_h;
    i.conv.out_w = (uint16_t)out_w;
    i.conv.groups = 1;
    i.conv.cin_g = (uint16_t)cin;
    i.conv.cout_g = (uint16_t)cout;
    i.conv.kh = (uint8_t)k;
    i.conv.kw = (uint8_t)k;
    i.conv.sh = 1;
    i.conv.sw = 1;
    i.conv.out_zp = zp;
    i.conv.clip_lo = lo;
    i.conv.clip_hi = hi;
    return i;
}

static vf_insn_t mk_maxpool2(uint32_t in_h, uint32_t in_w, uint32_t ch)
{
    vf_insn_t i = blank(VF_OP_POOL, VF_DEP_POP_PREV | VF_DEP_PUSH_NEXT);
    i.pool.in_h = (uint16_t)in_h;
    i.pool.in_w = (uint16_t)in_w;
    i.pool.out_h = (uint16_t)(in_h / 2);
    i.pool.out_w = (uint16_t)(in_w / 2);
    i.pool.channels = (uint16_t)ch;
    i.pool.kh = 2;
    i.pool.kw = 2;
    i.pool.sh = 2;
    i.pool.sw = 2;
    i.pool.valid_y0 = 0;
    i.pool.valid_y1 = (uint16_t)in_h;
    i.pool.valid_x0 = 0;
    i.pool.valid_x1 = (uint16_t)in_w;
    i.pool.mult = 1;
    i.pool.shift = 0;
    i.pool.clip_lo = -128;
    i.pool.clip_hi = 127;
    return i;
}

static vf_insn_t mk_add_inc(uint32_t b_addr, uint32_t n)
{
    vf_insn_t i = blank(VF_OP_ADD, VF_DEP_POP_PREV | VF_DEP_PUSH_NEXT);
    i.add.a_addr = 0;
    i.add.b_addr = b_addr;
    i.add.out_addr = 0;
    i.add.length = n;
    i.add.a_mult = 1;
    i.add.b_mult = 1;
    i.add.shift = 0;
    i.add.clip_lo = -128;
    i.add.clip_hi = 127;
    return i;
}

/* The cycle-model contract of tb_cnn_core.cpp for the opcodes used here. */
struct Iters {
    uint64_t load, compute, save, insns;
};

static void expect_iters(const vf_insn_t &i, Iters &it)
{
    it.insns += 1;
    switch (i.head.opcode) {
    case VF_OP_LOAD_TILE:
    case VF_OP_SAVE: {
        const vf_insn_mem_t &m = i.mem;
        const uint64_t n = m.pixel_stride == m.channels
                               ? (uint64_t)m.tile_h * cdiv((uint64_t)m.tile_w * m.channels, VF_AXI_BYTES)
                               : (uint64_t)m.tile_h * m.tile_w * cdiv(m.channels, VF_AXI_BYTES);
        (i.head.opcode == VF_OP_SAVE ? it.save : it.load) += n;
        break;
    }
    case VF_OP_LOAD_LINEAR:
        it.load += cdiv(i.linear.nbytes, VF_AXI_BYTES);
        break;
    case VF_OP_CONV: {
        const vf_insn_conv_t &c = i.conv;
        it.compute += (uint64_t)c.groups * c.out_h * c.out_w * c.kh * c.kw * cdiv(c.cin_g, VF_ICP) *
                      cdiv(c.cout_g, VF_OCP);
        break;
    }
    case VF_OP_POOL:
        it.compute +=
            (uint64_t)i.pool.out_h * i.pool.out_w * i.pool.kh * i.pool.kw * cdiv(i.pool.channels, VF_OCP);
        break;
    case VF_OP_ADD:
        it.compute += cdiv(i.add.length, VF_OCP);
        break;
    default:
        break;
    }
}

/* ========================================================================== */
/* Golden model (from the text of vfpga_isa.h)                                 */
/* ========================================================================== */

static int64_t ref_rshift_round(int64_t v, int s) { return s == 0 ? v : (v + ((int64_t)1 << (s - 1))) >> s; }
static int8_t ref_clamp(int64_t v, int lo, int hi) { return (int8_t)(v < lo ? lo : v > hi ? hi : v); }
static int32_t wrap32(int64_t v) { return (int32_t)(uint32_t)(uint64_t)v; }

/* HWC conv, square kernel k, stride 1, zero padding pad; weights [co][ky][kx][ci] */
static void ref_conv(const int8_t *in, int H, int W, int C, const int8_t *w, const int32_t *prm, int k, int pad,
                     int CO, int zp, int lo, int hi, int8_t *out)
{
    const int OH = H + 2 * pad - k + 1, OW = W + 2 * pad - k + 1;
    for (int y = 0; y < OH; ++y)
        for (int x = 0; x < OW; ++x)
            for (int co = 0; co < CO; ++co) {
                int64_t acc = prm[co * 3];
                for (int ky = 0; ky < k; ++ky)
                    for (int kx = 0; kx < k; ++kx) {
                        const int iy = y + ky - pad, ix = x + kx - pad;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                            continue;
                        for (int ci = 0; ci < C; ++ci)
                            acc += (int64_t)in[((size_t)iy * W + ix) * C + ci] * w[((co * k + ky) * k + kx) * C + ci];
                    }
                const int32_t a = wrap32(acc);
                out[((size_t)y * OW + x) * CO + co] =
                    ref_clamp(zp + ref_rshift_round((int64_t)a * prm[co * 3 + 1], prm[co * 3 + 2]), lo, hi);
            }
}

static void ref_maxpool2(const int8_t *in, int H, int W, int C, int8_t *out)
{
    for (int y = 0; y < H / 2; ++y)
        for (int x = 0; x < W / 2; ++x)
            for (int c = 0; c < C; ++c) {
                int v = -128;
                for (int dy = 0; dy < 2; ++dy)
                    for (int dx = 0; dx < 2; ++dx) {
                        const int p = in[((size_t)(2 * y + dy) * W + 2 * x + dx) * C + c];
                        v = p > v ? p : v;
                    }
                out[((size_t)y * (W / 2) + x) * C + c] = (int8_t)v;
            }
}

/* per-output-channel {bias, mult, shift} for n products of int8 values */
static std::vector<int32_t> random_params(uint32_t cout, double n, double in_mag)
{
    std::vector<int32_t> p(cout * 3);
    for (uint32_t o = 0; o < cout; ++o) {
        const int32_t mult = (int32_t)rrange(1 << 29, (1 << 30) - 1);
        int shift = 0;
        const double acc = in_mag * 60.0 * __builtin_sqrt(n);
        while ((double)(1ull << shift) < acc * mult / 30.0 && shift < 62)
            ++shift;
        p[o * 3] = (int32_t)rrange(-3000, 3000);
        p[o * 3 + 1] = rnd(4) ? mult : -mult;
        p[o * 3 + 2] = shift;
    }
    return p;
}

/* ========================================================================== */
/* Device: memory window, cores, dispatcher                                    */
/* ========================================================================== */

static const uint64_t MEM_BASE = 0x400000000ull; /* physical address of the window (u200 DDR base) */

static int8_t fill_pattern(uint64_t i) { return (int8_t)(uint8_t)(i * 131u + 7u); }

struct Dev {
    uint64_t bytes;
    std::vector<int8_t> raw; /* GUARD | window | GUARD */
    vf_disp_regs_t regs;
    vf_disp_state_t st;
    std::vector<int8_t> ibuf, wbuf, obuf;
    std::vector<int32_t> acc, param;
    vf_cnn_buffers_t cores[VF_CNN_CORES];
    std::vector<int8_t> rnn_w, rnn_v;
    std::vector<int32_t> rnn_a, rnn_p, rnn_s, rnn_t;
    vf_rnn_buffers_t rnn[VF_RNN_CORES];

    explicit Dev(uint64_t window)
        : bytes(window), raw(2 * GUARD + window, CANARY), ibuf((size_t)VF_CNN_CORES * VF_IBUF_BYTES),
          wbuf((size_t)VF_CNN_CORES * VF_WBUF_BYTES), obuf((size_t)VF_CNN_CORES * VF_OBUF_BYTES),
          acc((size_t)VF_CNN_CORES * VF_ACC_WORDS),
          param((size_t)VF_CNN_CORES * VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS),
          rnn_w((size_t)VF_RNN_CORES * VF_RNN_WBUF_BYTES), rnn_v((size_t)VF_RNN_CORES * VF_RNN_VBUF_BYTES),
          rnn_a((size_t)VF_RNN_CORES * VF_RNN_ACC_WORDS),
          rnn_p((size_t)VF_RNN_CORES * VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS),
          rnn_s((size_t)VF_RNN_CORES * VF_RNN_STATE_WORDS), rnn_t((size_t)VF_RNN_CORES * VF_RNN_ACT_BUFFER_WORDS)
    {
        for (uint64_t i = 0; i < window; ++i)
            raw[GUARD + i] = fill_pattern(i);
        /* power-on garbage in the cores: frames must load what they read */
        fill_random(ibuf.data(), ibuf.size());
        fill_random(wbuf.data(), wbuf.size());
        fill_random(obuf.data(), obuf.size());
        fill_random(acc.data(), acc.size() * 4);
        fill_random(param.data(), param.size() * 4);
        for (uint32_t c = 0; c < VF_CNN_CORES; ++c) {
            cores[c].ibuf = ibuf.data() + (size_t)c * VF_IBUF_BYTES;
            cores[c].wbuf = wbuf.data() + (size_t)c * VF_WBUF_BYTES;
            cores[c].acc = acc.data() + (size_t)c * VF_ACC_WORDS;
            cores[c].obuf = obuf.data() + (size_t)c * VF_OBUF_BYTES;
            cores[c].param = param.data() + (size_t)c * VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS;
        }
        for (uint32_t c = 0; c < VF_RNN_CORES; ++c) {
            rnn[c].wbuf = rnn_w.data() + (size_t)c * VF_RNN_WBUF_BYTES;
            rnn[c].vbuf = rnn_v.data() + (size_t)c * VF_RNN_VBUF_BYTES;
            rnn[c].acc = rnn_a.data() + (size_t)c * VF_RNN_ACC_WORDS;
            rnn[c].param = rnn_p.data() + (size_t)c * VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS;
            rnn[c].state = rnn_s.data() + (size_t)c * VF_RNN_STATE_WORDS;
            rnn[c].act = rnn_t.data() + (size_t)c * VF_RNN_ACT_BUFFER_WORDS;
        }
        vf_dispatch_reset(&regs, &st);
        regs.g.mem_base = MEM_BASE;
        tb_poison_guards(raw, window);
    }
    ~Dev() { TB_UNPOISON(raw.data(), raw.size()); }
    Dev(const Dev &) = delete;
    Dev &operator=(const Dev &) = delete;

    int8_t *mem() { return raw.data() + GUARD; }

    uint32_t step(vf_disp_report_t *rep = 0)
    {
        vf_disp_report_t r;
        return vf_dispatch_step(&regs, &st, mem(), bytes, cores, rnn, rep ? rep : &r);
    }

    /* steps until nothing happens; returns the steps that did something */
    uint32_t run(uint32_t max_steps = 20000, vf_disp_report_t *total = 0)
    {
        uint32_t n = 0;
        for (; n < max_steps; ++n) {
            vf_disp_report_t r;
            const uint32_t p = step(&r);
            if (total) {
                total->frames_issued += r.frames_issued;
                total->barriers += r.barriers;
                total->requests_ok += r.requests_ok;
                total->requests_failed += r.requests_failed;
                total->requests_aborted += r.requests_aborted;
                total->scrubs += r.scrubs;
                total->faults += r.faults;
                for (uint32_t c = 0; c < VF_CNN_CORES; ++c)
                    total->core[c].frames += r.core[c].frames;
            }
            if (p == 0)
                break;
        }
        CHECK(n < max_steps);
        return n;
    }

    bool guards_intact() { return tb_guards_intact(raw, bytes); }

    std::vector<int8_t> window() { return std::vector<int8_t>(mem(), mem() + bytes); }
};

/* ========================================================================== */
/* Tenants: segment layout, driver-side ring operations                        */
/* ========================================================================== */

struct Ten : TbBump { /* limit: the segment's bytes */
    Dev *d;
    uint32_t t;      /* context */
    uint64_t win;    /* segment offset in the window */
    uint32_t ring_offset, ring_size, cpl_offset;
    uint32_t tail, ack; /* the driver's copies */
    std::map<uint32_t, std::vector<vf_dispatch_t>> prog_at; /* program offset -> entries */
    std::map<uint32_t, uint32_t> prog_of_seq;               /* request -> program offset */

    int8_t *seg() { return d->mem() + win; }
    vf_disp_tenant_regs_t &r() { return d->regs.tenant[t]; }
    const vf_disp_tenant_state_t &s() { return d->st.tenant[t]; }

    void put(uint32_t off, const void *p, size_t n) { memcpy(seg() + off, p, n); }
};

static Ten make_ten(Dev &d, uint32_t t, uint64_t win, uint32_t limit, uint32_t ring_size = 8, uint32_t start = 0)
{
    if (t >= VF_DISP_TENANTS) { /* a context the board does not have: the test itself is wrong */
        fprintf(stderr, "tb_dispatcher: tenant context %u on a board with %d\n", t, VF_DISP_TENANTS);
        abort();
    }
    Ten x;
    x.d = &d;
    x.t = t;
    x.win = win;
    x.limit = limit;
    x.bump = 0;
    x.ring_offset = x.alloc(ring_size * VF_DISP_REQUEST_BYTES);
    x.ring_size = ring_size;
    x.cpl_offset = x.alloc(ring_size * VF_DISP_RECORD_BYTES);
    x.tail = x.ack = start;
    return x;
}

/* the driver's configuration sequence, enable last */
static void enable(Ten &x, uint32_t mask)
{
    vf_disp_tenant_regs_t &r = x.r();
    r.seg_base = MEM_BASE + x.win;
    r.seg_limit = x.limit;
    r.ring_offset = x.ring_offset;
    r.ring_size = x.ring_size;
    r.cpl_offset = x.cpl_offset;
    r.cpl_ack = x.ack;
    r.ring_tail = x.tail;
    r.core_mask = mask;
    r.control = VF_TENANT_ENABLE;
}

static void set_mask(Ten &x, uint32_t mask)
{
    x.r().core_mask = mask;
    x.r().mask_seq += 1;
}

static uint32_t place_program(Ten &x, const std::vector<vf_dispatch_t> &p)
{
    const uint32_t off = x.alloc((uint32_t)(p.size() * sizeof(vf_dispatch_t)) + 8, 8);
    if (!p.empty())
        x.put(off, p.data(), p.size() * sizeof(vf_dispatch_t));
    x.prog_at[off] = p;
    return off;
}

/* writes the ring entry of request `tail` and rings the doorbell */
static uint32_t post(Ten &x, uint32_t prog_off, uint32_t entries, uint32_t id, uint32_t flags = 0, bool ring = true)
{
    vf_disp_request_t q = {prog_off, entries, id, flags};
    const uint32_t seq = x.tail;
    x.put(x.ring_offset + (seq & (x.ring_size - 1)) * VF_DISP_REQUEST_BYTES, &q, sizeof q);
    x.prog_of_seq[seq] = prog_off;
    x.tail += 1;
    if (ring)
        x.r().ring_tail = x.tail;
    return seq;
}

static uint32_t post_prog(Ten &x, uint32_t prog_off, uint32_t id)
{
    return post(x, prog_off, (uint32_t)x.prog_at[prog_off].size(), id);
}

static vf_disp_completion_t record(Ten &x, uint32_t seq)
{
    vf_disp_completion_t c;
    memcpy(&c, x.seg() + x.cpl_offset + (seq & (x.ring_size - 1)) * VF_DISP_RECORD_BYTES, sizeof c);
    return c;
}

static void ack_all(Ten &x)
{
    x.ack = x.r().ring_head;
    x.r().cpl_ack = x.ack;
}

/* The segment's bytes, with the records' `cycles` zeroed: a request's latency
 * depends on how the harness clocks the dispatcher, its results do not. */
static std::vector<int8_t> seg_bytes(Ten &x)
{
    std::vector<int8_t> b(x.seg(), x.seg() + x.limit);
    for (uint64_t i = 0; i < x.ring_size; ++i) {
        const uint64_t at = x.cpl_offset + i * VF_DISP_RECORD_BYTES + offsetof(vf_disp_completion_t, cycles);
        if (at + 4 <= b.size())
            memset(b.data() + at, 0, 4);
    }
    return b;
}

/* bytes of the window outside the given segments equal `before` */
static bool untouched_outside(Dev &d, const std::vector<int8_t> &before, const std::vector<const Ten *> &segs)
{
    for (uint64_t i = 0; i < d.bytes; ++i) {
        bool inside = false;
        for (const Ten *s : segs)
            inside = inside || (i >= s->win && i < s->win + s->limit);
        if (!inside && d.mem()[i] != before[i]) {
            printf("    window byte %llu changed outside the segments\n", (unsigned long long)i);
            return false;
        }
    }
    return true;
}

/* ========================================================================== */
/* Workloads                                                                   */
/* ========================================================================== */

struct Frame {
    uint32_t off, n;
    std::vector<vf_insn_t> insns;
};

static void place_frame(Ten &x, Frame &f)
{
    f.n = (uint32_t)f.insns.size();
    f.off = x.alloc(f.n * VF_INSN_BYTES);
    x.put(f.off, f.insns.data(), f.insns.size() * VF_INSN_BYTES);
}

/* conv 3x3 pad 1 + ReLU -> max-pool 2x2 -> conv 1x1, layers tiled by rows */
struct NetShape {
    uint32_t H, W, cin, c1, c2, rt1, rq2, rt3;
};

struct Net {
    NetShape s;
    std::vector<int8_t> w1, w3; /* [oc][ky][kx][cin] */
    std::vector<int8_t> w1p, w3p; /* as the core reads them (beat-major words) */
    std::vector<int32_t> p1, p3;
    int8_t zp3;
    uint32_t w1_off, p1_off, w3_off, p3_off;
};

struct Inst {
    uint32_t in, a, b, out;
    std::vector<std::vector<Frame>> layers;
};

static NetShape random_shape()
{
    NetShape s;
    s.H = 2 * (2 + rnd(3));
    s.W = 2 * (2 + rnd(3));
    s.cin = 3 + rnd(10);
    s.c1 = 4 + rnd(17);
    s.c2 = 2 + rnd(11);
    s.rt1 = 1 + rnd(3);
    s.rq2 = 1 + rnd(2);
    s.rt3 = 1 + rnd(2);
    return s;
}

static uint32_t put_params(Ten &x, const std::vector<int32_t> &p)
{
    const uint32_t off = x.alloc((uint32_t)p.size() * 4);
    x.put(off, p.data(), p.size() * 4); /* little-endian host */
    return off;
}

static Net make_net(Ten &x, const NetShape &s)
{
    Net n;
    n.s = s;
    n.w1.resize((size_t)s.c1 * 9 * s.cin);
    for (auto &v : n.w1)
        v = rnd_i8();
    n.p1 = random_params(s.c1, 9.0 * s.cin, 1.0);
    n.w3.resize((size_t)s.c2 * s.c1);
    for (auto &v : n.w3)
        v = rnd_i8();
    n.p3 = random_params(s.c2, s.c1, 0.5);
    n.zp3 = (int8_t)rrange(-5, 5);
    n.w1p = tb_pack_conv_wgt(1, s.cin, s.c1, 3, 3, n.w1, false);
    n.w3p = tb_pack_conv_wgt(1, s.c1, s.c2, 1, 1, n.w3, false);
    n.w1_off = x.alloc((uint32_t)n.w1p.size());
    x.put(n.w1_off, n.w1p.data(), n.w1p.size());
    n.w3_off = x.alloc((uint32_t)n.w3p.size());
    x.put(n.w3_off, n.w3p.data(), n.w3p.size());
    n.p1_off = put_params(x, n.p1);
    n.p3_off = put_params(x, n.p3);
    return n;
}

static Inst make_inst(Ten &x, const Net &n, uint32_t id)
{
    const NetShape &s = n.s;
    Inst in;
    const uint32_t H2 = s.H / 2, W2 = s.W / 2;
    in.in = x.alloc(s.H * s.W * s.cin);
    fill_random_bytes(x.seg() + in.in, s.H * s.W * s.cin);
    in.a = x.alloc(s.H * s.W * s.c1);
    in.b = x.alloc(H2 * W2 * s.c1);
    in.out = x.alloc(H2 * W2 * s.c2);
    in.layers.resize(3);
    uint32_t fid = id * 1000;
    /* layer 1: conv 3x3, pad 1, ReLU */
    for (uint32_t r0 = 0; r0 < s.H; r0 += s.rt1) {
        const uint32_t th = s.rt1 < s.H - r0 ? s.rt1 : s.H - r0;
        Frame f;
        f.insns = {mk_marker(VF_OP_FRAME, fid++, 1),
                   mk_linear(n.w1_off, 0, (uint32_t)n.w1p.size(), VF_BUF_WGT),
                   mk_linear(n.p1_off, 0, (uint32_t)n.p1.size() * 4, VF_BUF_PARAM),
                   mk_mem(VF_OP_LOAD_TILE, in.in, 0, s.H, s.W, s.cin, s.cin, (int32_t)r0 - 1, -1, th + 2, s.W + 2,
                          VF_DEP_PUSH_NEXT),
                   mk_conv(th + 2, s.W + 2, th, s.W, s.cin, s.c1, 3, 0, 0, 127),
                   mk_mem(VF_OP_SAVE, in.a, 0, s.H, s.W, s.c1, s.c1, (int32_t)r0, 0, th, s.W, VF_DEP_POP_PREV)};
        place_frame(x, f);
        in.layers[0].push_back(f);
    }
    /* layer 2: max-pool 2x2 */
    for (uint32_t q0 = 0; q0 < H2; q0 += s.rq2) {
        const uint32_t tq = s.rq2 < H2 - q0 ? s.rq2 : H2 - q0;
        Frame f;
        f.insns = {mk_marker(VF_OP_FRAME, fid++, 2),
                   mk_mem(VF_OP_LOAD_TILE, in.a, 0, s.H, s.W, s.c1, s.c1, (int32_t)(2 * q0), 0, 2 * tq, s.W,
                          VF_DEP_PUSH_NEXT),
                   mk_maxpool2(2 * tq, s.W, s.c1),
                   mk_mem(VF_OP_SAVE, in.b, 0, H2, W2, s.c1, s.c1, (int32_t)q0, 0, tq, W2, VF_DEP_POP_PREV)};
        place_frame(x, f);
        in.layers[1].push_back(f);
    }
    /* layer 3: conv 1x1 */
    for (uint32_t r0 = 0; r0 < H2; r0 += s.rt3) {
        const uint32_t th = s.rt3 < H2 - r0 ? s.rt3 : H2 - r0;
        Frame f;
        f.insns = {mk_marker(VF_OP_FRAME, fid++, 3),
                   mk_linear(n.w3_off, 0, (uint32_t)n.w3p.size(), VF_BUF_WGT),
                   mk_linear(n.p3_off, 0, (uint32_t)n.p3.size() * 4, VF_BUF_PARAM),
                   mk_mem(VF_OP_LOAD_TILE, in.b, 0, H2, W2, s.c1, s.c1, (int32_t)r0, 0, th, W2, VF_DEP_PUSH_NEXT),
                   mk_conv(th, W2, th, W2, s.c1, s.c2, 1, n.zp3, -128, 127),
                   mk_mem(VF_OP_SAVE, in.out, 0, H2, W2, s.c2, s.c2, (int32_t)r0, 0, th, W2, VF_DEP_POP_PREV)};
        place_frame(x, f);
        in.layers[2].push_back(f);
    }
    return in;
}

/* the expected network output of an instance (from its input bytes) */
static std::vector<int8_t> golden(Ten &x, const Net &n, const Inst &in)
{
    const NetShape &s = n.s;
    std::vector<int8_t> a((size_t)s.H * s.W * s.c1), b((size_t)s.H / 2 * s.W / 2 * s.c1),
        o((size_t)s.H / 2 * s.W / 2 * s.c2);
    ref_conv(x.seg() + in.in, s.H, s.W, s.cin, n.w1.data(), n.p1.data(), 3, 1, s.c1, 0, 0, 127, a.data());
    ref_maxpool2(a.data(), s.H, s.W, s.c1, b.data());
    ref_conv(b.data(), s.H / 2, s.W / 2, s.c1, n.w3.data(), n.p3.data(), 1, 0, s.c2, n.zp3, -128, 127, o.data());
    return o;
}

static bool out_equals(Ten &x, const Net &n, const Inst &in, const std::vector<int8_t> &want)
{
    if (want.size() != (size_t)n.s.H / 2 * (n.s.W / 2) * n.s.c2)
        return false;
    return memcmp(x.seg() + in.out, want.data(), want.size()) == 0;
}

/* frames of each layer round-robin over k slots (from slot `first`), a
 * BARRIER after each layer, END */
static std::vector<vf_dispatch_t> program_for(const std::vector<std::vector<Frame>> &layers, uint32_t k,
                                              bool barriers = true, uint32_t first = 0)
{
    std::vector<vf_dispatch_t> p;
    for (const auto &layer : layers) {
        for (size_t i = 0; i < layer.size(); ++i) {
            vf_dispatch_t e = {layer[i].off, (uint16_t)layer[i].n, (uint8_t)((first + i) % k), VF_DISPATCH_FRAME};
            p.push_back(e);
        }
        if (barriers) {
            vf_dispatch_t b = {0, 0, 0, VF_DISPATCH_BARRIER};
            p.push_back(b);
        }
    }
    vf_dispatch_t e = {0, 0, 0, VF_DISPATCH_END};
    p.push_back(e);
    return p;
}

static Iters iters_of(const std::vector<std::vector<Frame>> &layers)
{
    Iters it = {0, 0, 0, 0};
    for (const auto &l : layers)
        for (const Frame &f : l)
            for (const vf_insn_t &i : f.insns)
                expect_iters(i, it);
    return it;
}

static uint32_t frames_of(const std::vector<std::vector<Frame>> &layers)
{
    uint32_t n = 0;
    for (const auto &l : layers)
        n += (uint32_t)l.size();
    return n;
}

/* Counter frames: each run adds 1 to every byte of its cell. Layer j of the
 * program increments every cell once (frames in a random order). */
struct Counter {
    uint32_t cells, cw, base, ones;
    std::vector<std::vector<Frame>> layers;
    std::vector<std::vector<uint32_t>> cell_of; /* [layer][frame] */
};

static Counter make_counter(Ten &x, uint32_t cells, uint32_t nlayers)
{
    Counter c;
    c.cells = cells;
    c.cw = 16;
    c.base = x.alloc(cells * c.cw);
    memset(x.seg() + c.base, 0, cells * c.cw);
    c.ones = x.alloc(c.cw);
    memset(x.seg() + c.ones, 1, c.cw);
    c.layers.resize(nlayers);
    c.cell_of.resize(nlayers);
    for (uint32_t l = 0; l < nlayers; ++l) {
        std::vector<uint32_t> order(cells);
        for (uint32_t i = 0; i < cells; ++i)
            order[i] = i;
        for (uint32_t i = cells; i > 1; --i)
            std::swap(order[i - 1], order[rnd(i)]);
        for (uint32_t i : order) {
            Frame f;
            const uint32_t cell = c.base + i * c.cw;
            f.insns = {mk_marker(VF_OP_FRAME, i, 100 + l),
                       mk_mem(VF_OP_LOAD_TILE, cell, 0, 1, 1, c.cw, c.cw, 0, 0, 1, 1, 0),
                       mk_mem(VF_OP_LOAD_TILE, c.ones, 64, 1, 1, c.cw, c.cw, 0, 0, 1, 1, VF_DEP_PUSH_NEXT),
                       mk_add_inc(64, c.cw),
                       mk_mem(VF_OP_SAVE, cell, 0, 1, 1, c.cw, c.cw, 0, 0, 1, 1, VF_DEP_POP_PREV)};
            place_frame(x, f);
            c.layers[l].push_back(f);
            c.cell_of[l].push_back(i);
        }
    }
    return c;
}

/* every byte of every cell equals v */
static bool cells_equal(Ten &x, const Counter &c, int v)
{
    for (uint32_t i = 0; i < c.cells * c.cw; ++i)
        if (x.seg()[c.base + i] != v) {
            printf("    counter cell %u = %d, expected %d [%s]\n", i / c.cw, x.seg()[c.base + i], v, g_ctx.c_str());
            return false;
        }
    return true;
}

/* ========================================================================== */
/* Asynchronous harness: frames in flight across advance calls                 */
/* ========================================================================== */

struct Async {
    Dev &d;
    std::map<uint32_t, Ten *> tens;
    bool busy[VF_POOL_CORES];
    vf_disp_frame_t fl[VF_POOL_CORES];
    vf_disp_report_t rep;
    uint64_t issued = 0, retired = 0, order_violations = 0, map_errors = 0, double_issue = 0;
    uint32_t max_seqs = 0; /* most requests of one tenant with frames in flight at once */
    uint64_t issued_at[VF_POOL_CORES];
    std::map<uint32_t, uint64_t> core_cycles; /* expected core_cycles register per tenant */

    explicit Async(Dev &dev) : d(dev)
    {
        memset(busy, 0, sizeof busy);
        memset(fl, 0, sizeof fl);
        memset(&rep, 0, sizeof rep);
        memset(issued_at, 0, sizeof issued_at);
    }

    void add(Ten &x) { tens[x.t] = &x; }

    /* the frame's program entry, when the harness knows the program */
    const std::vector<vf_dispatch_t> *program(const vf_disp_frame_t &f)
    {
        auto it = tens.find(f.tenant);
        if (it == tens.end())
            return 0;
        auto ps = it->second->prog_of_seq.find(f.seq);
        if (ps == it->second->prog_of_seq.end())
            return 0;
        auto p = it->second->prog_at.find(ps->second);
        return p == it->second->prog_at.end() ? 0 : &p->second;
    }

    void check_issue(uint32_t c, const vf_disp_frame_t &f)
    {
        if (busy[c])
            ++double_issue;
        const std::vector<vf_dispatch_t> *p = program(f);
        if (p == 0 || f.entry >= p->size())
            return;
        /* the mapping rule: (slot mod k)-th core of the active mask */
        const uint32_t m = d.regs.tenant[f.tenant].active_mask;
        const uint32_t k = popcount(m);
        if (k == 0 || nth_core(m, (*p)[f.entry].slot % k) != c)
            ++map_errors;
        /* the barrier: nothing before the last BARRIER is in flight */
        int32_t bar = -1;
        for (uint32_t e = 0; e < f.entry; ++e)
            if ((*p)[e].op == VF_DISPATCH_BARRIER)
                bar = (int32_t)e;
        for (uint32_t o = 0; o < VF_POOL_CORES; ++o)
            if (busy[o] && fl[o].tenant == f.tenant && fl[o].seq == f.seq && (int32_t)fl[o].entry < bar)
                ++order_violations;
    }

    void complete(uint32_t c)
    {
        vf_cnn_state_t res;
        vf_cnn_counters_t cnt;
        if (c < VF_CNN_CORES)
            vf_dispatch_run_frame(d.mem(), d.bytes, &fl[c], &d.cores[c], &res, &cnt, 0);
        else
            vf_dispatch_run_rnn_frame(d.mem(), d.bytes, &fl[c], &d.rnn[c - VF_CNN_CORES], &res, &cnt, 0);
        busy[c] = false;
        core_cycles[fl[c].tenant] += d.regs.g.cycles - issued_at[c];
        vf_dispatch_retire(&d.regs, &d.st, c, &res, &cnt, &rep);
        ++retired;
    }

    /* one advance, then each frame in flight finishes with probability p
     * (in a random order) */
    uint32_t tick(uint32_t p_percent)
    {
        vf_disp_frame_t is[VF_POOL_CORES];
        const uint32_t before = rep.progress;
        d.regs.g.cycles += 10; /* the clock: 10 cycles a tick */
        const uint32_t m = vf_dispatch_advance(&d.regs, &d.st, d.mem(), d.bytes, is, &rep);
        for (uint32_t c = 0; c < VF_POOL_CORES; ++c)
            if ((m >> c) & 1u) {
                check_issue(c, is[c]);
                busy[c] = true;
                fl[c] = is[c];
                issued_at[c] = d.regs.g.cycles;
                ++issued;
            }
        for (uint32_t c = 0; c < VF_POOL_CORES; ++c) {
            uint32_t seqs = 0;
            for (uint32_t o = 0; o < VF_POOL_CORES; ++o) {
                bool first = busy[o] && fl[o].tenant == fl[c].tenant;
                for (uint32_t e = 0; first && e < o; ++e)
                    first = !(busy[e] && fl[e].tenant == fl[o].tenant && fl[e].seq == fl[o].seq);
                seqs += busy[c] && first ? 1u : 0u;
            }
            max_seqs = seqs > max_seqs ? seqs : max_seqs;
        }
        uint32_t perm[VF_POOL_CORES];
        for (uint32_t c = 0; c < VF_POOL_CORES; ++c)
            perm[c] = c;
        for (uint32_t i = VF_POOL_CORES; i > 1; --i)
            std::swap(perm[i - 1], perm[rnd(i)]);
        for (uint32_t i = 0; i < VF_POOL_CORES; ++i)
            if (busy[perm[i]] && rnd(100) < p_percent)
                complete(perm[i]);
        return rep.progress - before;
    }

    bool any_busy()
    {
        for (uint32_t c = 0; c < VF_POOL_CORES; ++c)
            if (busy[c])
                return true;
        return false;
    }

    /* ticks until nothing is in flight and nothing happens */
    uint32_t drain(uint32_t p_percent, uint32_t max_ticks = 100000)
    {
        uint32_t n = 0;
        for (; n < max_ticks; ++n)
            if (tick(p_percent) == 0 && !any_busy())
                break;
        CHECK(n < max_ticks);
        return n;
    }
};

/* ========================================================================== */
/* Tests                                                                       */
/* ========================================================================== */

static const uint32_t SEG = 1u << 18;     /* default segment size */
static const uint64_t SEG_GAP = 1u << 14; /* pattern bytes between segments */
static uint64_t seg_win(uint32_t i) { return SEG_GAP + (uint64_t)i * (SEG + SEG_GAP); }
static uint64_t window_for(uint32_t nseg) { return seg_win(nseg); }

static void test_geometry_reset()
{
    vf_disp_geometry_t g;
    vf_dispatch_geometry(&g);
    CHECK_EQ(g.tenants, VF_DISP_TENANTS);
    CHECK_EQ(g.cores, VF_CNN_CORES);
    CHECK_EQ(g.ring_max, VF_DISP_RING_MAX);
    CHECK_EQ(g.walk_budget, VF_DISP_WALK_BUDGET);
    CHECK_EQ(g.inflight, VF_DISP_INFLIGHT);
    CHECK_EQ(g.regs_bytes, VF_DREG_TENANT_BASE + VF_DISP_TENANTS * VF_DREG_TENANT_STRIDE);
    CHECK_EQ(g.tenant_stride, VF_DREG_TENANT_STRIDE);
    CHECK_EQ(g.record_bytes, sizeof(vf_disp_completion_t));
    CHECK(VF_DISP_TENANTS >= 8);

    Dev d(window_for(1));
    CHECK_EQ(d.regs.g.id, VF_DISP_ID);
    CHECK_EQ(d.regs.g.version, VF_DISP_VERSION);
    CHECK_EQ(d.regs.g.tenants, VF_DISP_TENANTS);
    CHECK_EQ(d.regs.g.cores, VF_CNN_CORES);
    for (uint32_t t = 0; t < VF_DISP_TENANTS; ++t)
        CHECK_EQ(d.regs.tenant[t].status, VF_TENANT_DISABLED);
    /* nothing enabled: quiescent, nothing written */
    const std::vector<int8_t> before = d.window();
    vf_disp_report_t r;
    CHECK_EQ(d.step(&r), 0);
    CHECK_EQ(d.regs.g.steps, 1);
    CHECK(d.window() == before);
    CHECK(d.guards_intact());
}

/* One tenant, one request: golden output, record, counters, interrupt. */
static void test_single_request()
{
    Dev d(window_for(1));
    seed(11);
    Ten x = make_ten(d, 0, seg_win(0), SEG);
    const Net n = make_net(x, random_shape());
    const Inst in = make_inst(x, n, 1);
    const std::vector<int8_t> want = golden(x, n, in);
    const uint32_t prog = place_program(x, program_for(in.layers, 1));
    enable(x, 1u);
    const uint32_t seq = post_prog(x, prog, 0xabc);
    vf_disp_report_t tot;
    memset(&tot, 0, sizeof tot);
    d.run(20000, &tot);
    CHECK(out_equals(x, n, in, want));
    const vf_disp_completion_t c = record(x, seq);
    const Iters it = iters_of(in.layers);
    CHECK_EQ(c.request_id, 0xabc);
    CHECK_EQ(c.seq, seq);
    CHECK_EQ(c.status, VF_CPL_OK);
    CHECK_EQ(c.fault, 0);
    CHECK_EQ(c.fault_core, VF_DISP_NO_CORE);
    CHECK_EQ(c.frames, frames_of(in.layers));
    CHECK_EQ(c.barriers, 3);
    CHECK_EQ(c.insns, it.insns);
    CHECK_EQ(c.load_iters, it.load);
    CHECK_EQ(c.compute_iters, it.compute);
    CHECK_EQ(c.save_iters, it.save);
    vf_disp_tenant_regs_t &r = x.r();
    CHECK_EQ(r.status, VF_TENANT_IDLE);
    CHECK_EQ(r.ring_head, seq + 1);
    CHECK_EQ(r.requests, 1);
    CHECK_EQ(r.failed, 0);
    CHECK_EQ(r.frames, frames_of(in.layers));
    CHECK_EQ(r.barriers, 3);
    CHECK_EQ(r.insns, it.insns);
    CHECK_EQ(r.compute_iters, it.compute);
    CHECK_EQ(r.inflight, 0);
    CHECK_EQ(r.active_mask, 1u);
    CHECK_EQ(r.mask_result, VF_MASK_APPLIED);
    CHECK_EQ(tot.frames_issued, frames_of(in.layers));
    CHECK_EQ(tot.requests_ok, 1);
    CHECK_EQ(tot.core[0].frames, frames_of(in.layers));
    CHECK_EQ(d.regs.g.frames, frames_of(in.layers));
    /* interrupt: pending until acknowledged, the line needs both enables */
    CHECK_EQ(d.regs.g.irq_status, 1u);
    CHECK_EQ(d.regs.g.irq, 0);
    d.regs.g.irq_enable = 1;
    d.step();
    CHECK_EQ(d.regs.g.irq, 0);
    d.regs.g.irq_mask = 1;
    d.step();
    CHECK_EQ(d.regs.g.irq, 1);
    ack_all(x);
    CHECK_EQ(d.step(), 0);
    CHECK_EQ(d.regs.g.irq_status, 0);
    CHECK_EQ(d.regs.g.irq, 0);
    CHECK(d.guards_intact());
}

/* Builds the same tenant image (seeded) in a fresh device and runs the
 * program made for `slots` slots on `mask`; returns the segment. */
static std::vector<int8_t> run_net_on(uint32_t slots, uint32_t mask, uint32_t *cores_used, bool async = false)
{
    Dev d(window_for(1));
    seed(21);
    Ten x = make_ten(d, 2, seg_win(0), SEG);
    const Net n = make_net(x, random_shape());
    std::vector<Inst> ins;
    std::vector<std::vector<int8_t>> want;
    for (uint32_t i = 0; i < 3; ++i) {
        ins.push_back(make_inst(x, n, i));
        want.push_back(golden(x, n, ins.back()));
    }
    std::vector<uint32_t> progs;
    for (uint32_t i = 0; i < 3; ++i)
        progs.push_back(place_program(x, program_for(ins[i].layers, slots, true, i)));
    enable(x, mask);
    for (uint32_t i = 0; i < 3; ++i)
        post_prog(x, progs[i], 100 + i);
    vf_disp_report_t tot;
    memset(&tot, 0, sizeof tot);
    if (async) {
        Async h(d);
        h.add(x);
        h.drain(35);
        CHECK_EQ(h.order_violations, 0);
        CHECK_EQ(h.map_errors, 0);
        CHECK_EQ(h.double_issue, 0);
        CHECK_EQ(d.regs.tenant[x.t].core_cycles, h.core_cycles[x.t]);
        CHECK(d.regs.tenant[x.t].core_cycles > 0);
        uint64_t latency = 0;
        for (uint32_t i = 0; i < 3; ++i)
            latency += record(x, i).cycles;
        CHECK_EQ(d.regs.tenant[x.t].request_cycles, latency);
        CHECK(record(x, 0).cycles > 0 && record(x, 0).cycles % 10 == 0);
        for (uint32_t c = 0; c < VF_CNN_CORES; ++c)
            tot.core[c].frames += h.rep.core[c].frames;
    } else {
        d.run(20000, &tot);
    }
    for (uint32_t i = 0; i < 3; ++i) {
        CHECK(out_equals(x, n, ins[i], want[i]));
        CHECK_EQ(record(x, i).status, VF_CPL_OK);
    }
    *cores_used = 0;
    for (uint32_t c = 0; c < VF_CNN_CORES; ++c)
        if (tot.core[c].frames)
            *cores_used |= 1u << c;
    CHECK((*cores_used & ~mask) == 0);
    CHECK(d.guards_intact());
    /* the segment, but for the dispatch programs (their slots differ) */
    std::vector<int8_t> seg = seg_bytes(x);
    for (const auto &p : x.prog_at)
        memset(seg.data() + p.first, 0, p.second.size() * sizeof(vf_dispatch_t));
    return seg;
}

/* Any number of slots and any mask give the single-slot result. */
static void test_multi_slot_equals_single()
{
    uint32_t used = 0;
    const std::vector<int8_t> one = run_net_on(1, 1u, &used);
    CHECK_EQ(used, 1u);
    const uint32_t kmax = VF_CNN_CORES < 6 ? VF_CNN_CORES : 6;
    for (uint32_t k = 2; k <= kmax; ++k) {
        g_ctx = "k=" + std::to_string(k);
        const uint32_t mask = cores_range(VF_CNN_CORES - k, k); /* the top cores */
        CHECK(run_net_on(k, mask, &used) == one);
        CHECK((used & ~mask) == 0 && popcount(used) >= 2);
    }
    /* a program for 4 slots folded onto 2 cores, or onto 1 */
    g_ctx = "fold 4 on 2";
    CHECK(run_net_on(4, cores_range(0, 2), &used) == one);
    g_ctx = "fold 5 on 1";
    CHECK(run_net_on(5, cores_range(VF_CNN_CORES - 1, 1), &used) == one);
    /* a program for 2 slots on every core: the others idle */
    g_ctx = "2 on all";
    CHECK(run_net_on(2, all_cores(), &used) == one);
    CHECK(popcount(used) <= 2);
    /* frames in flight across calls, retired in random order */
    g_ctx = "async";
    CHECK(run_net_on(3, cores_range(0, 3), &used) == one);
    CHECK(run_net_on(3, cores_range(0, 3), &used, true) == one);
    if (VF_CNN_CORES >= 4) {
        g_ctx = "sparse mask";
        CHECK(run_net_on(4, 0x5u | cores_range(VF_CNN_CORES - 2, 2), &used, true) == one);
    }
}

/* Barriers keep dependent layers in order even when frames retire out of
 * order; without them the same harness breaks the result. */
static void test_barriers_order_layers()
{
    const uint32_t k = VF_CNN_CORES < 4 ? VF_CNN_CORES : 4;
    uint32_t wrong_without = 0;
    for (int trial = 0; trial < 12; ++trial) {
        for (int with = 1; with >= 0; --with) {
            g_ctx = "trial " + std::to_string(trial) + (with ? " with" : " without") + " barriers";
            Dev d(window_for(1));
            seed(300 + trial);
            Ten x = make_ten(d, 1, seg_win(0), SEG);
            NetShape s = random_shape();
            s.rt1 = 1; /* many frames per layer */
            s.rq2 = 1;
            const Net n = make_net(x, s);
            const Inst in = make_inst(x, n, 0);
            const std::vector<int8_t> want = golden(x, n, in);
            const uint32_t prog = place_program(x, program_for(in.layers, k, with != 0));
            enable(x, cores_range(0, k));
            const uint32_t seq = post_prog(x, prog, 7);
            seed(900 + trial); /* the same retire order with and without */
            Async h(d);
            h.add(x);
            h.drain(30);
            const bool ok = out_equals(x, n, in, want);
            CHECK_EQ(record(x, seq).status, VF_CPL_OK);
            CHECK_EQ(record(x, seq).barriers, with ? 3 : 0);
            if (with) {
                CHECK(ok);
                CHECK_EQ(h.order_violations, 0);
            } else if (!ok) {
                ++wrong_without;
            }
        }
    }
    printf("    without barriers %u of 12 trials computed a wrong result\n", wrong_without);
    if (VF_CNN_CORES >= 2)
        CHECK(wrong_without > 0);
}

/* Tenant images for the multi-tenant tests, each from its own seed. */
struct NetTenant {
    Net n;
    std::vector<Inst> ins;
    std::vector<std::vector<int8_t>> want;
    std::vector<uint32_t> progs;
};

static NetTenant build_net_tenant(Ten &x, uint64_t s, uint32_t requests, uint32_t slots)
{
    seed(s);
    NetTenant nt;
    nt.n = make_net(x, random_shape());
    for (uint32_t i = 0; i < requests; ++i) {
        nt.ins.push_back(make_inst(x, nt.n, i));
        nt.want.push_back(golden(x, nt.n, nt.ins.back()));
        nt.progs.push_back(place_program(x, program_for(nt.ins.back().layers, slots, true, i)));
    }
    return nt;
}

/* Several tenants with disjoint masks run at once; each result equals the
 * golden model and the tenant's segment equals a run of it alone. */
static void test_tenants_concurrent()
{
    const uint32_t nt = VF_CNN_CORES >= 4 ? 4 : (VF_CNN_CORES >= 2 ? 2 : 1);
    const uint32_t per = VF_CNN_CORES / nt;
    const uint32_t ctx[4] = {0, 3, VF_DISP_TENANTS - 3, VF_DISP_TENANTS - 1};
    std::vector<std::vector<int8_t>> alone(nt);
    for (uint32_t i = 0; i < nt; ++i) {
        g_ctx = "alone " + std::to_string(i);
        Dev d(window_for(nt));
        Ten x = make_ten(d, ctx[i], seg_win(i), SEG);
        NetTenant t = build_net_tenant(x, 40 + i, 3, per);
        enable(x, cores_range(i * per, per));
        for (uint32_t r = 0; r < 3; ++r)
            post_prog(x, t.progs[r], r);
        d.run();
        for (uint32_t r = 0; r < 3; ++r)
            CHECK(out_equals(x, t.n, t.ins[r], t.want[r]));
        alone[i] = seg_bytes(x);
    }
    for (int async = 0; async < 2; ++async) {
        g_ctx = async ? "together, async" : "together";
        Dev d(window_for(nt));
        const std::vector<int8_t> before = d.window();
        std::vector<Ten> xs;
        for (uint32_t i = 0; i < nt; ++i)
            xs.push_back(make_ten(d, ctx[i], seg_win(i), SEG));
        std::vector<NetTenant> ts;
        for (uint32_t i = 0; i < nt; ++i)
            ts.push_back(build_net_tenant(xs[i], 40 + i, 3, per));
        for (uint32_t i = 0; i < nt; ++i) {
            enable(xs[i], cores_range(i * per, per));
            for (uint32_t r = 0; r < 3; ++r)
                post_prog(xs[i], ts[i].progs[r], r);
        }
        uint32_t together = 0; /* steps in which frames of several tenants ran */
        if (async) {
            Async h(d);
            for (auto &x : xs)
                h.add(x);
            h.drain(40);
            CHECK_EQ(h.map_errors, 0);
            CHECK_EQ(h.order_violations, 0);
        } else {
            for (int s = 0; s < 20000; ++s) {
                vf_disp_report_t r;
                if (d.step(&r) == 0)
                    break;
                uint32_t tenants_seen = 0;
                for (uint32_t c = 0; c < VF_CNN_CORES; ++c)
                    if (r.core[c].frames)
                        tenants_seen |= 1u << r.core_tenant[c];
                together += popcount(tenants_seen) > 1;
            }
            if (nt > 1)
                CHECK(together > 0);
        }
        std::vector<const Ten *> segs;
        for (uint32_t i = 0; i < nt; ++i) {
            for (uint32_t r = 0; r < 3; ++r) {
                CHECK(out_equals(xs[i], ts[i].n, ts[i].ins[r], ts[i].want[r]));
                CHECK_EQ(record(xs[i], r).status, VF_CPL_OK);
            }
            CHECK(seg_bytes(xs[i]) == alone[i]);
            CHECK_EQ(xs[i].r().requests, 3);
            segs.push_back(&xs[i]);
        }
        CHECK(untouched_outside(d, before, segs));
        CHECK(d.guards_intact());
    }
}

/* A tenant whose frame saves outside its segment faults alone. On a board
 * with fewer than three cores the tenants take turns on core 0. */
static void test_fault_isolation()
{
    const uint32_t nt = 3, bad = 1; /* the middle tenant is the bad one */
    const bool shared = VF_CNN_CORES < 3;
    const uint32_t per = shared ? 1 : VF_CNN_CORES / 3;
    auto mask_of = [&](uint32_t i) { return shared ? 1u : cores_range(i * per, per); };
    /* references: the good tenants alone */
    std::vector<std::vector<int8_t>> alone(nt);
    for (uint32_t i = 0; i < nt; ++i) {
        if (i == bad)
            continue;
        Dev d(window_for(nt));
        Ten x = make_ten(d, i, seg_win(i), SEG);
        NetTenant t = build_net_tenant(x, 60 + i, 2, per);
        enable(x, mask_of(i));
        for (uint32_t r = 0; r < 2; ++r)
            post_prog(x, t.progs[r], 10 * i + r);
        d.run();
        alone[i] = seg_bytes(x);
    }
    for (int async = 0; async < 2; ++async) {
        g_ctx = async ? "async" : "step";
        Dev d(window_for(nt));
        d.regs.g.irq_enable = 1;
        d.regs.g.irq_mask = 1u << (VF_IRQ_FAULT_SHIFT + bad);
        const std::vector<int8_t> before = d.window();
        std::vector<Ten> xs;
        for (uint32_t i = 0; i < nt; ++i)
            xs.push_back(make_ten(d, i, seg_win(i), SEG));
        std::vector<NetTenant> ts;
        for (uint32_t i = 0; i < nt; ++i)
            ts.push_back(build_net_tenant(xs[i], 60 + i, 2, per));
        /* the bad tenant: request 0 good, request 1 saves past its segment
         * in its second pool frame, then a good request (aborted) */
        Ten &b = xs[bad];
        Inst &bi = ts[bad].ins[1];
        const uint32_t pool_frame = bi.layers[1].size() > 1 ? 1 : 0;
        Frame &f = bi.layers[1][pool_frame];
        const vf_insn_t evil = mk_mem(VF_OP_SAVE, b.limit - 8, 0, 1, 1, 16, 16, 0, 0, 1, 1, VF_DEP_POP_PREV);
        f.insns[3] = evil;
        b.put(f.off + 3 * VF_INSN_BYTES, &evil, sizeof evil);
        const NetTenant b2 = build_net_tenant(b, 99, 1, per);
        const uint32_t bad_entry = (uint32_t)bi.layers[0].size() + 1 + pool_frame;

        for (uint32_t i = 0; i < nt; ++i)
            enable(xs[i], shared ? (i == 0 ? 1u : 0u) : mask_of(i));
        for (uint32_t i = 0; i < nt; ++i)
            for (uint32_t r = 0; r < 2; ++r)
                post_prog(xs[i], ts[i].progs[r], 10 * i + r);
        post_prog(b, b2.progs[0], 77);

        Async h(d);
        for (auto &x : xs)
            h.add(x);
        auto settle = [&]() {
            if (!async) {
                d.run();
                return;
            }
            for (int k = 0; k < 100000; ++k) {
                const uint32_t p = h.tick(30);
                /* the faulting request's record waits for its frames in flight */
                if (b.r().status == VF_TENANT_FAULTED && b.r().inflight > 0)
                    CHECK(b.r().ring_head <= 1);
                if (p == 0 && !h.any_busy())
                    break;
            }
        };
        settle();
        if (shared) { /* core 0: tenant 0, then the bad one, then tenant 2 */
            set_mask(xs[0], 0);
            settle();
            set_mask(b, 1u);
            settle();
            set_mask(xs[2], 1u);
            settle();
        }
        CHECK_EQ(h.map_errors, 0);
        CHECK_EQ(h.order_violations, 0);
        const vf_disp_tenant_regs_t &r = b.r();
        CHECK_EQ(r.status, VF_TENANT_FAULTED);
        CHECK_EQ(r.fault, VF_FAULT_SEGMENT);
        CHECK_EQ(r.fault_addr, b.limit);
        CHECK_EQ(r.fault_insn, 3);
        CHECK_EQ(r.fault_entry, bad_entry);
        CHECK_EQ(r.fault_seq, 1);
        CHECK_EQ(r.fault_opcode, VF_OP_SAVE);
        const uint32_t bmask = mask_of(bad);
        CHECK(r.fault_core < VF_CNN_CORES && ((bmask >> r.fault_core) & 1u));
        /* slot of the frame (request 1's program starts at slot 1), mod k */
        CHECK_EQ(r.fault_core, nth_core(bmask, ((1 + pool_frame) % per) % popcount(bmask)));
        CHECK_EQ(r.active_mask, 0u); /* released */
        CHECK_EQ(r.ring_head, 3);    /* every posted request has its record */
        CHECK_EQ(r.requests, 1);
        CHECK_EQ(r.failed, 2);
        CHECK_EQ(r.inflight, 0);
        const vf_disp_completion_t c0 = record(b, 0), c1 = record(b, 1), c2 = record(b, 2);
        CHECK_EQ(c0.status, VF_CPL_OK);
        CHECK(out_equals(b, ts[bad].n, ts[bad].ins[0], ts[bad].want[0]));
        CHECK_EQ(c1.status, VF_CPL_FAULT);
        CHECK_EQ(c1.request_id, 10 * bad + 1);
        CHECK_EQ(c1.fault, VF_FAULT_SEGMENT);
        CHECK_EQ(c1.fault_addr, b.limit);
        CHECK_EQ(c1.fault_core, r.fault_core);
        CHECK_EQ(c1.fault_entry, bad_entry);
        CHECK_EQ(c1.fault_insn, 3);
        CHECK_EQ(c1.fault_opcode, VF_OP_SAVE);
        CHECK(c1.frames >= bi.layers[0].size() + 1);
        CHECK_EQ(c2.status, VF_CPL_ABORTED);
        CHECK_EQ(c2.request_id, 77);
        CHECK_EQ(c2.fault, VF_FAULT_SEGMENT);
        CHECK_EQ(c2.frames, 0);
        CHECK((d.regs.g.irq_status >> (VF_IRQ_FAULT_SHIFT + bad)) & 1u);
        CHECK_EQ(d.regs.g.irq, 1);
        /* the others are unaffected */
        std::vector<const Ten *> segs;
        for (uint32_t i = 0; i < nt; ++i) {
            segs.push_back(&xs[i]);
            if (i == bad)
                continue;
            CHECK_EQ(xs[i].r().status, VF_TENANT_IDLE);
            CHECK_EQ(xs[i].r().fault, 0);
            for (uint32_t q = 0; q < 2; ++q) {
                CHECK(out_equals(xs[i], ts[i].n, ts[i].ins[q], ts[i].want[q]));
                CHECK_EQ(record(xs[i], q).status, VF_CPL_OK);
            }
            CHECK(seg_bytes(xs[i]) == alone[i]);
        }
        CHECK(untouched_outside(d, before, segs));
        CHECK(d.guards_intact());

        /* a request posted to the faulted tenant is reported at once */
        ack_all(b);
        const uint32_t late = post_prog(b, b2.progs[0], 78);
        d.run();
        CHECK_EQ(record(b, late).status, VF_CPL_ABORTED);
        CHECK_EQ(record(b, late).request_id, 78);

        /* reset and reuse: disable, then enable with the ring at its tail */
        b.r().control = 0;
        d.run();
        CHECK_EQ(b.r().status, VF_TENANT_DISABLED);
        CHECK_EQ(d.regs.g.irq_status >> (VF_IRQ_FAULT_SHIFT + bad) & 1u, 0);
        CHECK_EQ(d.regs.g.irq, 0);
        ack_all(b);
        if (shared)
            set_mask(xs[2], 0);
        d.run();
        enable(b, bmask);
        const uint32_t again = post_prog(b, b2.progs[0], 79);
        d.run();
        CHECK_EQ(b.r().status, VF_TENANT_IDLE);
        CHECK_EQ(b.r().fault, 0);
        CHECK_EQ(b.r().requests, 1);
        CHECK_EQ(record(b, again).status, VF_CPL_OK);
        CHECK(out_equals(b, b2.n, b2.ins[0], b2.want[0]));
        CHECK(d.guards_intact());
    }
}

/* Faults found by the dispatcher itself, and a core fault other than SEGMENT:
 * each stops the victim with code and address; a bystander finishes and
 * nothing outside the two segments changes. */
static void test_dispatch_faults()
{
    enum { PROG_PAST_END, FRAME_PAST_END, FRAME_OFFSET_HUGE, BAD_OP, ZERO_INSNS, MISALIGNED, FLAGS, CORE_OPCODE, N };
    const char *names[N] = {"program past end", "frame past end", "frame offset huge", "bad op",
                            "zero insns",       "misaligned",     "flags",             "core opcode"};
    for (int kind = 0; kind < N; ++kind) {
        g_ctx = names[kind];
        Dev d(window_for(2));
        const std::vector<int8_t> before = d.window();
        Ten v = make_ten(d, 4, seg_win(0), SEG);
        Ten by = make_ten(d, 5, seg_win(1), SEG);
        const NetTenant bt = build_net_tenant(by, 70, 1, 1);
        seed(71 + kind);
        const Counter cnt = make_counter(v, 4, 1);
        std::vector<vf_dispatch_t> p = program_for(cnt.layers, 2);
        uint32_t prog = 0, entries = 0, flags = 0;
        uint32_t want_fault = 0, want_entry = 0;
        uint64_t want_addr = 0;
        switch (kind) {
        case PROG_PAST_END: {
            /* three good frames at the very end of the segment, then nothing */
            std::vector<vf_dispatch_t> q(p.begin(), p.begin() + 3);
            prog = v.limit - 3 * 8;
            v.put(prog, q.data(), 3 * 8);
            entries = 10;
            want_fault = VF_DFAULT_PROGRAM;
            want_addr = v.limit;
            want_entry = 3;
            break;
        }
        case FRAME_PAST_END:
            p[2].frame_offset = v.limit - 2 * VF_INSN_BYTES;
            p[2].n_insns = 5;
            want_fault = VF_DFAULT_FRAME;
            want_addr = v.limit;
            want_entry = 2;
            break;
        case FRAME_OFFSET_HUGE:
            p[1].frame_offset = 0xffffffc0u;
            want_fault = VF_DFAULT_FRAME;
            want_addr = 0xffffffc0u;
            want_entry = 1;
            break;
        case BAD_OP:
            p[2].op = 9;
            want_fault = VF_DFAULT_ENTRY;
            want_entry = 2;
            break;
        case ZERO_INSNS:
            p[3].n_insns = 0;
            want_fault = VF_DFAULT_ENTRY;
            want_entry = 3;
            break;
        case MISALIGNED:
            want_fault = VF_DFAULT_REQUEST;
            break;
        case FLAGS:
            flags = 1;
            want_fault = VF_DFAULT_REQUEST;
            break;
        case CORE_OPCODE: {
            const vf_insn_t junk = blank(42);
            v.put(cnt.layers[0][2].off + 2 * VF_INSN_BYTES, &junk, sizeof junk);
            want_fault = VF_FAULT_OPCODE;
            want_addr = 42;
            want_entry = 2;
            break;
        }
        default:
            break;
        }
        if (kind != PROG_PAST_END) {
            prog = place_program(v, p);
            entries = (uint32_t)p.size();
        }
        if (kind == BAD_OP || kind == ZERO_INSNS)
            want_addr = prog + 8 * want_entry;
        if (kind == MISALIGNED)
            prog += 4;
        const uint32_t vmask = VF_CNN_CORES >= 3 ? cores_range(0, 2) : 1u;
        const uint32_t bmask = VF_CNN_CORES >= 2 ? 1u << (VF_CNN_CORES - 1) : 0u;
        enable(v, vmask);
        enable(by, bmask);
        const uint32_t seq = post(v, prog, entries, 5, flags);
        post(v, prog, entries, 6); /* aborted */
        post_prog(by, bt.progs[0], 1);
        d.run();
        if (bmask == 0) { /* one core: the victim releases it when it faults */
            set_mask(by, 1u);
            d.run();
        }
        if (kind == MISALIGNED || kind == FLAGS)
            want_addr = v.ring_offset + (seq & (v.ring_size - 1)) * VF_DISP_REQUEST_BYTES;
        const vf_disp_tenant_regs_t &r = v.r();
        CHECK_EQ(r.status, VF_TENANT_FAULTED);
        CHECK_EQ(r.fault, want_fault);
        CHECK_EQ(r.fault_addr, want_addr);
        CHECK_EQ(r.fault_entry, want_entry);
        CHECK_EQ(r.fault_seq, seq);
        if (kind == CORE_OPCODE) {
            CHECK(r.fault_core < VF_CNN_CORES && ((vmask >> r.fault_core) & 1u));
            CHECK_EQ(r.fault_insn, 2);
        } else {
            CHECK_EQ(r.fault_core, VF_DISP_NO_CORE);
        }
        const vf_disp_completion_t c = record(v, seq);
        CHECK_EQ(c.status, VF_CPL_FAULT);
        CHECK_EQ(c.fault, want_fault);
        CHECK_EQ(c.fault_addr, want_addr);
        CHECK_EQ(c.request_id, 5);
        CHECK_EQ(record(v, seq + 1).status, VF_CPL_ABORTED);
        CHECK_EQ(r.ring_head, seq + 2);
        /* frames before the fault ran once, the rest not at all */
        if (kind == PROG_PAST_END || kind == FRAME_PAST_END || kind == ZERO_INSNS) {
            CHECK_EQ(c.frames, want_entry);
            for (uint32_t e = 0; e < 4; ++e)
                CHECK_EQ(v.seg()[cnt.base + cnt.cell_of[0][e] * cnt.cw], e < want_entry ? 1 : 0);
        }
        CHECK_EQ(record(by, 0).status, VF_CPL_OK);
        CHECK(out_equals(by, bt.n, bt.ins[0], bt.want[0]));
        CHECK(untouched_outside(d, before, {&v, &by}));
        CHECK(d.guards_intact());
    }
}

/* Ring full / empty / wrap-around of the 32-bit sequence numbers, and
 * doorbells that break the ring rule. */
static void test_ring()
{
    for (uint32_t size : {1u, 4u}) {
        g_ctx = "ring size " + std::to_string(size);
        Dev d(window_for(1));
        seed(80);
        const uint32_t start = 0xffffffffu - 5;
        Ten x = make_ten(d, 6, seg_win(0), SEG, size, start);
        const Counter cnt = make_counter(x, 3, 1);
        const uint32_t prog = place_program(x, program_for(cnt.layers, 2));
        /* an empty program (END only) too */
        const uint32_t empty = place_program(x, std::vector<vf_dispatch_t>());
        enable(x, cores_range(0, 2));
        CHECK(d.step() > 0);
        CHECK_EQ(x.r().status, VF_TENANT_IDLE);
        CHECK_EQ(x.r().ring_head, start);
        CHECK_EQ(d.step(), 0); /* empty ring: quiescent */
        uint32_t done = 0, id = 0, increments = 0;
        for (int round = 0; round < 9; ++round) {
            const uint32_t room = size - (x.tail - x.ack);
            const uint32_t n = 1 + rnd(room);
            std::vector<uint32_t> seqs;
            for (uint32_t i = 0; i < n; ++i) {
                const bool e = rnd(3) == 0;
                seqs.push_back(e ? post(x, empty, 0, id++) : post_prog(x, prog, id++));
                increments += !e;
            }
            CHECK(x.tail - x.ack <= size); /* full at most */
            d.run();
            for (uint32_t i = 0; i < n; ++i) {
                const vf_disp_completion_t c = record(x, seqs[i]);
                CHECK_EQ(c.seq, seqs[i]);
                CHECK_EQ(c.status, VF_CPL_OK);
                CHECK_EQ(c.request_id, id - n + i);
            }
            done += n;
            CHECK_EQ(x.r().ring_head, start + done);
            CHECK_EQ(x.r().status, VF_TENANT_IDLE);
            CHECK((d.regs.g.irq_status >> 6) & 1u);
            ack_all(x);
            CHECK_EQ(d.step(), 0);
            CHECK_EQ((d.regs.g.irq_status >> 6) & 1u, 0);
        }
        CHECK(x.r().ring_head < start); /* wrapped past 2^32 */
        CHECK(cells_equal(x, cnt, (int)increments));
        /* a full ring the driver has not acknowledged: one more faults */
        for (uint32_t i = 0; i < size; ++i)
            post_prog(x, prog, 500 + i);
        d.run();
        CHECK_EQ(x.r().status, VF_TENANT_IDLE);
        const uint32_t extra = post_prog(x, prog, 600);
        d.step();
        CHECK_EQ(x.r().status, VF_TENANT_FAULTED);
        CHECK_EQ(x.r().fault, VF_DFAULT_DOORBELL);
        CHECK_EQ(x.r().fault_addr, extra + 1);
        CHECK_EQ(x.r().fault_entry, x.ack);
        /* the request in the overfull entry was not run nor reported */
        CHECK_EQ(x.r().ring_head, extra);
        CHECK(d.guards_intact());
    }
    {
        g_ctx = "ack beyond head";
        Dev d(window_for(1));
        Ten x = make_ten(d, 0, seg_win(0), SEG, 4, 100);
        const uint32_t empty = place_program(x, std::vector<vf_dispatch_t>());
        enable(x, 1u);
        post(x, empty, 0, 1);
        d.run();
        CHECK_EQ(x.r().ring_head, 101);
        x.r().cpl_ack = 102;
        d.step();
        CHECK_EQ(x.r().fault, VF_DFAULT_DOORBELL);
        CHECK_EQ(x.r().fault_entry, 102);
    }
}

/* Live re-allocation with frames in flight: random core-mask changes while
 * requests run; nothing lost or duplicated, results correct, frames only on
 * cores the tenant holds, one frame per core at a time. */
static void test_mask_change_in_flight()
{
    for (int trial = 0; trial < (TB_SANITIZED ? 3 : 6); ++trial) {
        const bool async = trial % 2 == 0;
        g_ctx = "trial " + std::to_string(trial) + (async ? " async" : " step");
        Dev d(window_for(3));
        const uint32_t nt = VF_CNN_CORES >= 2 ? 3 : 2;
        std::vector<Ten> xs;
        for (uint32_t i = 0; i < nt; ++i)
            xs.push_back(make_ten(d, 1 + 2 * i, seg_win(i), SEG, 8));
        std::vector<NetTenant> nets;
        std::vector<Counter> cnts;
        std::vector<uint32_t> cprog;
        const uint32_t layers = 3, reqs = 4;
        for (uint32_t i = 0; i < nt; ++i) {
            nets.push_back(build_net_tenant(xs[i], 500 + 10 * trial + i, 2, 1 + (uint32_t)rnd(5)));
            seed(700 + 10 * trial + i);
            cnts.push_back(make_counter(xs[i], 5 + rnd(8), layers));
            cprog.push_back(place_program(xs[i], program_for(cnts[i].layers, 1 + rnd(6))));
        }
        seed(800 + trial);
        /* initial masks: a few cores each, some free */
        for (uint32_t i = 0; i < nt; ++i)
            enable(xs[i], VF_CNN_CORES >= nt ? cores_range(i * (VF_CNN_CORES / nt), 1 + rnd(VF_CNN_CORES / nt))
                                             : (i == 0 ? 1u : 0u));
        for (uint32_t i = 0; i < nt; ++i) {
            for (uint32_t q = 0; q < reqs; ++q)
                post_prog(xs[i], cprog[i], 1000 + q);
            for (uint32_t q = 0; q < 2; ++q)
                post_prog(xs[i], nets[i].progs[q], 2000 + q);
        }
        Async h(d);
        for (auto &x : xs)
            h.add(x);
        uint32_t changes = 0, applied = 0, rejected = 0, idle_rounds = 0;
        for (int n = 0; n < 200000; ++n) {
            /* a re-allocation now and then: shrink, grow into free cores,
             * move, take all away, or try to grab another tenant's core */
            if (rnd(4) == 0) {
                Ten &x = xs[rnd(nt)];
                uint32_t held = 0;
                for (auto &o : xs)
                    if (&o != &x)
                        held |= o.r().active_mask;
                const uint32_t free_ = all_cores() & ~held;
                uint32_t m = 0;
                switch (rnd(5)) {
                case 0: m = x.r().active_mask & (uint32_t)rnd64(); break;           /* shrink */
                case 1: m = x.r().active_mask | (free_ & (uint32_t)rnd64()); break; /* grow */
                case 2: m = free_ & (uint32_t)rnd64(); break;                       /* move */
                case 3: m = 0; break;                                               /* park */
                default: m = (uint32_t)rnd64() & all_cores(); break;                /* maybe conflict */
                }
                set_mask(x, m);
                ++changes;
            }
            uint32_t p;
            if (async) {
                p = h.tick(25);
            } else {
                vf_disp_report_t r;
                p = d.step(&r);
                h.rep.masks_applied += r.masks_applied;
                h.rep.masks_rejected += r.masks_rejected;
            }
            /* masks stay disjoint; a rejection names held cores */
            uint32_t seen = 0;
            for (auto &x : xs) {
                CHECK((seen & x.r().active_mask) == 0);
                seen |= x.r().active_mask;
                if (x.r().mask_result == VF_MASK_REJECT_CONFLICT)
                    CHECK(x.r().mask_conflict != 0);
            }
            bool finished = true;
            for (auto &x : xs)
                finished = finished && x.r().ring_head == x.tail;
            if (finished && !h.any_busy())
                break;
            if (p == 0 && !h.any_busy() && ++idle_rounds % 8 == 0) {
                /* everyone parked: give a waiting tenant some free cores */
                for (auto &x : xs)
                    if (x.r().ring_head != x.tail && x.r().active_mask == 0) {
                        uint32_t held = 0;
                        for (auto &o : xs)
                            held |= o.r().active_mask;
                        if ((all_cores() & ~held) != 0) {
                            set_mask(x, all_cores() & ~held);
                            break;
                        }
                    }
            }
            if (g_checks_failed)
                break;
        }
        applied = h.rep.masks_applied;
        rejected = h.rep.masks_rejected;
        CHECK_EQ(h.map_errors, 0);
        CHECK_EQ(h.order_violations, 0);
        CHECK_EQ(h.double_issue, 0);
        for (uint32_t i = 0; i < nt; ++i) {
            CHECK_EQ(xs[i].r().ring_head, xs[i].tail);
            CHECK_EQ(xs[i].r().requests, reqs + 2);
            CHECK_EQ(xs[i].r().failed, 0);
            CHECK(cells_equal(xs[i], cnts[i], (int)(reqs * layers)));
            for (uint32_t q = 0; q < 2; ++q)
                CHECK(out_equals(xs[i], nets[i].n, nets[i].ins[q], nets[i].want[q]));
            uint64_t frames = (uint64_t)reqs * frames_of(cnts[i].layers);
            for (uint32_t q = 0; q < 2; ++q)
                frames += frames_of(nets[i].ins[q].layers);
            CHECK_EQ(xs[i].r().frames, frames);
        }
        printf("    %s: %u mask requests, %u applied, %u rejected\n", g_ctx.c_str(), changes, applied, rejected);
        CHECK(applied > 3);
        CHECK(d.guards_intact());
    }
}

/* Core-mask requests: conflicts and bad bits are rejected and change nothing;
 * release-then-acquire hands a core over, and the new owner waits for a frame
 * the old owner still has in flight there; requests of disabled tenants wait
 * for the enable. */
static void test_mask_rules()
{
    Dev d(window_for(2));
    Ten a = make_ten(d, 0, seg_win(0), SEG);
    Ten b = make_ten(d, 1, seg_win(1), SEG);
    seed(90);
    const Counter ca = make_counter(a, 4, 1);
    const Counter cb = make_counter(b, 4, 1);
    const uint32_t pa = place_program(a, program_for(ca.layers, 1));
    const uint32_t pb = place_program(b, program_for(cb.layers, 1));
    const uint32_t c0 = VF_CNN_CORES - 1; /* the contested core */
    enable(a, 1u << c0);
    d.step();
    CHECK_EQ(a.r().active_mask, 1u << c0);
    /* a mask request on a disabled tenant waits */
    b.r().core_mask = 1u << c0;
    b.r().mask_seq = 1;
    d.step();
    CHECK_EQ(b.r().mask_done, 0);
    CHECK_EQ(b.r().status, VF_TENANT_DISABLED);
    /* the enable applies core_mask: rejected, the core is A's */
    enable(b, 1u << c0);
    d.step();
    CHECK_EQ(b.r().status, VF_TENANT_IDLE);
    CHECK_EQ(b.r().mask_done, 1);
    CHECK_EQ(b.r().mask_result, VF_MASK_REJECT_CONFLICT);
    CHECK_EQ(b.r().mask_conflict, 1u << c0);
    CHECK_EQ(b.r().active_mask, 0u);
    CHECK_EQ(a.r().active_mask, 1u << c0);
    if (VF_POOL_CORES < 32) {
        set_mask(b, 1u << VF_POOL_CORES);
        d.step();
        CHECK_EQ(b.r().mask_result, VF_MASK_REJECT_RANGE);
        CHECK_EQ(b.r().mask_conflict, 1u << VF_POOL_CORES);
        CHECK_EQ(b.r().active_mask, 0u);
    }
    if (VF_RNN_CORES > 0) { /* a tenant holds cores of one kind */
        set_mask(b, 1u | 1u << VF_CNN_CORES);
        d.step();
        CHECK_EQ(b.r().mask_result, VF_MASK_REJECT_KIND);
        CHECK_EQ(b.r().mask_conflict, 1u << VF_CNN_CORES);
        CHECK_EQ(b.r().active_mask, 0u);
    }
    /* B has work and no core: it waits (quiescent), nothing lost */
    post_prog(b, pb, 1);
    CHECK_EQ(d.step(), 1); /* the request starts */
    CHECK_EQ(d.step(), 0);
    CHECK_EQ(b.r().status, VF_TENANT_RUNNING);
    /* A has a frame in flight on c0, then releases it; B takes it at once but
     * gets no frame there before A's retires */
    post_prog(a, pa, 1);
    Async h(d);
    h.add(a);
    h.add(b);
    h.tick(0);
    CHECK(h.busy[c0] && h.fl[c0].tenant == 0);
    set_mask(a, 0);
    h.tick(0);
    CHECK_EQ(a.r().active_mask, 0u);
    set_mask(b, 1u << c0);
    h.tick(0);
    CHECK_EQ(b.r().mask_result, VF_MASK_APPLIED);
    CHECK_EQ(b.r().active_mask, 1u << c0);
    CHECK(h.busy[c0] && h.fl[c0].tenant == 0); /* still A's frame */
    h.tick(0);
    CHECK_EQ(h.double_issue, 0);
    h.complete(c0);
    h.tick(0);
    CHECK(h.busy[c0] && h.fl[c0].tenant == 1); /* now B's */
    CHECK_EQ(h.fl[c0].scrub, 1);                /* after another tenant's frame */
    h.drain(100);
    CHECK_EQ(b.r().requests, 1);
    CHECK(cells_equal(b, cb, 1));
    /* A's request waits without cores; give it another core or c0 back */
    CHECK_EQ(a.r().status, VF_TENANT_RUNNING);
    set_mask(b, 0);
    d.run();
    set_mask(a, 1u << c0);
    d.run();
    CHECK_EQ(a.r().requests, 1);
    CHECK(cells_equal(a, ca, 1));
    CHECK_EQ(h.map_errors, 0);
    CHECK(d.guards_intact());
}

/* Completion records and the interrupt line for several tenants. */
static void test_records_and_irq()
{
    Dev d(window_for(3));
    d.regs.g.irq_enable = 1;
    std::vector<Ten> xs;
    for (uint32_t i = 0; i < 3; ++i)
        xs.push_back(make_ten(d, 2 + (VF_DISP_TENANTS - 3) * i / 2, seg_win(i), SEG, 4)); /* 2, T/2+.., T-1 */
    seed(120);
    std::vector<Counter> cs;
    std::vector<uint32_t> ps;
    for (uint32_t i = 0; i < 3; ++i) {
        cs.push_back(make_counter(xs[i], 2 + i, 2));
        ps.push_back(place_program(xs[i], program_for(cs[i].layers, 1)));
    }
    /* tenant 2's second request reads outside its segment */
    std::vector<vf_dispatch_t> badp = program_for(cs[2].layers, 1);
    badp[1].frame_offset = xs[2].limit;
    const uint32_t bad = place_program(xs[2], badp);
    for (uint32_t i = 0; i < 3; ++i)
        enable(xs[i], VF_CNN_CORES >= 3 ? 1u << i : (i == 0 ? 1u : 0u));
    post_prog(xs[0], ps[0], 10);
    post_prog(xs[0], ps[0], 11);
    post_prog(xs[1], ps[1], 20);
    post_prog(xs[2], ps[2], 30);
    post_prog(xs[2], bad, 31);
    d.regs.g.irq_mask = 1u << xs[1].t; /* only tenant 1's completions */
    d.run();
    if (VF_CNN_CORES < 3) { /* pass core 0 along: 0 -> 1 -> 2 */
        set_mask(xs[0], 0);
        d.run();
        set_mask(xs[1], 1u);
        d.run();
        set_mask(xs[1], 0);
        d.run();
        set_mask(xs[2], 1u);
        d.run();
    }
    const uint32_t t0 = xs[0].t, t1 = xs[1].t, t2 = xs[2].t;
    const uint32_t isr = d.regs.g.irq_status;
    CHECK((isr >> t0) & 1u);
    CHECK((isr >> t1) & 1u);
    CHECK((isr >> t2) & 1u);
    CHECK((isr >> (VF_IRQ_FAULT_SHIFT + t2)) & 1u);
    CHECK_EQ((isr >> (VF_IRQ_FAULT_SHIFT + t0)) & 1u, 0);
    CHECK_EQ(d.regs.g.irq, 1);
    CHECK_EQ(record(xs[0], 0).request_id, 10);
    CHECK_EQ(record(xs[0], 1).request_id, 11);
    CHECK_EQ(record(xs[0], 1).frames, frames_of(cs[0].layers));
    CHECK_EQ(record(xs[0], 1).barriers, 2);
    CHECK_EQ(record(xs[1], 0).status, VF_CPL_OK);
    CHECK_EQ(record(xs[2], 0).status, VF_CPL_OK);
    const vf_disp_completion_t c = record(xs[2], 1);
    CHECK_EQ(c.status, VF_CPL_FAULT);
    CHECK_EQ(c.fault, VF_DFAULT_FRAME);
    CHECK_EQ(c.fault_addr, xs[2].limit);
    CHECK_EQ(c.fault_entry, 1);
    CHECK_EQ(c.frames, 1);
    CHECK_EQ(c.request_id, 31);
    /* acknowledging tenant 1 drops the line (tenant 0 is masked) */
    ack_all(xs[1]);
    d.step();
    CHECK_EQ((d.regs.g.irq_status >> t1) & 1u, 0);
    CHECK_EQ(d.regs.g.irq, 0);
    /* the fault bit is level until the tenant is disabled */
    d.regs.g.irq_mask = 1u << (VF_IRQ_FAULT_SHIFT + t2);
    d.step();
    CHECK_EQ(d.regs.g.irq, 1);
    ack_all(xs[2]);
    d.step();
    CHECK_EQ(d.regs.g.irq, 1);
    xs[2].r().control = 0;
    d.run();
    CHECK_EQ(xs[2].r().status, VF_TENANT_DISABLED);
    CHECK_EQ(d.regs.g.irq, 0);
    d.regs.g.irq_enable = 0;
    d.regs.g.irq_mask = 0xffffffffu;
    d.step();
    CHECK_EQ(d.regs.g.irq, 0);
    CHECK(d.guards_intact());
}

/* Disabling a tenant with requests pending: frames in flight finish, every
 * pending request is reported ABORTED, the cores are free at once. */
static void test_disable_pending()
{
    Dev d(window_for(2));
    Ten a = make_ten(d, 3, seg_win(0), SEG, 8);
    Ten b = make_ten(d, 4, seg_win(1), SEG, 8);
    seed(130);
    const Counter ca = make_counter(a, 6, 2);
    const uint32_t pa = place_program(a, program_for(ca.layers, 3));
    const Counter cb = make_counter(b, 3, 1);
    const uint32_t pb = place_program(b, program_for(cb.layers, 2));
    const uint32_t m = VF_CNN_CORES >= 3 ? cores_range(0, 3) : 1u;
    enable(a, m);
    for (uint32_t q = 0; q < 4; ++q)
        post_prog(a, pa, q);
    Async h(d);
    h.add(a);
    h.add(b);
    h.tick(0); /* request 0 starts, frames in flight */
    CHECK(h.any_busy());
    const uint32_t inflight = a.r().inflight;
    CHECK(inflight > 0);
    a.r().control = 0;
    h.tick(0);
    CHECK_EQ(a.r().status, VF_TENANT_DRAINING);
    CHECK_EQ(a.r().active_mask, 0u);
    CHECK_EQ(a.r().ring_head, 0); /* no record while frames are in flight */
    /* B may take the cores now; its frames wait for A's */
    enable(b, m);
    post_prog(b, pb, 9);
    h.tick(0);
    CHECK_EQ(b.r().active_mask, m);
    CHECK_EQ(h.double_issue, 0);
    h.drain(50);
    CHECK_EQ(a.r().status, VF_TENANT_DISABLED);
    CHECK_EQ(a.r().ring_head, 4);
    CHECK_EQ(a.r().requests, 0);
    CHECK_EQ(a.r().failed, 4);
    const vf_disp_completion_t c0 = record(a, 0);
    CHECK_EQ(c0.status, VF_CPL_ABORTED);
    CHECK_EQ(c0.fault, VF_DFAULT_DISABLED);
    CHECK_EQ(c0.frames, inflight);
    for (uint32_t q = 1; q < 4; ++q) {
        CHECK_EQ(record(a, q).status, VF_CPL_ABORTED);
        CHECK_EQ(record(a, q).request_id, q);
        CHECK_EQ(record(a, q).frames, 0);
    }
    /* the frames that were in flight ran exactly once */
    uint32_t ones = 0;
    for (uint32_t i = 0; i < ca.cells; ++i) {
        const int v = a.seg()[ca.base + i * ca.cw];
        CHECK(v == 0 || v == 1);
        ones += v == 1;
    }
    CHECK_EQ(ones, inflight);
    CHECK_EQ(record(b, 0).status, VF_CPL_OK);
    CHECK(cells_equal(b, cb, 1));
    /* re-enable A with its ring at the tail: reused */
    set_mask(b, 0);
    d.run();
    ack_all(a);
    enable(a, m);
    const uint32_t q = post_prog(a, pa, 50);
    d.run();
    CHECK_EQ(record(a, q).status, VF_CPL_OK);
    CHECK_EQ(a.r().requests, 1);
    CHECK_EQ(a.r().frames, frames_of(ca.layers));
    CHECK(d.guards_intact());
}

/* Bad segment or ring registers are refused at enable without a write. */
static void test_config_faults()
{
    struct Case {
        const char *name;
        uint32_t fault;
    };
    for (int kind = 0; kind < 10; ++kind) {
        Dev d(window_for(2));
        const std::vector<int8_t> before = d.window();
        Ten o = make_ten(d, 0, seg_win(0), SEG); /* a live tenant */
        enable(o, 0);
        d.step();
        Ten x = make_ten(d, 1, seg_win(1), SEG);
        uint32_t want = 0;
        uint64_t addr = 0;
        uint32_t entry = 0;
        enable(x, 0);
        vf_disp_tenant_regs_t &r = x.r();
        switch (kind) {
        case 0: g_ctx = "below the window"; r.seg_base = MEM_BASE - 4096; want = VF_DFAULT_WINDOW; addr = 0; break;
        case 1:
            g_ctx = "past the window";
            r.seg_limit = (uint32_t)(d.bytes - x.win + 64);
            want = VF_DFAULT_WINDOW;
            addr = d.bytes - x.win;
            break;
        case 2: g_ctx = "empty segment"; r.seg_limit = 0; want = VF_DFAULT_WINDOW; break;
        case 3:
            g_ctx = "overlap";
            r.seg_base = MEM_BASE + o.win + o.limit - 64;
            want = VF_DFAULT_OVERLAP;
            entry = 0;
            break;
        case 4: g_ctx = "ring size 3"; r.ring_size = 3; want = VF_DFAULT_RING; addr = 3; break;
        case 5: g_ctx = "ring size 0"; r.ring_size = 0; want = VF_DFAULT_RING; addr = 0; break;
        case 6:
            g_ctx = "ring too large";
            r.ring_size = VF_DISP_RING_MAX * 2;
            want = VF_DFAULT_RING;
            addr = VF_DISP_RING_MAX * 2;
            break;
        case 7: g_ctx = "ring misaligned"; r.ring_offset = 8; want = VF_DFAULT_RING; addr = 8; break;
        case 8:
            g_ctx = "records past the end";
            r.cpl_offset = x.limit - 64;
            want = VF_DFAULT_RING;
            addr = x.limit;
            break;
        default:
            g_ctx = "ring past the end";
            r.ring_offset = x.limit - 16 * 4;
            r.ring_size = 8;
            want = VF_DFAULT_RING;
            addr = x.limit;
            break;
        }
        r.ring_tail = 3; /* requests "posted": none may be read or reported */
        d.run();
        CHECK_EQ(r.status, VF_TENANT_FAULTED);
        CHECK_EQ(r.fault, want);
        CHECK_EQ(r.fault_addr, addr);
        CHECK_EQ(r.fault_entry, entry);
        CHECK_EQ(r.fault_core, VF_DISP_NO_CORE);
        CHECK_EQ(r.ring_head, 0);
        CHECK(d.window() == before);
        r.control = 0;
        d.run();
        CHECK_EQ(r.status, VF_TENANT_DISABLED);
        CHECK(d.window() == before);
        CHECK(d.guards_intact());
    }
}

/* No data crosses tenants through a core's buffers. */
static void test_scrub()
{
    Dev d(window_for(2));
    Ten a = make_ten(d, 0, seg_win(0), SEG);
    Ten b = make_ten(d, 1, seg_win(1), SEG);
    const uint32_t c = 0;
    /* A loads secret weights and leaves them in WBUF */
    const uint32_t secret = a.alloc(256);
    memset(a.seg() + secret, 0x77, 256);
    Frame fa;
    fa.insns = {mk_marker(VF_OP_FRAME, 0, 0), mk_linear(secret, 0, 256, VF_BUF_WGT)};
    place_frame(a, fa);
    const uint32_t pa = place_program(a, program_for({{fa}}, 1));
    /* B computes a 1x1 conv of its own input with weights it never loads */
    const uint32_t cin = 8, cout = 4, px = 4;
    const uint32_t in = b.alloc(px * cin), out = b.alloc(px * cout);
    seed(140);
    fill_random_bytes(b.seg() + in, px * cin);
    std::vector<int32_t> prm = random_params(cout, cin, 1.0);
    const uint32_t po = put_params(b, prm);
    Frame fb;
    fb.insns = {mk_marker(VF_OP_FRAME, 0, 0), mk_linear(po, 0, cout * 12, VF_BUF_PARAM),
                mk_mem(VF_OP_LOAD_TILE, in, 0, 1, px, cin, cin, 0, 0, 1, px, VF_DEP_PUSH_NEXT),
                mk_conv(1, px, 1, px, cin, cout, 1, 0, -128, 127),
                mk_mem(VF_OP_SAVE, out, 0, 1, px, cout, cout, 0, 0, 1, px, VF_DEP_POP_PREV)};
    place_frame(b, fb);
    const uint32_t pb = place_program(b, program_for({{fb}}, 1));
    enable(a, 1u << c);
    post_prog(a, pa, 1);
    vf_disp_report_t tot;
    memset(&tot, 0, sizeof tot);
    d.run(100, &tot);
    CHECK_EQ(tot.scrubs, 0); /* the first owner since reset: power-on contents only */
    CHECK(d.cores[c].wbuf[0] == 0x77);
    set_mask(a, 0);
    d.run();
    enable(b, 1u << c);
    post_prog(b, pb, 2);
    memset(&tot, 0, sizeof tot);
    d.run(100, &tot);
    CHECK_EQ(tot.scrubs, 1);
    CHECK_EQ(record(b, 0).status, VF_CPL_OK);
    /* weights read as zero: the output is the requantized bias */
    for (uint32_t p = 0; p < px; ++p)
        for (uint32_t o = 0; o < cout; ++o)
            CHECK_EQ((int)b.seg()[out + p * cout + o],
                     (int)ref_clamp(ref_rshift_round((int64_t)prm[o * 3] * prm[o * 3 + 1], prm[o * 3 + 2]), -128,
                                    127));
    /* the same tenant again on the same core: no scrub */
    post_prog(b, pb, 3);
    memset(&tot, 0, sizeof tot);
    d.run(100, &tot);
    CHECK_EQ(tot.scrubs, 0);
    /* the same context after a disable/enable is another tenant */
    b.r().control = 0;
    d.run();
    ack_all(b);
    enable(b, 1u << c);
    post_prog(b, pb, 4);
    memset(&tot, 0, sizeof tot);
    d.run(100, &tot);
    CHECK_EQ(tot.scrubs, 1);
    CHECK(d.guards_intact());
}

/* A program of many barriers: bounded work per step, and quiescence. */
static void test_budget_and_quiescence()
{
    Dev d(window_for(1));
    Ten x = make_ten(d, 7, seg_win(0), SEG);
    std::vector<vf_dispatch_t> p(1000);
    for (auto &e : p) {
        e.frame_offset = 0;
        e.n_insns = 0;
        e.slot = 0;
        e.op = VF_DISPATCH_BARRIER;
    }
    const uint32_t prog = place_program(x, p); /* no END: the end of the program ends it */
    enable(x, 0);                              /* barriers need no core */
    post_prog(x, prog, 1);
    uint32_t steps = 0;
    for (; steps < 10000; ++steps) {
        vf_disp_report_t r;
        const uint32_t before = (uint32_t)x.r().barriers;
        if (d.step(&r) == 0)
            break;
        CHECK(r.barriers <= VF_DISP_WALK_BUDGET);
        CHECK(x.r().barriers - before <= VF_DISP_WALK_BUDGET);
    }
    CHECK(steps >= 1000 / VF_DISP_WALK_BUDGET);
    CHECK_EQ(record(x, 0).status, VF_CPL_OK);
    CHECK_EQ(record(x, 0).barriers, 1000);
    CHECK_EQ(x.r().status, VF_TENANT_IDLE);
    CHECK_EQ(d.step(), 0);
    CHECK(d.guards_intact());
}

/* Fuzzing: a tenant with corrupted dispatch programs, frames, ring entries
 * and register writes never changes a byte outside its segment, never
 * crashes, and the bystander's results stay correct. */
static void test_fuzz()
{
    /* the bystander alone, once */
    std::vector<int8_t> by_alone;
    {
        Dev d(window_for(2));
        Ten by = make_ten(d, 2, seg_win(1), SEG);
        const NetTenant bt = build_net_tenant(by, 150, 2, 2);
        enable(by, cores_range(VF_CNN_CORES - 1, 1));
        post_prog(by, bt.progs[0], 0);
        post_prog(by, bt.progs[1], 1);
        d.run();
        by_alone = seg_bytes(by);
    }
    const int iterations = TB_SANITIZED ? 60 : 200;
    uint64_t faults[32] = {0};
    uint64_t ok_records = 0, bad_records = 0, frames = 0;
    for (int it = 0; it < iterations; ++it) {
        g_ctx = "fuzz " + std::to_string(it);
        Dev d(window_for(2));
        const std::vector<int8_t> before = d.window();
        Ten v = make_ten(d, 5, seg_win(0), SEG / 4, 8);
        Ten by = make_ten(d, 2, seg_win(1), SEG);
        const NetTenant bt = build_net_tenant(by, 150, 2, 2);
        seed(2000 + it);
        /* the victim: a counter and a small net, then corruption */
        const Counter cnt = make_counter(v, 4, 2);
        NetShape s = random_shape();
        s.H = s.W = 4;
        const Net n = make_net(v, s);
        const Inst in = make_inst(v, n, 0);
        std::vector<std::vector<vf_dispatch_t>> progs = {program_for(cnt.layers, 1 + rnd(4)),
                                                         program_for(in.layers, 1 + rnd(4))};
        const uint32_t edge = rnd(4); /* how wild */
        for (auto &p : progs)
            for (auto &e : p)
                if (rnd(64) < 1 + 3 * edge) {
                    switch (rnd(6)) {
                    case 0: e.op = (uint8_t)rnd(5); break;
                    case 1: e.slot = (uint8_t)rnd64(); break;
                    case 2: e.n_insns = (uint16_t)(rnd(3) ? e.n_insns + rnd(8) - 4 : rnd64()); break;
                    case 3: e.frame_offset = rnd(3) ? e.frame_offset + 64 * (rnd(9) - 4) : (uint32_t)rnd64(); break;
                    case 4: e.frame_offset = v.limit - 64 * rnd(4); break;
                    default: fill_random_bytes(&e, sizeof e); break;
                    }
                }
        std::vector<uint32_t> offs;
        for (auto &p : progs)
            offs.push_back(place_program(v, p));
        /* corrupt instruction bytes of some frames */
        std::vector<const Frame *> all;
        for (auto &l : cnt.layers)
            for (auto &f : l)
                all.push_back(&f);
        for (auto &l : in.layers)
            for (auto &f : l)
                all.push_back(&f);
        for (uint32_t k = 0, m = rnd(3 + 4 * edge); k < m; ++k) {
            const Frame *f = all[rnd((uint32_t)all.size())];
            const uint32_t at = f->off + rnd(f->n * VF_INSN_BYTES);
            switch (rnd(4)) {
            case 0: v.seg()[at] = rnd_i8(); break;
            case 1: v.seg()[f->off + VF_INSN_BYTES * rnd(f->n)] = (int8_t)rnd(VF_OP_COUNT + 2); break;
            case 2: { /* point a SAVE/LOAD at the segment's edge */
                const uint32_t i = f->off + VF_INSN_BYTES * rnd(f->n);
                const uint32_t a = v.limit - rnd(256);
                memcpy(v.seg() + i + offsetof(vf_insn_mem_t, dram_addr), &a, 4);
                break;
            }
            default: {
                const uint32_t a = (uint32_t)rnd64();
                memcpy(v.seg() + f->off + VF_INSN_BYTES * rnd(f->n) + 8 + 4 * rnd(12), &a, 4);
                break;
            }
            }
        }
        const uint32_t vmask = VF_CNN_CORES >= 2 ? cores_range(0, VF_CNN_CORES - 1) : 1u;
        const uint32_t bmask = cores_range(VF_CNN_CORES - 1, 1);
        enable(by, bmask);
        post_prog(by, bt.progs[0], 0);
        post_prog(by, bt.progs[1], 1);
        if (VF_CNN_CORES == 1) { /* one core: the bystander first, then hand it over */
            d.run();
            set_mask(by, 0);
            d.run();
        }
        enable(v, vmask);
        const bool registers = rnd(3) == 0;
        uint32_t posted = 0;
        for (uint32_t q = 0, m = 1 + rnd(6); q < m; ++q) {
            const uint32_t which = rnd(2);
            if (rnd(6) == 0) /* a corrupted ring entry */
                post(v, rnd(2) ? (uint32_t)rnd64() : offs[which] + 4 * rnd(2), (uint32_t)rnd64() % 64, q,
                     rnd(3) == 0 ? (uint32_t)rnd64() : 0);
            else
                post(v, offs[which], (uint32_t)progs[which].size(), q);
            ++posted;
        }
        Async h(d);
        const bool async = rnd(2) == 0;
        for (int k = 0; k < 3000; ++k) {
            if (registers && rnd(10) == 0) {
                switch (rnd(6)) {
                case 0: set_mask(v, (uint32_t)rnd64()); break;
                case 1: set_mask(v, rnd(2) ? all_cores() : vmask); break;
                case 2: v.r().ring_tail += rnd(3); break;
                case 3: v.r().cpl_ack = (uint32_t)rnd64(); break;
                case 4: v.r().control ^= VF_TENANT_ENABLE; break;
                default: /* latched: effective at the next enable */
                    if (rnd(2))
                        v.r().ring_size = 1u << rnd(14);
                    else
                        v.r().cpl_offset = rnd(2) ? (uint32_t)rnd64() : v.limit - 64 * rnd(16);
                    break;
                }
            }
            const uint32_t p = async ? h.tick(40) : d.step();
            if (p == 0 && !h.any_busy() && !registers)
                break;
            if (p == 0 && !h.any_busy() && registers && rnd(20) == 0)
                break;
        }
        while (h.any_busy())
            h.drain(100);
        frames += v.r().frames;
        if (v.r().fault < 32)
            faults[v.r().fault]++;
        /* the bystander ran on its own core, untouched */
        for (uint32_t q = 0; q < 2; ++q) {
            CHECK_EQ(record(by, q).status, VF_CPL_OK);
            CHECK(out_equals(by, bt.n, bt.ins[q], bt.want[q]));
        }
        CHECK(seg_bytes(by) == by_alone);
        CHECK(untouched_outside(d, before, {&v, &by}));
        CHECK(d.guards_intact());
        /* without register garbage every posted request has one record */
        if (!registers) {
            CHECK(v.r().status == VF_TENANT_IDLE || v.r().status == VF_TENANT_FAULTED);
            CHECK_EQ(v.r().ring_head, v.tail);
            for (uint32_t q = 0; q < posted; ++q) {
                const vf_disp_completion_t c = record(v, q);
                CHECK_EQ(c.seq, q);
                CHECK(c.status == VF_CPL_OK || c.status == VF_CPL_FAULT || c.status == VF_CPL_ABORTED);
                (c.status == VF_CPL_OK ? ok_records : bad_records) += 1;
            }
        }
        CHECK_EQ(h.double_issue, 0);
        if (g_checks_failed)
            break;
    }
    printf("    fuzz: %d runs, %llu victim frames, records ok %llu failed %llu; faults: none %llu segment %llu "
           "buffer %llu opcode %llu field %llu deadlock %llu fetch %llu\n",
           iterations, (unsigned long long)frames, (unsigned long long)ok_records, (unsigned long long)bad_records,
           (unsigned long long)faults[0], (unsigned long long)faults[VF_FAULT_SEGMENT],
           (unsigned long long)faults[VF_FAULT_BUFFER], (unsigned long long)faults[VF_FAULT_OPCODE],
           (unsigned long long)faults[VF_FAULT_FIELD], (unsigned long long)faults[VF_FAULT_DEADLOCK],
           (unsigned long long)faults[VF_FAULT_FETCH]);
    printf("    fuzz: dispatcher faults: request %llu program %llu entry %llu frame %llu doorbell %llu window %llu\n",
           (unsigned long long)faults[VF_DFAULT_REQUEST], (unsigned long long)faults[VF_DFAULT_PROGRAM],
           (unsigned long long)faults[VF_DFAULT_ENTRY], (unsigned long long)faults[VF_DFAULT_FRAME],
           (unsigned long long)faults[VF_DFAULT_DOORBELL], (unsigned long long)faults[VF_DFAULT_WINDOW]);
    CHECK(ok_records > 0 && bad_records > 0);
    CHECK(faults[VF_FAULT_SEGMENT] > 0);
    CHECK(faults[VF_DFAULT_ENTRY] + faults[VF_DFAULT_FRAME] > 0);
}

/* The processes of the free-running top under a schedule where core 0 is
 * slow: its core process runs one iteration in HOLD dispatcher iterations,
 * every other core one per iteration. A tenant on core 1 completes all its
 * requests while core 0 still runs the other tenant's frames (cores
 * progress independently; a core whose frame retires gets its next one in
 * the same iteration), and every result is the golden model's. */
static void test_free_running()
{
    const uint32_t HOLD = 37;
    const bool two = VF_CNN_CORES >= 2;
    Dev d(window_for(2));
    const std::vector<int8_t> before = d.window();
    Ten a = make_ten(d, 2, seg_win(0), SEG), b = make_ten(d, 5, seg_win(1), SEG);
    const NetTenant ta = build_net_tenant(a, 301, 2, 1);
    const NetTenant tb = build_net_tenant(b, 302, 3, 1);
    enable(a, 1u);
    enable(b, two ? 2u : 1u);
    for (uint32_t q = 0; q < 2; ++q)
        post_prog(a, ta.progs[q], q);
    if (two)
        for (uint32_t q = 0; q < 3; ++q)
            post_prog(b, tb.progs[q], q);
    vf_issue_stream_t issue[VF_POOL_CORES];
    vf_done_stream_t done[VF_POOL_CORES];
    const vf_ddr_t ddr = vf_ddr_window(d.mem(), d.bytes);
    uint32_t b_done_while_a_busy = 0, a_busy_iterations = 0, retire_before_advance = 0;
    uint32_t n = 0;
    for (; n < 200000; ++n) {
        d.regs.g.cycles = n;
        vf_disp_report_t r;
        memset(&r, 0, sizeof r);
        const uint32_t p = vf_dispatcher_iteration(&d.regs, &d.st, ddr, issue, done, &r);
        /* a core whose frame retired in this iteration may have its next one already */
        for (uint32_t c = 0; c < VF_CNN_CORES; ++c)
            retire_before_advance += r.core[c].frames != 0 && ((r.issued_cores >> c) & 1u);
        bool ran = false;
        for (uint32_t c = 0; c < VF_CNN_CORES; ++c)
            if (c != 0 || n % HOLD == 0)
                ran |= vf_core_iteration(ddr, issue[c], done[c], &d.cores[c]);
        a_busy_iterations += d.st.core[0].busy;
        if (two && d.st.core[0].busy && b.r().ring_head == 3 && b_done_while_a_busy == 0)
            b_done_while_a_busy = n;
        bool pending = false;
        for (uint32_t c = 0; c < VF_POOL_CORES; ++c)
            pending |= !issue[c].empty() || !done[c].empty();
        if (p == 0 && !ran && !pending && d.regs.g.busy_cores == 0)
            break;
    }
    CHECK(n < 200000);
    CHECK(a_busy_iterations > HOLD);
    CHECK(retire_before_advance > 0);
    if (two)
        CHECK(b_done_while_a_busy > 0);
    for (uint32_t q = 0; q < 2; ++q) {
        CHECK(out_equals(a, ta.n, ta.ins[q], ta.want[q]));
        CHECK_EQ(record(a, q).status, VF_CPL_OK);
    }
    if (two)
        for (uint32_t q = 0; q < 3; ++q) {
            CHECK(out_equals(b, tb.n, tb.ins[q], tb.want[q]));
            CHECK_EQ(record(b, q).status, VF_CPL_OK);
        }
    CHECK(untouched_outside(d, before, {&a, &b}));
    CHECK(d.guards_intact());
}

/* A segment across a bank boundary is refused at enable: its frames could
 * reach it through one bank's port only. */
static void test_segment_in_one_bank()
{
#if VF_DDR_BANKS > 1
    /* a window reaching just into bank 1, without its 16 GiB of bank 0 */
    Dev d(window_for(1));
    seed(310);
    Ten x = make_ten(d, 0, seg_win(0), SEG);
    d.regs.g.mem_base = MEM_BASE;
    enable(x, 1u);
    x.r().seg_base = MEM_BASE + (uint64_t)VF_DDR_BANK_STRIDE - 4096; /* the last page of bank 0 and more */
    const uint64_t big = (uint64_t)VF_DDR_BANK_STRIDE + SEG;
    vf_disp_frame_t is[VF_POOL_CORES];
    vf_disp_report_t r;
    memset(&r, 0, sizeof r);
    vf_dispatch_advance(&d.regs, &d.st, d.mem(), big, is, &r); /* a window that covers it (never read) */
    CHECK_EQ(x.r().status, VF_TENANT_FAULTED);
    CHECK_EQ(x.r().fault, VF_DFAULT_WINDOW);
    CHECK_EQ(x.r().fault_addr, 4096u);
#endif
    CHECK_EQ(vf_ddr_bank(0), 0u);
    CHECK_EQ(vf_ddr_bank((uint64_t)VF_DDR_BANK_STRIDE * VF_DDR_BANKS + 1), VF_DDR_BANKS - 1u);
}

/* The host's words that enable tenant x in the top's register file. */
static void top_enable_tenant(std::vector<uint32_t> &file, const Ten &x, uint32_t control, uint32_t mask)
{
    auto w32 = [&](uint32_t off, uint32_t v) { file[off / 4] = v; };
    auto w64 = [&](uint32_t off, uint64_t v) {
        file[off / 4] = (uint32_t)v;
        file[off / 4 + 1] = (uint32_t)(v >> 32);
    };
    const uint32_t tb = VF_DREG_TENANT_BASE + x.t * VF_DREG_TENANT_STRIDE;
    w64(VF_DREG_G_MEM_BASE, MEM_BASE);
    w32(VF_DREG_G_IRQ_ENABLE, 1);
    w32(VF_DREG_G_IRQ_MASK, 1u << x.t);
    w64(tb + VF_DREG_T_SEG_BASE, MEM_BASE + x.win);
    w32(tb + VF_DREG_T_SEG_LIMIT, x.limit);
    w32(tb + VF_DREG_T_RING_OFFSET, x.ring_offset);
    w32(tb + VF_DREG_T_RING_SIZE, x.ring_size);
    w32(tb + VF_DREG_T_CPL_OFFSET, x.cpl_offset);
    w32(tb + VF_DREG_T_CPL_ACK, 0);
    w32(tb + VF_DREG_T_CORE_MASK, mask);
    w32(tb + VF_DREG_T_CONTROL, control);
}

/* The HLS top, driven through its register words only: one call is one
 * iteration of every process (the dispatcher's, then the cores'). */
static void test_top()
{
    Dev d(window_for(1));
    seed(170);
    Ten x = make_ten(d, 1, seg_win(0), SEG);
    const NetTenant t = build_net_tenant(x, 171, 2, 2);
    const std::vector<int8_t> before = d.window();
    std::vector<uint32_t> file(VF_DREG_FILE_WORDS, 0);
    auto w32 = [&](uint32_t off, uint32_t v) { file[off / 4] = v; };
    auto r32 = [&](uint32_t off) { return file[off / 4]; };
    auto r64 = [&](uint32_t off) { return (uint64_t)file[off / 4] | (uint64_t)file[off / 4 + 1] << 32; };
    const uint32_t tb = VF_DREG_TENANT_BASE + x.t * VF_DREG_TENANT_STRIDE;
    top_enable_tenant(file, x, VF_TENANT_ENABLE, cores_range(0, 2));
#ifdef VF_VITIS_KERNEL
    /* no interrupt line and no clock input: the driver polls, the kernel counts */
    uint64_t calls = 0;
    auto top = [&]() {
        vf_dispatcher_top(TB_PORTS(d.mem()), d.bytes, file.data());
        ++calls;
    };
    auto irq_line = [&]() { return r32(VF_DREG_G_IRQ); };
#else
    volatile uint8_t irq = 7;
    volatile uint64_t clock = 1000; /* the overlay's cycle counter: 100 cycles an iteration here */
    auto top = [&]() {
        clock += 100;
        vf_dispatcher_top(TB_PORTS(d.mem()), d.bytes, file.data(), &irq, &clock);
    };
    auto irq_line = [&]() { return (uint32_t)irq; };
#endif
    top();
    CHECK_EQ(r32(VF_DREG_G_ID), VF_DISP_ID);
    CHECK_EQ(r32(VF_DREG_G_TENANTS), VF_DISP_TENANTS);
    CHECK_EQ(r32(VF_DREG_G_CORES), VF_CNN_CORES);
    CHECK_EQ(r32(tb + VF_DREG_T_STATUS), VF_TENANT_IDLE);
    CHECK_EQ(r32(tb + VF_DREG_T_ACTIVE_MASK), cores_range(0, 2));
    CHECK_EQ(irq_line(), 0);
    /* post both requests (the ring entries in DDR), ring the doorbell */
    post_prog(x, t.progs[0], 5);
    post_prog(x, t.progs[1], 6);
    w32(tb + VF_DREG_T_RING_TAIL, x.tail);
    int n = 0;
    uint32_t in_flight_seen = 0; /* iterations that ended with frames in flight */
    for (; n < 10000 && r32(tb + VF_DREG_T_RING_HEAD) != x.tail; ++n) {
        top();
        in_flight_seen += r32(VF_DREG_G_BUSY_CORES) != 0;
    }
    CHECK(n < 10000);
    CHECK(in_flight_seen > 0); /* frames retire in the iteration after their issue */
#ifdef VF_VITIS_KERNEL
    /* the ticker answers each iteration's request in that call: the next
     * iteration's clock is the count of calls before it */
    CHECK_EQ(r64(VF_DREG_G_CYCLES), calls - 1);
    CHECK(record(x, 0).cycles > 0);
#else
    CHECK_EQ(r64(VF_DREG_G_CYCLES), clock);
    CHECK(record(x, 0).cycles > 0 && record(x, 0).cycles % 100 == 0);
#endif
    CHECK_EQ(r64(tb + VF_DREG_T_REQUEST_CYCLES), (uint64_t)record(x, 0).cycles + record(x, 1).cycles);
    for (uint32_t q = 0; q < 2; ++q) {
        CHECK(out_equals(x, t.n, t.ins[q], t.want[q]));
        CHECK_EQ(record(x, q).status, VF_CPL_OK);
        CHECK_EQ(record(x, q).request_id, 5 + q);
    }
    const uint64_t frames = frames_of(t.ins[0].layers) + frames_of(t.ins[1].layers);
    CHECK_EQ(r64(tb + VF_DREG_T_FRAMES), frames);
    CHECK_EQ(r64(tb + VF_DREG_T_REQUESTS), 2);
    CHECK_EQ(r64(VF_DREG_G_FRAMES), frames);
    CHECK_EQ(r64(VF_DREG_G_STEPS), (uint64_t)n + 1);
    CHECK_EQ(r32(VF_DREG_G_IRQ_STATUS), 1u << x.t);
    CHECK_EQ(irq_line(), 1);
    CHECK_EQ(r32(VF_DREG_G_IRQ), 1);
    /* the host's words are never overwritten by the kernel */
    CHECK_EQ(r32(tb + VF_DREG_T_RING_TAIL), x.tail);
    CHECK_EQ(r32(tb + VF_DREG_T_CORE_MASK), cores_range(0, 2));
    w32(tb + VF_DREG_T_CPL_ACK, x.tail);
    top();
    CHECK_EQ(irq_line(), 0);
    CHECK(untouched_outside(d, before, {&x}));
    CHECK(d.guards_intact());
}

#if VF_SEG_PARTS > 1
/* The segment's bytes (records' cycles zeroed, as seg_bytes) and the top's
 * register words after serving x's posted requests, the segment at window
 * offset x.win of `mem` (bytes long), striped or not. */
struct TopServed {
    uint32_t iterations;
    uint8_t segment[SEG];
    uint32_t file[VF_DREG_FILE_WORDS];
};

static void top_serve(int8_t *mem, uint64_t bytes, Ten &x, uint32_t striped, TopServed *out)
{
    std::vector<uint32_t> file(VF_DREG_FILE_WORDS, 0);
    top_enable_tenant(file, x, VF_TENANT_ENABLE | (striped ? VF_TENANT_STRIPED : 0u), cores_range(0, 2));
    file[(VF_DREG_TENANT_BASE + x.t * VF_DREG_TENANT_STRIDE + VF_DREG_T_RING_TAIL) / 4] = x.tail;
    const uint32_t head = (VF_DREG_TENANT_BASE + x.t * VF_DREG_TENANT_STRIDE + VF_DREG_T_RING_HEAD) / 4;
#ifdef VF_VITIS_KERNEL
    auto top = [&]() { vf_dispatcher_top(TB_PORTS(mem), bytes, file.data()); };
#else
    volatile uint8_t irq = 0;
    volatile uint64_t clock = 1000;
    auto top = [&]() {
        clock += 100;
        vf_dispatcher_top(TB_PORTS(mem), bytes, file.data(), &irq, &clock);
    };
#endif
    top();
    uint32_t n = 0;
    for (; n < 10000 && file[head] != x.tail; ++n)
        top();
    out->iterations = n;
    const vf_ddr_t win = vf_ddr_for(vf_ddr_window(mem, bytes), striped);
    vf_seg_read(win, x.win, 0, out->segment, x.limit);
    for (uint64_t i = 0; i < x.ring_size; ++i)
        memset(out->segment + x.cpl_offset + i * VF_DISP_RECORD_BYTES + offsetof(vf_disp_completion_t, cycles), 0, 4);
    memcpy(out->file, file.data(), sizeof out->file);
}

/* The top's result of one run in a child process (the top's state is static:
 * each run starts from the same state, the parent's). */
static void top_serve_forked(int8_t *mem, uint64_t bytes, Ten &x, uint32_t striped, TopServed *shared)
{
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        top_serve(mem, bytes, x, striped, shared);
        _exit(0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
#endif

/* The HLS top on a segment striped over the board's VF_SEG_PARTS banks
 * (VF_TENANT_STRIPED; u200, u200_bigcore): the same requests as on the same
 * segment contiguous give the same segment bytes (outputs, records) and the
 * same registers, and the top writes nothing of the banks outside the parts. */
static void test_top_striped()
{
#if VF_SEG_PARTS > 1
    Dev d(window_for(1));
    seed(174);
    Ten x = make_ten(d, 2, seg_win(0), SEG);
    const NetTenant t = build_net_tenant(x, 175, 2, 2);
    post_prog(x, t.progs[0], 7);
    post_prog(x, t.progs[1], 8);
    TopServed *res = (TopServed *)mmap(0, 2 * sizeof(TopServed), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                                       -1, 0);
    CHECK(res != MAP_FAILED);
    top_serve_forked(d.mem(), d.bytes, x, 0, &res[0]);

    /* the same segment image striped over banks 0..P-1 of a sparse window, part 0 at x.win */
    const uint64_t part = (x.limit + VF_SEG_PARTS * VF_DDR_WORD - 1) / (VF_SEG_PARTS * VF_DDR_WORD) * VF_DDR_WORD;
    const uint64_t edge = 4096, bytes = (uint64_t)(VF_SEG_PARTS - 1) * VF_DDR_BANK_STRIDE + x.win + part + edge;
    int8_t *mem = (int8_t *)mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(mem != MAP_FAILED);
    const vf_ddr_t striped = vf_ddr_for(vf_ddr_window(mem, bytes), 1);
    vf_seg_write(striped, x.win, 0, x.seg(), x.limit);
    top_serve_forked(mem, bytes, x, 1, &res[1]);

    CHECK(res[0].iterations < 10000);
    CHECK_EQ(res[1].iterations, res[0].iterations);
    CHECK(memcmp(res[1].segment, res[0].segment, x.limit) == 0);
    const uint32_t control = (VF_DREG_TENANT_BASE + x.t * VF_DREG_TENANT_STRIDE + VF_DREG_T_CONTROL) / 4;
    for (uint32_t w = 0; w < VF_DREG_FILE_WORDS; ++w)
        if (w != control) /* the host's control word says striped or not */
            CHECK_EQ(res[1].file[w], res[0].file[w]);
    /* the requests ran: both records OK, the outputs the golden model's */
    memcpy(x.seg(), res[0].segment, x.limit);
    for (uint32_t q = 0; q < 2; ++q) {
        CHECK(out_equals(x, t.n, t.ins[q], t.want[q]));
        CHECK_EQ(record(x, q).status, VF_CPL_OK);
    }
    /* nothing written around the parts (the child wrote its own copy: run it here too, then look) */
    top_serve(mem, bytes, x, 1, &res[1]);
    for (uint32_t p = 0; p < VF_SEG_PARTS; ++p) {
        const int8_t *at = mem + (uint64_t)p * VF_DDR_BANK_STRIDE + x.win;
        bool zero = true;
        for (uint64_t i = 0; i < edge; ++i)
            zero = zero && at[part + i] == 0 && (x.win < edge || at[-(int64_t)i - 1] == 0);
        CHECK(zero);
    }
    munmap(mem, bytes);
    munmap(res, 2 * sizeof(TopServed));
#else
    printf("    no striped segments on this board (VF_SEG_PARTS 1)\n");
#endif
}

/* ========================================================================== */
/* Several requests of a tenant in flight                                      */
/* ========================================================================== */

static uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

/* A tenant whose requests each have their own activations (instance i is
 * request i's slot) runs the same with max_inflight M as one at a time: same
 * outputs, same segment bytes (records included), records in order. With
 * M > 1 requests overlap (frames of two requests in flight at once) and never
 * more than M are active. */
static std::vector<int8_t> run_inflight(uint32_t m, uint32_t p_percent, uint32_t *max_active, uint32_t *max_seqs,
                                        uint32_t *ticks)
{
    Dev d(window_for(1));
    Ten x = make_ten(d, 5, seg_win(0), SEG, 8);
    const uint32_t k = min_u32(VF_CNN_CORES, 4), reqs = 5;
    NetTenant t = build_net_tenant(x, 91, reqs, k);
    memset(x.seg() + x.cpl_offset, 0, x.ring_size * VF_DISP_RECORD_BYTES);
    x.r().max_inflight = m;
    enable(x, cores_range(0, k));
    for (uint32_t i = 0; i < reqs; ++i)
        post_prog(x, t.progs[i], 300 + i);
    Async h(d);
    h.add(x);
    *max_active = 0;
    uint32_t n = 0;
    for (; n < 100000; ++n) {
        const uint32_t p = h.tick(p_percent);
        *max_active = x.s().nreq > *max_active ? x.s().nreq : *max_active;
        /* records stay in submission order: only requests before ring_head have one */
        for (uint32_t i = 0; i < reqs; ++i)
            if (i >= x.r().ring_head)
                CHECK_EQ(record(x, i).request_id, 0);
        if (p == 0 && !h.any_busy())
            break;
    }
    CHECK(n < 100000);
    *ticks = n;
    *max_seqs = h.max_seqs;
    CHECK_EQ(h.order_violations, 0);
    CHECK_EQ(h.map_errors, 0);
    CHECK_EQ(h.double_issue, 0);
    CHECK_EQ(x.r().ring_head, reqs);
    CHECK_EQ(x.r().requests, reqs);
    CHECK_EQ(x.r().inflight, 0);
    for (uint32_t i = 0; i < reqs; ++i) {
        CHECK(out_equals(x, t.n, t.ins[i], t.want[i]));
        const vf_disp_completion_t c = record(x, i);
        CHECK_EQ(c.status, VF_CPL_OK);
        CHECK_EQ(c.seq, i);
        CHECK_EQ(c.request_id, 300 + i);
        CHECK_EQ(c.frames, frames_of(t.ins[i].layers));
        CHECK_EQ(c.barriers, 3);
    }
    return seg_bytes(x);
}

static void test_inflight_equals_single()
{
    uint32_t act = 0, seqs = 0, ticks1 = 0, ticks = 0;
    for (uint32_t p : {100u, 35u}) {
        g_ctx = "M=1 p=" + std::to_string(p);
        const std::vector<int8_t> one = run_inflight(1, p, &act, &seqs, &ticks1);
        CHECK_EQ(act, 1);
        CHECK_EQ(seqs, 1);
        for (uint32_t m = 2; m <= VF_DISP_INFLIGHT + 1; ++m) {
            g_ctx = "M=" + std::to_string(m) + " p=" + std::to_string(p);
            CHECK(run_inflight(m, p, &act, &seqs, &ticks) == one);
            CHECK(act <= min_u32(m, VF_DISP_INFLIGHT)); /* above VF_DISP_INFLIGHT: clamped */
            /* with every frame ending within its round (p = 100) a barrier
             * never idles a core, so only the uneven schedule gains */
            if (VF_DISP_INFLIGHT >= 2 && VF_CNN_CORES >= 2 && p != 100) {
                CHECK(act >= 2);
                CHECK(seqs >= 2);   /* two requests' frames in flight at once */
                CHECK(ticks < ticks1); /* and that saves rounds */
            }
        }
    }
}

/* A younger request that finishes first waits to be recorded; a slot is
 * reused only once the request before it on that slot is recorded (request
 * s and s + M are never active together), so counters on per-slot cells lose
 * nothing. */
static void test_inflight_in_order()
{
    if (VF_DISP_INFLIGHT < 2 || VF_CNN_CORES < 2)
        return;
    Dev d(window_for(1));
    Ten x = make_ten(d, 6, seg_win(0), SEG, 8);
    seed(93);
    const uint32_t layers = 6, k = min_u32(VF_CNN_CORES, 4);
    Counter slow = make_counter(x, 2 * k, layers); /* slot 0: long requests */
    Counter fast = make_counter(x, 1, 1);          /* slot 1: one frame */
    const uint32_t ps = place_program(x, program_for(slow.layers, k));
    const uint32_t pf = place_program(x, program_for(fast.layers, k, true, 1));
    memset(x.seg() + x.cpl_offset, 0, x.ring_size * VF_DISP_RECORD_BYTES);
    x.r().max_inflight = 2;
    enable(x, cores_range(0, k));
    const uint32_t reqs = 6;
    for (uint32_t i = 0; i < reqs; ++i)
        post_prog(x, i % 2 ? pf : ps, 700 + i);
    uint32_t waited = 0, last_head = 0;
    Async h(d);
    h.add(x);
    for (uint32_t n = 0; n < 20000; ++n) {
        const uint32_t head = x.s().head;
        if (x.s().nreq == 2 && x.s().req[(head + 1) % VF_DISP_INFLIGHT].done)
            ++waited;
        for (uint32_t i = x.r().ring_head; i < reqs; ++i)
            CHECK_EQ(record(x, i).request_id, 0); /* not recorded before the older ones */
        CHECK(x.r().ring_head >= last_head);
        last_head = x.r().ring_head;
        if (h.tick(30) == 0 && !h.any_busy())
            break;
    }
    CHECK(waited > 0);
    CHECK_EQ(h.order_violations, 0);
    CHECK_EQ(x.r().ring_head, reqs);
    for (uint32_t i = 0; i < reqs; ++i) {
        CHECK_EQ(record(x, i).status, VF_CPL_OK);
        CHECK_EQ(record(x, i).seq, i);
        CHECK_EQ(record(x, i).request_id, 700 + i);
    }
    CHECK(cells_equal(x, slow, (int)(layers * reqs / 2)));
    CHECK(cells_equal(x, fast, (int)(reqs / 2)));
}

/* A core fault in request 1 of a tenant with requests in flight: request 0
 * (older) completes, request 1 is FAULT, the ones behind it ABORTED with the
 * fault, in order; the tenant stops (cores released) once request 0 is
 * recorded; another tenant is unaffected. */
static void test_inflight_fault()
{
    if (VF_DISP_INFLIGHT < 2 || VF_CNN_CORES < 4)
        return;
    /* frames retiring within their round would let request 0 finish first:
     * only the asynchronous harness overlaps them. Trials 4, 5: the driver
     * disables the tenant while it is stopping; it drains. */
    for (int trial = 0; trial < 6; ++trial) {
        const bool disable = trial >= 4;
        g_ctx = "trial " + std::to_string(trial);
        Dev d(window_for(2));
        Ten x = make_ten(d, 3, seg_win(0), SEG, 8);
        Ten y = make_ten(d, VF_DISP_TENANTS - 1, seg_win(1), SEG, 8); /* the last context */
        const uint32_t m = min_u32(VF_DISP_INFLIGHT, 4), k = VF_CNN_CORES / 2, reqs = m + 2;
        const uint32_t long_layers = k < 4 ? 36 : 12; /* on few cores the others overtake it sooner */
        seed(95 + trial);
        std::vector<Counter> cs;
        std::vector<uint32_t> ps;
        for (uint32_t i = 0; i < m; ++i) {
            /* request 0 is long: it is still running when request 1 faults */
            cs.push_back(make_counter(x, k + rnd(k), i == 0 ? long_layers : 3 + rnd(3)));
            std::vector<vf_dispatch_t> p = program_for(cs.back().layers, k);
            if (i == 1) {
                /* a frame that loads past the segment, after the first layer */
                Frame f;
                f.insns = {mk_marker(VF_OP_FRAME, 1, 1),
                           mk_mem(VF_OP_LOAD_TILE, x.limit - 8, 0, 1, 1, 16, 16, 0, 0, 1, 1, 0)};
                place_frame(x, f);
                vf_dispatch_t e = {f.off, (uint16_t)f.n, 0, VF_DISPATCH_FRAME};
                p.insert(p.begin() + (long)cs.back().layers[0].size() + 1, e);
            }
            ps.push_back(place_program(x, p));
        }
        NetTenant other = build_net_tenant(y, 97 + trial, 3, k);
        x.r().max_inflight = m;
        enable(x, cores_range(0, k));
        enable(y, cores_range(k, k));
        for (uint32_t i = 0; i < reqs; ++i)
            post_prog(x, ps[i % m], 900 + i);
        for (uint32_t i = 0; i < 3; ++i)
            post_prog(y, other.progs[i], 50 + i);
        Async h(d);
        h.add(x);
        h.add(y);
        uint32_t stopping = 0;
        for (uint32_t n = 0; n < 100000; ++n) {
            if (x.s().stopping && x.s().phase == VF_TENANT_RUNNING) { /* request 0 still runs on its cores */
                ++stopping;
                CHECK(x.r().active_mask != 0);
                CHECK_EQ(x.r().status, VF_TENANT_RUNNING);
                if (disable)
                    x.r().control = 0;
            }
            if (h.tick(20 + 10 * (uint32_t)trial) == 0 && !h.any_busy())
                break;
        }
        CHECK(stopping > 0);
        CHECK_EQ(h.order_violations, 0);
        CHECK_EQ(h.double_issue, 0);
        CHECK_EQ(x.r().status, disable ? VF_TENANT_DISABLED : VF_TENANT_FAULTED);
        CHECK_EQ(x.r().fault, VF_FAULT_SEGMENT);
        CHECK_EQ(x.r().fault_seq, 1);
        CHECK_EQ(x.r().ring_head, reqs);
        CHECK_EQ(x.r().active_mask, 0);
        for (uint32_t i = 0; i < reqs; ++i) {
            const vf_disp_completion_t c = record(x, i);
            CHECK_EQ(c.seq, i);
            CHECK_EQ(c.request_id, 900 + i);
            const uint32_t first = disable ? VF_CPL_ABORTED : VF_CPL_OK; /* the disable aborts request 0 */
            CHECK_EQ(c.status, i == 0 ? first : i == 1 ? VF_CPL_FAULT : VF_CPL_ABORTED);
            CHECK_EQ(c.fault, i == 0 && !disable ? VF_FAULT_NONE : VF_FAULT_SEGMENT);
        }
        if (!disable)
            CHECK(cells_equal(x, cs[0], (int)long_layers)); /* request 0 ran to its end */
        CHECK_EQ(x.r().requests, disable ? 0 : 1);
        CHECK_EQ(x.r().failed, disable ? reqs : reqs - 1);
        CHECK_EQ(y.r().status, VF_TENANT_IDLE);
        CHECK_EQ(y.r().requests, 3);
        for (uint32_t i = 0; i < 3; ++i) {
            CHECK(out_equals(y, other.n, other.ins[i], other.want[i]));
            CHECK_EQ(record(y, i).status, VF_CPL_OK);
        }
    }
}

/* Two tenants with requests in flight on per-slot counters while their masks
 * change (release, then acquire): every frame runs exactly once, records OK
 * and in order, frames only on the mapped core, barriers per request. */
static void test_inflight_mask_changes()
{
    if (VF_DISP_INFLIGHT < 2 || VF_CNN_CORES < 2)
        return;
    for (int trial = 0; trial < (TB_SANITIZED ? 2 : 4); ++trial) {
        g_ctx = "trial " + std::to_string(trial);
        Dev d(window_for(2));
        std::vector<Ten> xs;
        xs.push_back(make_ten(d, 1, seg_win(0), SEG, 16));
        xs.push_back(make_ten(d, VF_DISP_TENANTS - 2, seg_win(1), SEG, 16));
        const uint32_t m = VF_DISP_INFLIGHT, layers = 3, reqs = 16;
        std::vector<std::vector<Counter>> cs(2);
        std::vector<std::vector<uint32_t>> ps(2);
        seed(300 + trial);
        for (uint32_t t = 0; t < 2; ++t)
            for (uint32_t i = 0; i < m; ++i) {
                cs[t].push_back(make_counter(xs[t], 3 + rnd(6), layers));
                ps[t].push_back(place_program(xs[t], program_for(cs[t].back().layers, 1 + rnd(6), true, rnd(4))));
            }
        for (uint32_t t = 0; t < 2; ++t) {
            xs[t].r().max_inflight = m;
            enable(xs[t], t == 0 ? cores_range(0, VF_CNN_CORES / 2) : 0);
            for (uint32_t i = 0; i < reqs; ++i)
                post_prog(xs[t], ps[t][i % m], 100 * t + i);
        }
        Async h(d);
        h.add(xs[0]);
        h.add(xs[1]);
        uint32_t changes = 0;
        for (int n = 0; n < 200000; ++n) {
            if (rnd(6) == 0) {
                /* release-then-acquire: one tenant shrinks, the other grows into free cores */
                Ten &a = xs[rnd(2)];
                Ten &b = &a == &xs[0] ? xs[1] : xs[0];
                if (rnd(2) == 0)
                    set_mask(a, a.r().active_mask & (uint32_t)rnd64());
                else
                    set_mask(a, a.r().active_mask | (all_cores() & ~b.r().active_mask & (uint32_t)rnd64()));
                ++changes;
            }
            const uint32_t p = h.tick(30);
            CHECK((xs[0].r().active_mask & xs[1].r().active_mask) == 0);
            CHECK(xs[0].s().nreq <= m && xs[1].s().nreq <= m);
            if (xs[0].r().ring_head == reqs && xs[1].r().ring_head == reqs && p == 0 && !h.any_busy())
                break;
            /* nobody starves: give an empty-handed tenant a free core now and then */
            for (Ten &x : xs)
                if (x.r().active_mask == 0 && rnd(8) == 0)
                    set_mask(x, all_cores() & ~(xs[0].r().active_mask | xs[1].r().active_mask) & (uint32_t)rnd64());
        }
        CHECK(changes > 10);
        CHECK(h.max_seqs >= 2);
        CHECK_EQ(h.order_violations, 0);
        CHECK_EQ(h.map_errors, 0);
        CHECK_EQ(h.double_issue, 0);
        for (uint32_t t = 0; t < 2; ++t) {
            CHECK_EQ(xs[t].r().ring_head, reqs);
            for (uint32_t i = 0; i < reqs; ++i) {
                CHECK_EQ(record(xs[t], i).status, VF_CPL_OK);
                CHECK_EQ(record(xs[t], i).request_id, 100 * t + i);
            }
            for (uint32_t i = 0; i < m; ++i)
                CHECK(cells_equal(xs[t], cs[t][i], (int)(layers * (reqs / m))));
        }
    }
}

int main()
{
#ifdef VF_VITIS_KERNEL
#define TB_TOP " (Vitis kernel top)"
#else
#define TB_TOP ""
#endif
    printf("tb_dispatcher: %d tenants, %d cores, %d DDR bank ports, ring max %d, walk budget %d, ICP %d OCP %d%s%s\n",
           VF_DISP_TENANTS, VF_CNN_CORES, VF_DDR_BANKS, VF_DISP_RING_MAX, VF_DISP_WALK_BUDGET, VF_ICP, VF_OCP,
           TB_BODIES, TB_TOP);
    run_test("geometry_reset", test_geometry_reset);
    run_test("single_request", test_single_request);
    run_test("multi_slot_equals_single", test_multi_slot_equals_single);
    run_test("barriers_order_layers", test_barriers_order_layers);
    run_test("tenants_concurrent", test_tenants_concurrent);
    run_test("fault_isolation", test_fault_isolation);
    run_test("dispatch_faults", test_dispatch_faults);
    run_test("ring", test_ring);
    run_test("mask_change_in_flight", test_mask_change_in_flight);
    run_test("mask_rules", test_mask_rules);
    run_test("records_and_irq", test_records_and_irq);
    run_test("disable_pending", test_disable_pending);
    run_test("config_faults", test_config_faults);
    run_test("scrub", test_scrub);
    run_test("budget_and_quiescence", test_budget_and_quiescence);
    run_test("fuzz", test_fuzz);
    run_test("free_running", test_free_running);
    run_test("segment_in_one_bank", test_segment_in_one_bank);
    run_test("top", test_top);
    run_test("top_striped", test_top_striped);
    run_test("inflight_equals_single", test_inflight_equals_single);
    run_test("inflight_in_order", test_inflight_in_order);
    run_test("inflight_fault", test_inflight_fault);
    run_test("inflight_mask_changes", test_inflight_mask_changes);
    return tb_summary("tb_dispatcher");
}
