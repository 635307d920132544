/*
 * C-simulation testbench of the vfpga RNN core (hls/rnn_core.cpp and the HLS
 * top hls/rnn_core_top.cpp).
 *
 * Two references written here from the text of vfpga_isa.h (RNN section):
 *  - an instruction-level model that executes programs in program order;
 *    every on-chip buffer and the whole segment are compared with it after
 *    each run, and iteration counts against the cycle-model formulas;
 *  - a cell-level model of whole LSTM / GRU layers (every hidden unit at
 *    once, no instructions), against which multi-step sequences run on one
 *    core and split over several cores along the hidden dimension are
 *    checked bit for bit.
 * The segment is surrounded by guard bytes (canaries, and under ASan
 * poisoned memory) so that any access outside [0, seg_limit) is caught.
 *
 * Runs with a fixed seed; exit status 0 when every test passes.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "vfpga_rnn_core.h"
#define TB_SEED 0x2545f4914f6cdd1dull
#include "tb_common.h"

/* the synthesizable top (hls/rnn_core_top.cpp) */
tb_core_top_fn vf_rnn_core_top;

/* ========================================================================== */
/* Constants of the contract                                                   */
/* ========================================================================== */

static const int64_t PRE_MAX = VF_RNN_PRE_MAX;
static const int64_t PRE_MIN = -(int64_t)VF_RNN_PRE_MAX - 1;
static const int64_t ONE = VF_RNN_ONE;
static const uint32_t TSEG = VF_RNN_ACT_SEGMENTS;
static const uint32_t TSTEP = VF_RNN_ACT_STEP_LOG2;
static const uint32_t TW = VF_RNN_ACT_SEGMENTS + 1; /* words per table */
static const uint32_t PARAM_WORDS = VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS;
static const uint32_t TR = VF_RNN_ROWS, TC = VF_RNN_COLS, TB = VF_RNN_TILE_BYTES; /* a MATVEC tile */

/* ========================================================================== */
/* Instruction builders                                                        */
/* ========================================================================== */

static vf_rnn_insn_t blank(uint8_t opcode, uint8_t deps = 0, uint16_t flags = 0)
{
    return tb_blank<vf_rnn_insn_t>(opcode, deps, flags);
}

static vf_rnn_insn_t mk_marker(uint8_t opcode, uint32_t frame_id = 0)
{
    return tb_marker<vf_rnn_insn_t>(opcode, frame_id, 0);
}

static vf_rnn_insn_t mk_mem(uint8_t opcode, uint8_t buffer, uint32_t dram, uint32_t buf, uint32_t row_bytes,
                            uint32_t rows = 1, uint32_t planes = 1, uint32_t row_stride = 0,
                            uint32_t plane_stride = 0, uint8_t deps = 0)
{
    vf_rnn_insn_t i = blank(opcode, deps);
    i.rnn_mem.dram_addr = dram;
    i.rnn_mem.buf_addr = buf;
    i.rnn_mem.row_bytes = row_bytes;
    i.rnn_mem.rows = (uint16_t)rows;
    i.rnn_mem.planes = (uint16_t)planes;
    i.rnn_mem.row_stride = row_stride;
    i.rnn_mem.plane_stride = plane_stride;
    i.rnn_mem.buffer = buffer;
    return i;
}

static vf_rnn_insn_t mk_load(uint8_t buffer, uint32_t dram, uint32_t buf, uint32_t row_bytes, uint8_t deps = 0)
{
    return mk_mem(VF_RNN_OP_LOAD, buffer, dram, buf, row_bytes, 1, 1, 0, 0, deps);
}

static vf_rnn_insn_t mk_save(uint8_t buffer, uint32_t dram, uint32_t buf, uint32_t row_bytes, uint8_t deps = 0)
{
    return mk_mem(VF_RNN_OP_SAVE, buffer, dram, buf, row_bytes, 1, 1, 0, 0, deps);
}

static vf_rnn_insn_t mk_mv(uint32_t wgt, uint32_t ws, uint32_t vec, uint32_t acc, uint32_t param, uint32_t rows,
                           uint32_t cols, bool init, uint8_t deps = 0)
{
    vf_rnn_insn_t i = blank(VF_RNN_OP_MATVEC, deps, init ? VF_RNN_MV_INIT : 0);
    i.matvec.wgt_addr = wgt;
    i.matvec.wgt_stride = ws;
    i.matvec.vec_addr = vec;
    i.matvec.acc_addr = acc;
    i.matvec.param_addr = param;
    i.matvec.rows = rows;
    i.matvec.cols = cols;
    return i;
}

struct GatesArgs {
    uint8_t cell;
    uint32_t n, gs;
    uint32_t acc_x, acc_h, param_x, param_h, state_c, state_h, out;
    uint16_t sig, tanh_t;
    int32_t mult;
    uint8_t shift;
    int8_t zp;
};

static vf_rnn_insn_t mk_gates(const GatesArgs &a, uint8_t deps = 0)
{
    vf_rnn_insn_t i = blank(VF_RNN_OP_GATES, deps);
    i.gates.cell = a.cell;
    i.gates.n = a.n;
    i.gates.gate_stride = a.gs;
    i.gates.acc_x = a.acc_x;
    i.gates.acc_h = a.acc_h;
    i.gates.param_x = a.param_x;
    i.gates.param_h = a.param_h;
    i.gates.state_c = a.state_c;
    i.gates.state_h = a.state_h;
    i.gates.out_addr = a.out;
    i.gates.sig_addr = a.sig;
    i.gates.tanh_addr = a.tanh_t;
    i.gates.out_mult = a.mult;
    i.gates.out_shift = a.shift;
    i.gates.out_zp = a.zp;
    return i;
}

/* ========================================================================== */
/* Reference arithmetic (from the text of vfpga_isa.h)                         */
/* ========================================================================== */

static int64_t ref_rsr(int64_t v, int s) { return s == 0 ? v : (v + ((int64_t)1 << (s - 1))) >> s; }
static int64_t ref_clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }
static int32_t wrap32(int64_t v) { return (int32_t)(uint32_t)(uint64_t)v; }

static int64_t ref_pre(int32_t acc, const int32_t *e)
{
    return ref_clamp(ref_rsr((int64_t)acc * e[1], e[2]), PRE_MIN, PRE_MAX);
}

static int64_t ref_act(const int32_t *t, int64_t p)
{
    p = ref_clamp(p, PRE_MIN, PRE_MAX);
    const int64_t half = (int64_t)TSEG << (TSTEP - 1);
    const int64_t u = p + half;
    int64_t y;
    if (u < 0)
        y = t[0];
    else if (u >= ((int64_t)TSEG << TSTEP))
        y = t[TSEG];
    else {
        const int64_t k = u >> TSTEP, f = u - (k << TSTEP);
        y = t[k] + ref_rsr(((int64_t)t[k + 1] - t[k]) * f, TSTEP);
    }
    return ref_clamp(y, -ONE, ONE);
}

static int8_t ref_q8(int64_t v, int32_t mult, int shift, int zp)
{
    return (int8_t)ref_clamp(zp + ref_rsr(v * mult, shift), -128, 127);
}

static double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x)); }

/* T[k] = floor(2^15 f(x_k) + 1/2) */
static std::vector<int32_t> make_table(bool is_tanh)
{
    std::vector<int32_t> t(TW);
    const double half = (double)((int64_t)TSEG << (TSTEP - 1));
    for (uint32_t k = 0; k < TW; ++k) {
        const double x = ((double)k * (double)(1u << TSTEP) - half) / (double)ONE;
        t[k] = (int32_t)floor((is_tanh ? tanh(x) : sigmoid(x)) * (double)ONE + 0.5);
    }
    return t;
}

/* ========================================================================== */
/* Instruction-level model                                                     */
/* ========================================================================== */

struct Mem {
    std::vector<int8_t> seg, wbuf, vbuf;
    std::vector<int32_t> acc, param, state, act;
};

/* byte `at` of a buffer's element run (int32 buffers little-endian) */
static uint8_t buf_get(Mem &m, uint32_t buffer, uint64_t at)
{
    switch (buffer) {
    case VF_RNN_BUF_WGT: return (uint8_t)m.wbuf[at];
    case VF_RNN_BUF_VEC: return (uint8_t)m.vbuf[at];
    default: {
        std::vector<int32_t> &v = buffer == VF_RNN_BUF_ACC     ? m.acc
                                  : buffer == VF_RNN_BUF_PARAM ? m.param
                                  : buffer == VF_RNN_BUF_STATE ? m.state
                                                               : m.act;
        return (uint8_t)((uint32_t)v[at / 4] >> (8 * (at % 4)));
    }
    }
}

static void buf_put(Mem &m, uint32_t buffer, uint64_t at, uint8_t b)
{
    switch (buffer) {
    case VF_RNN_BUF_WGT: m.wbuf[at] = (int8_t)b; break;
    case VF_RNN_BUF_VEC: m.vbuf[at] = (int8_t)b; break;
    default: {
        std::vector<int32_t> &v = buffer == VF_RNN_BUF_ACC     ? m.acc
                                  : buffer == VF_RNN_BUF_PARAM ? m.param
                                  : buffer == VF_RNN_BUF_STATE ? m.state
                                                               : m.act;
        const uint32_t sh = 8 * (uint32_t)(at % 4);
        const uint32_t copies = buffer == VF_RNN_BUF_ACT ? VF_RNN_LANES : 1; /* every lane's copy */
        for (uint64_t l = 0; l < copies; ++l) {
            int32_t &w = v[l * VF_RNN_ACT_WORDS + at / 4];
            w = (int32_t)(((uint32_t)w & ~(0xffu << sh)) | ((uint32_t)b << sh));
        }
    }
    }
}

static void ref_exec(Mem &m, const vf_rnn_insn_t &in)
{
    switch (in.head.opcode) {
    case VF_RNN_OP_LOAD:
    case VF_RNN_OP_SAVE: {
        const vf_insn_rnn_mem_t &x = in.rnn_mem;
        const bool wide = x.buffer >= VF_RNN_BUF_ACC;
        const uint64_t base = wide ? (uint64_t)x.buf_addr * 4 : x.buf_addr;
        for (uint64_t p = 0; p < x.planes; ++p)
            for (uint64_t r = 0; r < x.rows; ++r)
                for (uint64_t b = 0; b < x.row_bytes; ++b) {
                    const uint64_t d = x.dram_addr + p * x.plane_stride + r * x.row_stride + b;
                    const uint64_t at = base + (p * x.rows + r) * x.row_bytes + b;
                    if (in.head.opcode == VF_RNN_OP_LOAD)
                        buf_put(m, x.buffer, at, (uint8_t)m.seg[d]);
                    else
                        m.seg[d] = (int8_t)buf_get(m, x.buffer, at);
                }
        break;
    }
    case VF_RNN_OP_MATVEC: {
        const vf_insn_rnn_matvec_t &x = in.matvec;
        for (uint64_t r = 0; r < x.rows; ++r) {
            int64_t acc = (in.head.flags & VF_RNN_MV_INIT) ? m.param[(x.param_addr + r) * 3] : m.acc[x.acc_addr + r];
            for (uint64_t c = 0; c < x.cols; ++c) /* beat-major tiles (vfpga_isa.h) */
                acc += (int64_t)m.wbuf[x.wgt_addr + ((r / TR) * x.wgt_stride + c / TC) * TB + (r % TR) * TC + c % TC] *
                       m.vbuf[x.vec_addr + c];
            m.acc[x.acc_addr + r] = wrap32(acc);
        }
        break;
    }
    case VF_RNN_OP_GATES: {
        const vf_insn_rnn_gates_t &g = in.gates;
        for (uint64_t j = 0; j < g.n; ++j) {
            /* unit j runs on lane j % LANES, which reads its own copy of ACT */
            const uint64_t copy = (j % VF_RNN_LANES) * VF_RNN_ACT_WORDS;
            const int32_t *sig = &m.act[copy + g.sig_addr];
            const int32_t *tnh = g.cell == VF_RNN_CELL_GRU_RH ? NULL : &m.act[copy + g.tanh_addr];
            auto tx = [&](int k) {
                const uint64_t i = (uint64_t)k * g.gate_stride + j;
                return ref_pre(m.acc[g.acc_x + i], &m.param[(g.param_x + i) * 3]);
            };
            auto th = [&](int k) {
                const uint64_t i = (uint64_t)k * g.gate_stride + j;
                return ref_pre(m.acc[g.acc_h + i], &m.param[(g.param_h + i) * 3]);
            };
            auto pk = [&](int k) { return ref_clamp(tx(k) + th(k), PRE_MIN, PRE_MAX); };
            const int64_t hp = m.state[g.state_h + j];
            if (g.cell == VF_RNN_CELL_LSTM) {
                const int64_t i = ref_act(sig, pk(0)), o = ref_act(sig, pk(1)), f = ref_act(sig, pk(2));
                const int64_t gg = ref_act(tnh, pk(3));
                const int64_t cp = m.state[g.state_c + j];
                const int64_t c = ref_clamp(ref_rsr(f * cp + i * gg, 15), INT32_MIN, INT32_MAX);
                const int64_t h = ref_rsr(o * ref_act(tnh, c), 15);
                m.state[g.state_c + j] = (int32_t)c;
                m.state[g.state_h + j] = (int32_t)h;
                m.vbuf[g.out_addr + j] = ref_q8(h, g.out_mult, g.out_shift, g.out_zp);
            } else if (g.cell == VF_RNN_CELL_GRU_RH) {
                const int64_t r = ref_act(sig, pk(1));
                m.vbuf[g.out_addr + j] = ref_q8(ref_rsr(r * hp, 15), g.out_mult, g.out_shift, g.out_zp);
            } else {
                const int64_t z = ref_act(sig, pk(0));
                int64_t pn;
                if (g.cell == VF_RNN_CELL_GRU_LBR)
                    pn = ref_clamp(tx(2) + ref_rsr(ref_act(sig, pk(1)) * th(2), 15), PRE_MIN, PRE_MAX);
                else
                    pn = pk(2);
                const int64_t n = ref_act(tnh, pn);
                const int64_t h = ref_clamp(n + ref_rsr(z * (hp - n), 15), INT32_MIN, INT32_MAX);
                m.state[g.state_h + j] = (int32_t)h;
                m.vbuf[g.out_addr + j] = ref_q8(h, g.out_mult, g.out_shift, g.out_zp);
            }
        }
        break;
    }
    default:
        break;
    }
}

static uint64_t expect_iters(const vf_rnn_insn_t &i)
{
    switch (i.head.opcode) {
    case VF_RNN_OP_LOAD:
    case VF_RNN_OP_SAVE:
        return (uint64_t)i.rnn_mem.planes * i.rnn_mem.rows * cdiv(i.rnn_mem.row_bytes, VF_AXI_BYTES);
    case VF_RNN_OP_MATVEC: return cdiv(i.matvec.rows, VF_RNN_ROWS) * cdiv(i.matvec.cols, VF_RNN_COLS);
    case VF_RNN_OP_GATES: return cdiv(i.gates.n, VF_RNN_LANES);
    default: return 0;
    }
}

/* ========================================================================== */
/* Environment: a segment with guards, cores, the model                        */
/* ========================================================================== */

struct Core {
    std::vector<int8_t> wbuf, vbuf;
    std::vector<int32_t> acc, param, state, act;
    vf_rnn_buffers_t bufs;
    vf_rnn_state_t st;
    vf_rnn_counters_t cnt;
    std::vector<vf_rnn_insn_t> prog;
    uint32_t insn_offset;
    std::vector<uint32_t> iters;

    Core()
        : wbuf(VF_RNN_WBUF_BYTES), vbuf(VF_RNN_VBUF_BYTES), acc(VF_RNN_ACC_WORDS), param(PARAM_WORDS),
          state(VF_RNN_STATE_WORDS), act(VF_RNN_ACT_BUFFER_WORDS), insn_offset(0)
    {
        fill_random(wbuf.data(), wbuf.size());
        fill_random(vbuf.data(), vbuf.size());
        fill_random(acc.data(), acc.size() * 4);
        fill_random(param.data(), param.size() * 4);
        fill_random(state.data(), state.size() * 4);
        fill_random(act.data(), VF_RNN_ACT_WORDS * 4);
        sync_act();
        bufs.wbuf = wbuf.data();
        bufs.vbuf = vbuf.data();
        bufs.acc = acc.data();
        bufs.param = param.data();
        bufs.state = state.data();
        bufs.act = act.data();
        reset();
    }
    /* copy 0 of ACT into the other lanes' copies (after a direct write; the
     * core's RNN_LOAD writes them all itself) */
    void sync_act()
    {
        for (uint64_t l = 1; l < VF_RNN_LANES; ++l)
            memcpy(&act[l * VF_RNN_ACT_WORDS], act.data(), VF_RNN_ACT_WORDS * 4);
    }
    Core(const Core &) = delete;
    Core &operator=(const Core &) = delete;
    void reset()
    {
        memset(&st, 0, sizeof st);
        memset(&cnt, 0, sizeof cnt);
    }
    /* every PARAM shift in [0, 62] */
    void sane_shifts()
    {
        for (size_t i = 2; i < param.size(); i += 3)
            param[i] = (int32_t)rnd(63);
    }
};

struct Env : TbSegment {
    std::vector<std::unique_ptr<Core>> cores;
    Mem model;

    explicit Env(uint32_t seg_limit, uint32_t ncores = 1) : TbSegment(seg_limit)
    {
        for (uint32_t i = 0; i < ncores; ++i)
            cores.emplace_back(new Core());
    }

    Core &core(size_t i = 0) { return *cores[i]; }
    std::vector<vf_rnn_insn_t> &prog() { return cores[0]->prog; }

    void place_program(size_t c = 0)
    {
        Core &k = core(c);
        k.insn_offset = alloc((uint32_t)k.prog.size() * VF_INSN_BYTES);
        if (!k.prog.empty())
            memcpy(seg() + k.insn_offset, k.prog.data(), k.prog.size() * VF_INSN_BYTES);
        k.iters.assign(k.prog.size(), 0xdeadbeefu);
    }

    uint32_t step(size_t c = 0)
    {
        Core &k = core(c);
        return vf_rnn_core_step(seg(), limit, k.insn_offset, (uint32_t)k.prog.size(), &k.bufs, &k.st, &k.cnt,
                                k.iters.data());
    }

    uint32_t run(size_t c = 0)
    {
        uint32_t r = VF_RNN_STEP_FRAME;
        for (size_t n = 0; n <= core(c).prog.size() + 1 && r == VF_RNN_STEP_FRAME; ++n)
            r = step(c);
        return r;
    }

    /* all cores, one step each per round (the dispatcher's barrier) */
    bool run_all()
    {
        std::vector<uint32_t> r(cores.size(), VF_RNN_STEP_FRAME);
        for (size_t round = 0; round < 100000; ++round) {
            bool any = false;
            for (size_t c = 0; c < cores.size(); ++c)
                if (r[c] == VF_RNN_STEP_FRAME) {
                    r[c] = step(c);
                    any = true;
                }
            if (!any)
                break;
        }
        bool ok = true;
        for (size_t c = 0; c < cores.size(); ++c)
            ok = ok && r[c] == VF_RNN_STEP_END && core(c).st.fault == VF_FAULT_NONE;
        return ok;
    }

    void snapshot()
    {
        Core &k = core();
        model.seg.assign(seg(), seg() + limit);
        model.wbuf = k.wbuf;
        model.vbuf = k.vbuf;
        model.acc = k.acc;
        model.param = k.param;
        model.state = k.state;
        model.act = k.act;
    }

    void model_run(size_t upto)
    {
        for (size_t i = 0; i < upto && i < prog().size(); ++i) {
            if (prog()[i].head.opcode == VF_OP_END)
                break;
            ref_exec(model, prog()[i]);
        }
    }

    size_t size() { return prog().size(); }
    vf_rnn_state_t &state() { return core().st; }
    vf_rnn_counters_t &counters() { return core().cnt; }

    bool same_as_model(bool report = true)
    {
        Core &k = core();
        const TbMemPair c[] = {
            {"seg", seg(), model.seg.data(), limit, 1},
            {"wbuf", k.wbuf.data(), model.wbuf.data(), k.wbuf.size(), 1},
            {"vbuf", k.vbuf.data(), model.vbuf.data(), k.vbuf.size(), 1},
            {"acc", k.acc.data(), model.acc.data(), k.acc.size(), 4},
            {"param", k.param.data(), model.param.data(), k.param.size(), 4},
            {"state", k.state.data(), model.state.data(), k.state.size(), 4},
            {"act", k.act.data(), model.act.data(), k.act.size(), 4},
        };
        return tb_same_memories(c, sizeof c / sizeof c[0], report);
    }

    /* iters[] and counters against the formulas, for a whole run of core c */
    void check_counts(size_t c = 0)
    {
        Core &k = core(c);
        vf_rnn_counters_t want;
        memset(&want, 0, sizeof want);
        for (size_t i = 0; i < k.prog.size(); ++i) {
            const vf_rnn_insn_t &p = k.prog[i];
            ++want.insns;
            const uint64_t e = expect_iters(p);
            CHECK_EQ(k.iters[i], e);
            switch (p.head.opcode) {
            case VF_RNN_OP_LOAD:
                want.load_iters += e;
                want.load_bytes += (uint64_t)p.rnn_mem.planes * p.rnn_mem.rows * p.rnn_mem.row_bytes;
                break;
            case VF_RNN_OP_SAVE:
                want.save_iters += e;
                want.save_bytes += (uint64_t)p.rnn_mem.planes * p.rnn_mem.rows * p.rnn_mem.row_bytes;
                break;
            case VF_RNN_OP_MATVEC:
                want.compute_iters += e;
                want.macs += (uint64_t)p.matvec.rows * p.matvec.cols;
                break;
            case VF_RNN_OP_GATES: want.compute_iters += e; break;
            case VF_OP_FRAME: ++want.frames; break;
            default: break;
            }
            if (p.head.opcode == VF_OP_END)
                break;
        }
        tb_check_counters(k.cnt, want);
    }

    void expect_clean_run() { tb_expect_clean_run(*this); }
    void expect_fault(uint32_t fault, uint32_t at, uint32_t opcode, uint64_t addr)
    {
        tb_expect_fault(*this, fault, at, opcode, addr);
    }
};

/* ========================================================================== */
/* Cell-level reference: whole layers                                          */
/* ========================================================================== */

struct Layer {
    uint8_t cell; /* VF_RNN_CELL_LSTM, _GRU (linear_before_reset = 0) or _GRU_LBR */
    uint32_t H, I, G;
    std::vector<int8_t> W, R;      /* [G*H][I], [G*H][H] */
    std::vector<int32_t> px, ph;   /* [G*H] PARAM entries {bias, mult, shift} */
    std::vector<int32_t> sig, tnh; /* tables */
    int32_t out_mult;
    uint8_t out_shift;
    int8_t out_zp;
};

static void random_layer(Layer &L, uint8_t cell, uint32_t H, uint32_t I)
{
    L.cell = cell;
    L.H = H;
    L.I = I;
    L.G = cell == VF_RNN_CELL_LSTM ? 4 : 3;
    L.W.resize((size_t)L.G * H * I);
    L.R.resize((size_t)L.G * H * H);
    fill_random(L.W.data(), L.W.size());
    fill_random(L.R.data(), L.R.size());
    for (std::vector<int32_t> *p : {&L.px, &L.ph}) {
        p->resize((size_t)L.G * H * 3);
        for (uint32_t r = 0; r < L.G * H; ++r) {
            const bool edge = rnd(40) == 0;
            (*p)[r * 3] = edge ? (int32_t)rnd64() : (int32_t)rrange(-(1 << 18), 1 << 18);
            (*p)[r * 3 + 1] = edge ? (int32_t)rnd64() : (int32_t)rrange(1 << 29, INT32_MAX);
            (*p)[r * 3 + 2] = edge ? (int32_t)rnd(63) : (int32_t)rrange(26, 34);
        }
    }
    L.sig = make_table(false);
    L.tnh = make_table(true);
    L.out_mult = rnd(8) ? 1 << 30 : (int32_t)rrange(1 << 28, INT32_MAX);
    L.out_shift = (uint8_t)rrange(36, 40);
    L.out_zp = (int8_t)rrange(-8, 8);
}

/* int32(bias + sum w * v) */
static int32_t ref_dot(const int32_t *entry, const int8_t *w, const int8_t *v, uint32_t n)
{
    int64_t s = entry[0];
    for (uint32_t c = 0; c < n; ++c)
        s += (int64_t)w[c] * v[c];
    return wrap32(s);
}

/* The layer over T steps. y: [(T+1)][H] int8 with y[0] = q8(h0) on return;
 * h, c: Q.15 states, updated in place. */
static void ref_layer(const Layer &L, const std::vector<int8_t> &xs, uint32_t T, std::vector<int8_t> &y,
                      std::vector<int32_t> &h, std::vector<int32_t> &c)
{
    const uint32_t H = L.H, I = L.I, G = L.G;
    y.assign((size_t)(T + 1) * H, 0);
    for (uint32_t j = 0; j < H; ++j)
        y[j] = ref_q8(h[j], L.out_mult, L.out_shift, L.out_zp);
    std::vector<int32_t> ax(G * H), ah(G * H);
    std::vector<int8_t> rh(H);
    for (uint32_t t = 0; t < T; ++t) {
        const int8_t *x = &xs[(size_t)t * I];
        const int8_t *hq = &y[(size_t)t * H];
        int8_t *yo = &y[(size_t)(t + 1) * H];
        for (uint32_t r = 0; r < G * H; ++r) {
            ax[r] = ref_dot(&L.px[r * 3], &L.W[(size_t)r * I], x, I);
            ah[r] = ref_dot(&L.ph[r * 3], &L.R[(size_t)r * H], hq, H);
        }
        auto tx = [&](uint32_t k, uint32_t j) { return ref_pre(ax[k * H + j], &L.px[(k * H + j) * 3]); };
        auto th = [&](uint32_t k, uint32_t j) { return ref_pre(ah[k * H + j], &L.ph[(k * H + j) * 3]); };
        auto pk = [&](uint32_t k, uint32_t j) { return ref_clamp(tx(k, j) + th(k, j), PRE_MIN, PRE_MAX); };
        if (L.cell == VF_RNN_CELL_GRU) { /* r * h_{t-1}, then R_h (r * h) */
            for (uint32_t j = 0; j < H; ++j)
                rh[j] = ref_q8(ref_rsr(ref_act(L.sig.data(), pk(1, j)) * h[j], 15), L.out_mult, L.out_shift,
                               L.out_zp);
            for (uint32_t j = 0; j < H; ++j)
                ah[2 * H + j] = ref_dot(&L.ph[(2 * H + j) * 3], &L.R[(size_t)(2 * H + j) * H], rh.data(), H);
        }
        for (uint32_t j = 0; j < H; ++j) {
            if (L.cell == VF_RNN_CELL_LSTM) {
                const int64_t i = ref_act(L.sig.data(), pk(0, j)), o = ref_act(L.sig.data(), pk(1, j));
                const int64_t f = ref_act(L.sig.data(), pk(2, j)), g = ref_act(L.tnh.data(), pk(3, j));
                const int64_t cn = ref_clamp(ref_rsr(f * c[j] + i * g, 15), INT32_MIN, INT32_MAX);
                c[j] = (int32_t)cn;
                h[j] = (int32_t)ref_rsr(o * ref_act(L.tnh.data(), cn), 15);
            } else {
                const int64_t z = ref_act(L.sig.data(), pk(0, j));
                const int64_t pn =
                    L.cell == VF_RNN_CELL_GRU_LBR
                        ? ref_clamp(tx(2, j) + ref_rsr(ref_act(L.sig.data(), pk(1, j)) * th(2, j), 15), PRE_MIN,
                                    PRE_MAX)
                        : pk(2, j);
                const int64_t n = ref_act(L.tnh.data(), pn);
                h[j] = (int32_t)ref_clamp(n + ref_rsr(z * ((int64_t)h[j] - n), 15), INT32_MIN, INT32_MAX);
            }
            yo[j] = ref_q8(h[j], L.out_mult, L.out_shift, L.out_zp);
        }
    }
}

/* ========================================================================== */
/* Layer programs: a sequence split over cores along the hidden dimension      */
/* ========================================================================== */

struct LayerDdr {
    uint32_t PX, PH, TAB, X, Y, C, HS, RH; /* the weights: per slice, packed by slice_weights */
};

struct LayerOpts {
    bool tile_cols;  /* split the matrix-vector products into column tiles */
    bool state_ddr;  /* state slices through DDR every step (else resident) */
    bool reload;     /* weights, PARAM and tables reloaded every step */
};

/* Places the layer's data in the segment; y[0] = q8(h0). */
static LayerDdr place_layer(Env &e, const Layer &L, const std::vector<int8_t> &xs, uint32_t T,
                            const std::vector<int32_t> &h0, const std::vector<int32_t> &c0)
{
    LayerDdr d;
    d.PX = e.put(L.px.data(), (uint32_t)L.px.size() * 4, 4);
    d.PH = e.put(L.ph.data(), (uint32_t)L.ph.size() * 4, 4);
    std::vector<int32_t> tabs(L.sig);
    tabs.insert(tabs.end(), L.tnh.begin(), L.tnh.end());
    d.TAB = e.put(tabs.data(), (uint32_t)tabs.size() * 4, 4);
    d.X = e.put(xs.data(), (uint32_t)xs.size(), 1);
    d.Y = e.alloc((T + 1) * L.H, 1);
    for (uint32_t j = 0; j < L.H; ++j)
        e.seg()[d.Y + j] = ref_q8(h0[j], L.out_mult, L.out_shift, L.out_zp);
    d.C = e.put(c0.data(), L.H * 4, 4);
    d.HS = e.put(h0.data(), L.H * 4, 4);
    d.RH = e.alloc(L.H, 1);
    return d;
}

/* Rows `rows` of the K-column matrix M as RNN_MATVEC's beat-major tiles
 * (vfpga_isa.h): row blocks of TR rows, each its ceil(K / TC) tiles, every
 * tile [r][c] and zero-padded. */
static std::vector<int8_t> pack_tiles(const std::vector<int8_t> &M, uint32_t K, const std::vector<uint32_t> &rows)
{
    const uint64_t nr = rows.size(), ncb = cdiv(K, TC);
    std::vector<int8_t> t(cdiv(nr, TR) * ncb * TB, 0);
    for (uint64_t r = 0; r < nr; ++r)
        for (uint64_t c = 0; c < K; ++c)
            t[((r / TR) * ncb + c / TC) * TB + (r % TR) * TC + c % TC] = M[(uint64_t)rows[r] * K + c];
    return t;
}

/* A slice's weights in DDR, packed for its products: W (G gates x n rows),
 * R (gates 0..G-1, or for GRU gates 0..1) and R2 (GRU: gate 2). */
struct SliceDdr {
    uint32_t W, R, R2, wbytes, rbytes, r2bytes;
};

static SliceDdr slice_weights(Env &e, const Layer &L, uint32_t s, uint32_t n)
{
    auto rows = [&](uint32_t g0, uint32_t g1) {
        std::vector<uint32_t> r;
        for (uint32_t g = g0; g < g1; ++g)
            for (uint32_t j = 0; j < n; ++j)
                r.push_back(g * L.H + s + j);
        return r;
    };
    const bool gru = L.cell == VF_RNN_CELL_GRU;
    const std::vector<int8_t> w = pack_tiles(L.W, L.I, rows(0, L.G));
    const std::vector<int8_t> r = pack_tiles(L.R, L.H, rows(0, gru ? 2 : L.G));
    const std::vector<int8_t> r2 = gru ? pack_tiles(L.R, L.H, rows(2, 3)) : std::vector<int8_t>();
    SliceDdr d;
    d.wbytes = (uint32_t)w.size();
    d.rbytes = (uint32_t)r.size();
    d.r2bytes = (uint32_t)r2.size();
    d.W = e.put(w.data(), d.wbytes, 1 + rnd(64));
    d.R = e.put(r.data(), d.rbytes, 1 + rnd(64));
    d.R2 = gru ? e.put(r2.data(), d.r2bytes, 1 + rnd(64)) : 0;
    return d;
}

/* MATVEC over [rows x cols] tiles at WBUF wgt, optionally as 1..3 column
 * pieces of whole column blocks (wgt_stride then exceeds a piece's blocks) */
static void emit_mv(std::vector<vf_rnn_insn_t> &p, bool tile, uint32_t wgt, uint32_t vec, uint32_t acc,
                    uint32_t param, uint32_t rows, uint32_t cols, uint8_t deps)
{
    const uint32_t ws = (uint32_t)cdiv(cols, TC);
    uint32_t c0 = 0;
    bool first = true;
    while (c0 < cols) {
        const uint32_t left = (uint32_t)cdiv(cols - c0, TC);
        const uint32_t w = tile && left > 1 ? TC * (1 + rnd(left - 1)) : cols - c0;
        p.push_back(mk_mv(wgt + c0 / TC * TB, ws, vec + c0, acc, param, rows, w, first, first ? deps : 0));
        first = false;
        c0 += w;
    }
}

/* The program of the core that owns hidden units [s, s + n). */
static void layer_program(Env &e, std::vector<vf_rnn_insn_t> &p, const Layer &L, const LayerDdr &d, uint32_t T,
                          uint32_t s, uint32_t n, const LayerOpts &o)
{
    const uint32_t H = L.H, I = L.I, G = L.G;
    const SliceDdr sw = slice_weights(e, L, s, n);
    /* on-chip layout */
    const uint32_t wW = 0, wR = sw.wbytes, wR2 = wR + sw.rbytes; /* WBUF, whole tiles */
    const uint32_t vX = 0, vH = I, vRH = I + H, vO = I + 2 * H; /* VBUF */
    const uint32_t aX = 0, aH = G * n;                      /* ACC, PARAM */
    const uint32_t sC = 0, sH = n;                          /* STATE */
    const uint16_t tS = 0, tT = (uint16_t)TW;               /* ACT */
    const uint8_t PN = VF_DEP_PUSH_NEXT, PP = VF_DEP_POP_PREV;
    const bool lstm = L.cell == VF_RNN_CELL_LSTM;
    GatesArgs ga = {L.cell, n, n, aX, aH, aX, aH, sC, sH, vO, tS, tT, L.out_mult, L.out_shift, L.out_zp};
    uint32_t frame = 0;
    for (uint32_t t = 0; t < T; ++t) {
        p.push_back(mk_marker(VF_OP_FRAME, frame++));
        if (t == 0 || o.reload) {
            p.push_back(mk_load(VF_RNN_BUF_WGT, sw.W, wW, sw.wbytes));
            p.push_back(mk_load(VF_RNN_BUF_WGT, sw.R, wR, sw.rbytes));
            if (sw.r2bytes)
                p.push_back(mk_load(VF_RNN_BUF_WGT, sw.R2, wR2, sw.r2bytes));
            p.push_back(mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_PARAM, d.PX + 12 * s, 3 * aX, 12 * n, 1, G, 0, 12 * H));
            p.push_back(mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_PARAM, d.PH + 12 * s, 3 * aH, 12 * n, 1, G, 0, 12 * H));
            p.push_back(mk_load(VF_RNN_BUF_ACT, d.TAB, tS, 8 * TW));
        }
        if (t == 0 || o.state_ddr) {
            if (lstm)
                p.push_back(mk_load(VF_RNN_BUF_STATE, d.C + 4 * s, sC, 4 * n));
            p.push_back(mk_load(VF_RNN_BUF_STATE, d.HS + 4 * s, sH, 4 * n));
        }
        p.push_back(mk_load(VF_RNN_BUF_VEC, d.X + t * I, vX, I));
        p.push_back(mk_load(VF_RNN_BUF_VEC, d.Y + t * H, vH, H, PN));
        emit_mv(p, o.tile_cols, wW, vX, aX, aX, G * n, I, PP);
        if (L.cell == VF_RNN_CELL_GRU) {
            emit_mv(p, o.tile_cols, wR, vH, aH, aH, 2 * n, H, 0);
            GatesArgs rh = ga;
            rh.cell = VF_RNN_CELL_GRU_RH;
            rh.tanh_t = 0xffff; /* not read */
            p.push_back(mk_gates(rh, PN));
            p.push_back(mk_save(VF_RNN_BUF_VEC, d.RH + s, vO, n, PP));
            p.push_back(mk_marker(VF_OP_BARRIER));
            p.push_back(mk_marker(VF_OP_FRAME, frame++));
            p.push_back(mk_load(VF_RNN_BUF_VEC, d.RH, vRH, H, PN));
            emit_mv(p, o.tile_cols, wR2, vRH, aH + 2 * n, aH + 2 * n, n, H, PP);
        } else {
            emit_mv(p, o.tile_cols, wR, vH, aH, aH, G * n, H, 0);
        }
        p.push_back(mk_gates(ga, PN));
        p.push_back(mk_save(VF_RNN_BUF_VEC, d.Y + (t + 1) * H + s, vO, n, PP));
        if (o.state_ddr || t + 1 == T) {
            if (lstm)
                p.push_back(mk_save(VF_RNN_BUF_STATE, d.C + 4 * s, sC, 4 * n));
            p.push_back(mk_save(VF_RNN_BUF_STATE, d.HS + 4 * s, sH, 4 * n));
        }
        p.push_back(mk_marker(VF_OP_BARRIER));
    }
    p.push_back(mk_marker(VF_OP_END));
}

struct LayerCase {
    Layer L;
    uint32_t T;
    std::vector<int8_t> xs;
    std::vector<int32_t> h0, c0;
};

static void random_case(LayerCase &c, uint8_t cell, uint32_t H, uint32_t I, uint32_t T)
{
    random_layer(c.L, cell, H, I);
    c.T = T;
    c.xs.resize((size_t)T * I);
    fill_random(c.xs.data(), c.xs.size());
    c.h0.resize(H);
    c.c0.resize(H);
    const bool wide = rnd(3) == 0;
    for (uint32_t j = 0; j < H; ++j) {
        c.h0[j] = cell == VF_RNN_CELL_LSTM ? (int32_t)rrange(-ONE, ONE)
                                            : (int32_t)(wide ? (int32_t)rnd64() : (int32_t)rrange(-ONE, ONE));
        c.c0[j] = (int32_t)(wide ? (int32_t)rnd64() : (int32_t)rrange(-4 * ONE, 4 * ONE));
    }
}

/* Runs the case on `cuts.size() - 1` cores, slice i = [cuts[i], cuts[i+1]);
 * returns the segment's Y, final c and h. */
static bool run_layer(const LayerCase &c, const std::vector<uint32_t> &cuts, const LayerOpts &o,
                      std::vector<int8_t> &y, std::vector<int32_t> &hT, std::vector<int32_t> &cT)
{
    const uint32_t k = (uint32_t)cuts.size() - 1;
    Env e(1u << 21, k);
    const LayerDdr d = place_layer(e, c.L, c.xs, c.T, c.h0, c.c0);
    for (uint32_t i = 0; i < k; ++i) {
        layer_program(e, e.core(i).prog, c.L, d, c.T, cuts[i], cuts[i + 1] - cuts[i], o);
        e.place_program(i);
    }
    const bool ok = e.run_all();
    CHECK(ok);
    CHECK(e.guards_intact());
    for (uint32_t i = 0; i < k && ok; ++i)
        e.check_counts(i);
    y.assign(e.seg() + d.Y, e.seg() + d.Y + (c.T + 1) * c.L.H);
    hT.resize(c.L.H);
    cT.resize(c.L.H);
    memcpy(hT.data(), e.seg() + d.HS, c.L.H * 4);
    memcpy(cT.data(), e.seg() + d.C, c.L.H * 4);
    return ok;
}

/* layer sizes that fit the board's buffers */
static void fit_layer(uint8_t cell, uint32_t &H, uint32_t &I, uint32_t cores)
{
    const uint32_t G = cell == VF_RNN_CELL_LSTM ? 4 : 3;
    for (;;) {
        const uint32_t n = cdiv(H, cores) + 2; /* largest slice, uneven cuts */
        const uint64_t tiled = (uint64_t)G * cdiv(n, TR) * TR * (cdiv(I, TC) + cdiv(H, TC)) * TC; /* padded */
        const bool fits = tiled <= VF_RNN_WBUF_BYTES && I + 3 * H <= VF_RNN_VBUF_BYTES &&
                          2 * G * n <= VF_RNN_ACC_WORDS && 2 * G * n <= VF_RNN_PARAM_ENTRIES &&
                          2 * n <= VF_RNN_STATE_WORDS && 2 * TW <= VF_RNN_ACT_WORDS;
        if (fits || H <= 2)
            return;
        H = H * 3 / 4;
        I = I * 3 / 4 + 1;
    }
}

/* k slices of H (H >= k), each within one unit of even, none empty */
static std::vector<uint32_t> random_cuts(uint32_t H, uint32_t k)
{
    std::vector<uint32_t> c(1, 0);
    for (uint32_t i = 1; i < k; ++i) {
        const int64_t v = (int64_t)(H * i / k) + (int64_t)rnd(3) - 1;
        c.push_back((uint32_t)std::min<int64_t>(std::max<int64_t>(v, c.back() + 1), H - (k - i)));
    }
    c.push_back(H);
    return c;
}

/* ========================================================================== */
/* Tests                                                                       */
/* ========================================================================== */

static void test_geometry()
{
    vf_rnn_geometry_t g;
    memset(&g, 0xff, sizeof g);
    vf_rnn_core_geometry(&g);
    CHECK_EQ(g.rows, VF_RNN_ROWS);
    CHECK_EQ(g.cols, VF_RNN_COLS);
    CHECK_EQ(g.lanes, VF_RNN_LANES);
    CHECK_EQ(g.axi_bytes, VF_AXI_BYTES);
    CHECK_EQ(g.wbuf_bytes, VF_RNN_WBUF_BYTES);
    CHECK_EQ(g.vbuf_bytes, VF_RNN_VBUF_BYTES);
    CHECK_EQ(g.acc_words, VF_RNN_ACC_WORDS);
    CHECK_EQ(g.param_entries, VF_RNN_PARAM_ENTRIES);
    CHECK_EQ(g.state_words, VF_RNN_STATE_WORDS);
    CHECK_EQ(g.act_words, VF_RNN_ACT_WORDS);
    CHECK_EQ(g.act_segments, VF_RNN_ACT_SEGMENTS);
    CHECK_EQ(g.act_step_log2, VF_RNN_ACT_STEP_LOG2);
    CHECK_EQ(sizeof(vf_rnn_insn_t), VF_INSN_BYTES);
    CHECK(VF_RNN_OP_FIRST >= VF_OP_COUNT);
}

/* The activation unit over every pre-activation: bit-exact with the
 * reference, and within the documented bound of float sigmoid / tanh for
 * the standard tables (2048 segments of 1/64: 3.1e-5 and 4.8e-5). */
static void test_activation()
{
    const std::vector<int32_t> sig = make_table(false), tnh = make_table(true);
    const uint32_t chunk = 1u << 16;
    std::vector<int32_t> pre(chunk), out_s(chunk), out_t(chunk);
    double es = 0, et = 0;
    uint64_t mismatches = 0;
    for (int64_t lo = PRE_MIN; lo <= PRE_MAX; lo += chunk) {
        for (uint32_t i = 0; i < chunk; ++i)
            pre[i] = (int32_t)(lo + i);
        vf_rnn_activation(sig.data(), pre.data(), out_s.data(), chunk);
        vf_rnn_activation(tnh.data(), pre.data(), out_t.data(), chunk);
        for (uint32_t i = 0; i < chunk; ++i) {
            const double x = (double)pre[i] / ONE;
            const double ds = fabs(out_s[i] / (double)ONE - sigmoid(x)), dt = fabs(out_t[i] / (double)ONE - tanh(x));
            es = ds > es ? ds : es;
            et = dt > et ? dt : et;
            if ((i & 15) == 0) /* the exact model on a sixteenth, everything under the error bound */
                mismatches += out_s[i] != ref_act(sig.data(), pre[i]) || out_t[i] != ref_act(tnh.data(), pre[i]);
        }
    }
    printf("    activation: max |sigmoid_q - sigmoid| = %.3g, max |tanh_q - tanh| = %.3g over [%lld, %lld] / 2^15\n",
           es, et, (long long)PRE_MIN, (long long)PRE_MAX);
    CHECK_EQ(mismatches, 0);
    if (TSEG == 2048 && TSTEP == 9) {
        CHECK(es <= 3.1e-5);
        CHECK(et <= 4.8e-5);
    }
    /* arbitrary table contents and out-of-range inputs: exact and clamped */
    std::vector<int32_t> junk(TW);
    for (int trial = 0; trial < 20; ++trial) {
        fill_random(junk.data(), junk.size() * 4);
        if (trial % 2)
            for (int32_t &w : junk)
                w = (int32_t)rrange(INT32_MIN, INT32_MAX) / (trial % 4 == 1 ? 1 : 1 << 15);
        const int64_t half = (int64_t)TSEG << (TSTEP - 1), seg = (int64_t)1 << TSTEP;
        for (uint32_t i = 0; i < 512; ++i) {
            if (i < 16) /* outside the pre-activation range */
                pre[i] = (int32_t)(i % 2 ? (int64_t)INT32_MAX - i : (int64_t)INT32_MIN + i);
            else if (i < 256) /* the first and last segments and just outside the table domain */
                pre[i] = (int32_t)((i % 2 ? half : -half) + rrange(-2 * seg, 2 * seg));
            else
                pre[i] = (int32_t)rrange(INT32_MIN, INT32_MAX) / (1 << rnd(16));
        }
        vf_rnn_activation(junk.data(), pre.data(), out_s.data(), 512);
        for (uint32_t i = 0; i < 512; ++i) {
            CHECK_EQ(out_s[i], ref_act(junk.data(), pre[i]));
            CHECK(out_s[i] >= -ONE && out_s[i] <= ONE);
        }
    }
    vf_rnn_activation(NULL, pre.data(), out_s.data(), 4); /* no effect, no crash */
}

/* RNN_LOAD into every buffer (planes, rows, strides including 0), RNN_SAVE
 * from VBUF / ACC / STATE, in two frames. */
static void test_load_save()
{
    static const uint32_t bufs[] = {VF_RNN_BUF_WGT, VF_RNN_BUF_VEC, VF_RNN_BUF_ACC,
                                    VF_RNN_BUF_PARAM, VF_RNN_BUF_STATE, VF_RNN_BUF_ACT};
    static const uint32_t sizes[] = {VF_RNN_WBUF_BYTES, VF_RNN_VBUF_BYTES, VF_RNN_ACC_WORDS,
                                     PARAM_WORDS,       VF_RNN_STATE_WORDS, VF_RNN_ACT_WORDS};
    for (int trial = 0; trial < 60; ++trial) {
        Env e(1 << 16 > 80 * TB ? 1 << 16 : 80 * TB); /* room for WBUF rows of whole tiles */
        g_ctx = "load/save trial " + std::to_string(trial);
        std::vector<vf_rnn_insn_t> &p = e.prog();
        p.push_back(mk_marker(VF_OP_FRAME));
        for (int i = 0; i < 4; ++i) {
            const uint32_t b = rnd(6);
            const bool wide = bufs[b] >= VF_RNN_BUF_ACC, wgt = bufs[b] == VF_RNN_BUF_WGT;
            /* WBUF takes whole tiles at tile offsets (VF_FAULT_FIELD otherwise) */
            const uint32_t rb = wgt ? TB * (1 + rnd(2)) : wide ? 4 * (1 + rnd(40)) : 1 + rnd(150);
            const uint32_t rows = 1 + rnd(5), planes = 1 + rnd(3);
            const uint32_t rs = rnd(4) ? rb + rnd(20) : rnd(rb + 1), ps = rnd(4) ? rows * (rb + 20) + rnd(50) : rnd(100);
            const uint32_t elems = planes * rows * (wide ? rb / 4 : rb);
            const uint32_t buf = wgt ? TB * rnd((sizes[b] - elems) / TB + 1) : rnd(sizes[b] - elems + 1);
            const uint32_t dram = rnd(e.limit - ((planes - 1) * ps + (rows - 1) * rs + rb));
            p.push_back(mk_mem(VF_RNN_OP_LOAD, (uint8_t)bufs[b], dram, buf, rb, rows, planes, rs, ps));
        }
        p.push_back(mk_marker(VF_OP_FRAME));
        for (int i = 0; i < 4; ++i) {
            static const uint32_t savable[] = {1, 2, 4}; /* VEC, ACC, STATE */
            const uint32_t b = savable[rnd(3)];
            const bool wide = bufs[b] >= VF_RNN_BUF_ACC;
            const uint32_t rb = wide ? 4 * (1 + rnd(40)) : 1 + rnd(150);
            const uint32_t rows = 1 + rnd(4), planes = 1 + rnd(3);
            const uint32_t rs = rb + rnd(10), ps = (rows - 1) * rs + rb + rnd(10);
            const uint32_t elems = planes * rows * (wide ? rb / 4 : rb);
            const uint32_t buf = rnd(sizes[b] - elems + 1);
            /* above the program (placed at offset 0), which must stay intact */
            const uint32_t dram = 1024 + rnd(e.limit - 1024 - ((planes - 1) * ps + (rows - 1) * rs + rb));
            p.push_back(mk_mem(VF_RNN_OP_SAVE, (uint8_t)bufs[b], dram, buf, rb, rows, planes, rs, ps));
        }
        p.push_back(mk_marker(VF_OP_END));
        e.place_program();
        e.expect_clean_run();
        if (g_checks_failed)
            return;
    }
}

/* RNN_MATVEC: shapes around the array size, INIT and accumulation, strided
 * weights, extreme values (wrapping accumulators). */
static void test_matvec()
{
    for (int trial = 0; trial < 60; ++trial) {
        Env e(1 << 14);
        g_ctx = "matvec trial " + std::to_string(trial);
        std::vector<vf_rnn_insn_t> &p = e.prog();
        p.push_back(mk_marker(VF_OP_FRAME));
        if (trial % 5 == 0) { /* saturated operands: int32 wrap */
            memset(e.core().wbuf.data(), 0x80, 1 << 12);
            memset(e.core().vbuf.data(), 0x80, 1 << 12);
        }
        for (int i = 0; i < 5; ++i) {
            uint32_t rows = rnd(3) ? 1 + rnd(3 * VF_RNN_ROWS) : 1 + rnd(300);
            uint32_t cols = rnd(3) ? 1 + rnd(3 * VF_RNN_COLS) : 1 + rnd(700);
            if (cols > VF_RNN_VBUF_BYTES)
                cols = VF_RNN_VBUF_BYTES;
            if (rows > VF_RNN_ACC_WORDS)
                rows = VF_RNN_ACC_WORDS;
            const uint32_t ncb = (uint32_t)cdiv(cols, TC); /* tile words per row block */
            uint32_t ws = rows <= TR && rnd(4) == 0 ? rnd(5) : ncb + rnd(3);
            while (rows > TR && (cdiv(rows, TR) - 1) * ws + ncb > VF_RNN_WBUF_BYTES / TB)
                rows /= 2;
            const uint64_t words = (cdiv(rows, TR) - 1) * ws + ncb;
            const uint32_t wgt = TB * rnd((uint32_t)(VF_RNN_WBUF_BYTES / TB - words + 1));
            const uint32_t vec = rnd(VF_RNN_VBUF_BYTES - cols + 1);
            const uint32_t acc = rnd(VF_RNN_ACC_WORDS - rows + 1);
            const uint32_t prm = rows <= VF_RNN_PARAM_ENTRIES ? rnd(VF_RNN_PARAM_ENTRIES - rows + 1) : 0;
            const bool init = rows <= VF_RNN_PARAM_ENTRIES && rnd(2);
            p.push_back(mk_mv(wgt, ws, vec, acc, prm, rows, cols, init));
        }
        p.push_back(mk_marker(VF_OP_END));
        e.place_program();
        e.expect_clean_run();
        if (g_checks_failed)
            return;
    }
}

/* RNN_GATES on random accumulators, PARAM, state and tables (the standard
 * ones or arbitrary words), every cell kind, edge multipliers and shifts. */
static void test_gates()
{
    for (int trial = 0; trial < 80; ++trial) {
        Env e(1 << 14);
        Core &k = e.core();
        const uint8_t cell = (uint8_t)(trial % VF_RNN_CELL_COUNT);
        g_ctx = "gates trial " + std::to_string(trial) + " cell " + std::to_string(cell);
        k.sane_shifts();
        if (trial % 3) { /* standard tables at random places */
            const std::vector<int32_t> s = make_table(false), t = make_table(true);
            if (VF_RNN_ACT_WORDS >= 2 * TW) {
                const uint32_t a = rnd(VF_RNN_ACT_WORDS - 2 * TW + 1);
                memcpy(&k.act[a], s.data(), TW * 4);
                memcpy(&k.act[a + TW], t.data(), TW * 4);
            }
        }
        k.sync_act();
        if (trial % 5 == 2) /* lanes' copies made to differ: each lane must read its own */
            for (uint64_t l = 1; l < VF_RNN_LANES; ++l)
                for (uint64_t i = 0; i < VF_RNN_ACT_WORDS; ++i)
                    k.act[l * VF_RNN_ACT_WORDS + i] += (int32_t)(37 * l);
        if (trial % 4 == 1) /* extreme accumulators and multipliers */
            for (size_t i = 0; i < 256 && i < k.acc.size(); ++i) {
                k.acc[i] = i % 2 ? INT32_MIN : INT32_MAX;
                if (3 * i + 2 < k.param.size()) {
                    k.param[3 * i + 1] = i % 3 ? INT32_MIN : INT32_MAX;
                    k.param[3 * i + 2] = (int32_t)(i % 63);
                }
            }
        std::vector<vf_rnn_insn_t> &p = e.prog();
        p.push_back(mk_marker(VF_OP_FRAME));
        for (int i = 0; i < 3; ++i) {
            const uint32_t G = cell == VF_RNN_CELL_LSTM ? 4 : 3;
            uint32_t n = 1 + rnd(rnd(2) ? 2 * VF_RNN_LANES : 200);
            while (G * (n + 4) > VF_RNN_ACC_WORDS / 2 || G * (n + 4) > VF_RNN_PARAM_ENTRIES / 2 ||
                   2 * n > VF_RNN_STATE_WORDS)
                n /= 2;
            GatesArgs a;
            a.cell = cell;
            a.n = n;
            a.gs = n + rnd(4);
            a.acc_x = rnd(VF_RNN_ACC_WORDS / 2 - G * a.gs + 1);
            a.acc_h = VF_RNN_ACC_WORDS / 2 + rnd(VF_RNN_ACC_WORDS / 2 - G * a.gs + 1);
            a.param_x = rnd(VF_RNN_PARAM_ENTRIES / 2 - G * a.gs + 1);
            a.param_h = rnd(2) ? a.param_x : VF_RNN_PARAM_ENTRIES / 2 + rnd(VF_RNN_PARAM_ENTRIES / 2 - G * a.gs + 1);
            a.state_c = rnd(VF_RNN_STATE_WORDS / 2 - n + 1);
            a.state_h = VF_RNN_STATE_WORDS / 2 + rnd(VF_RNN_STATE_WORDS / 2 - n + 1);
            if (rnd(2))
                std::swap(a.state_c, a.state_h);
            a.out = rnd(VF_RNN_VBUF_BYTES - n + 1);
            a.sig = (uint16_t)rnd(VF_RNN_ACT_WORDS - TW + 1);
            a.tanh_t = (uint16_t)rnd(VF_RNN_ACT_WORDS - TW + 1);
            a.mult = rnd(4) ? (int32_t)rrange(1 << 28, INT32_MAX) : (int32_t)rnd64();
            a.shift = (uint8_t)(rnd(4) ? rrange(30, 40) : rnd(63));
            a.zp = (int8_t)rnd64();
            p.push_back(mk_gates(a));
        }
        p.push_back(mk_marker(VF_OP_END));
        e.place_program();
        e.expect_clean_run();
        if (g_checks_failed)
            return;
    }
}

/* Whole layers on one core against the cell-level reference: LSTM, GRU with
 * linear_before_reset 0 and 1, single steps and sequences, resident or
 * DDR-round-tripped state, column-tiled products. */
static void test_layer_sequences()
{
    static const uint8_t cells[] = {VF_RNN_CELL_LSTM, VF_RNN_CELL_GRU, VF_RNN_CELL_GRU_LBR};
    int trial = 0;
    for (uint8_t cell : cells)
        for (uint32_t T : {1u, 7u}) {
            for (int v = 0; v < 3; ++v, ++trial) {
                uint32_t H = 8 + rnd(56), I = 4 + rnd(60);
                fit_layer(cell, H, I, 1);
                LayerCase c;
                random_case(c, cell, H, I, T);
                const LayerOpts o = {v == 1, v == 2, v == 2};
                g_ctx = "layer cell " + std::to_string(cell) + " H " + std::to_string(H) + " I " +
                        std::to_string(I) + " T " + std::to_string(T) + " variant " + std::to_string(v);
                std::vector<int8_t> y, ry;
                std::vector<int32_t> h, cc, rh = c.h0, rc = c.c0;
                run_layer(c, {0, H}, o, y, h, cc);
                ref_layer(c.L, c.xs, T, ry, rh, rc);
                CHECK(y == ry);
                CHECK(h == rh);
                if (cell == VF_RNN_CELL_LSTM)
                    CHECK(cc == rc);
                if (g_checks_failed)
                    return;
            }
        }
}

/* The same layer split over 2 and 3 cores along the hidden dimension
 * (uneven slices, h exchanged through DDR between barriers) gives exactly
 * the single-core result. */
static void test_hidden_slices()
{
    static const uint8_t cells[] = {VF_RNN_CELL_LSTM, VF_RNN_CELL_GRU, VF_RNN_CELL_GRU_LBR};
    for (uint8_t cell : cells)
        for (int v = 0; v < 2; ++v) {
            uint32_t H = 24 + rnd(40), I = 8 + rnd(40);
            fit_layer(cell, H, I, 1);
            LayerCase c;
            random_case(c, cell, H, I, 5);
            const LayerOpts o = {v == 1, v == 1, false};
            std::vector<int8_t> y1, y2, y3, ry;
            std::vector<int32_t> h1, h2, h3, c1, c2, c3, rh = c.h0, rc = c.c0;
            g_ctx = "slices cell " + std::to_string(cell) + " H " + std::to_string(H) + " 1 core";
            run_layer(c, {0, H}, o, y1, h1, c1);
            const std::vector<uint32_t> two = {0, H / 2, H}, three = random_cuts(H, 3);
            g_ctx = "slices cell " + std::to_string(cell) + " H " + std::to_string(H) + " 2 cores";
            run_layer(c, two, o, y2, h2, c2);
            g_ctx = "slices cell " + std::to_string(cell) + " H " + std::to_string(H) + " 3 cores (" +
                    std::to_string(three[1]) + ", " + std::to_string(three[2]) + ")";
            run_layer(c, three, o, y3, h3, c3);
            ref_layer(c.L, c.xs, c.T, ry, rh, rc);
            CHECK(y1 == ry);
            CHECK(y2 == y1);
            CHECK(y3 == y1);
            CHECK(h2 == h1 && h3 == h1 && h1 == rh);
            if (cell == VF_RNN_CELL_LSTM)
                CHECK(c2 == c1 && c3 == c1 && c1 == rc);
            if (g_checks_failed)
                return;
        }
}

/* Tokens order the units; without them the adversarial schedule runs the
 * save before the compute it depends on. A wait nobody satisfies is a
 * deadlock. */
static void test_tokens()
{
    for (int withtok = 1; withtok >= 0; --withtok) {
        Env e(1 << 14);
        g_ctx = withtok ? "with tokens" : "without tokens";
        e.core().sane_shifts();
        const uint32_t src = e.alloc(64), dst = e.alloc(256);
        const uint8_t PN = withtok ? VF_DEP_PUSH_NEXT : 0, PP = withtok ? VF_DEP_POP_PREV : 0;
        e.prog() = {mk_marker(VF_OP_FRAME), mk_load(VF_RNN_BUF_VEC, src, 0, 64, PN),
                    mk_mv(0, 64, 0, 0, 0, 16, 64, true, (uint8_t)(PP | PN)),
                    mk_save(VF_RNN_BUF_ACC, dst, 0, 64, PP), mk_marker(VF_OP_END)};
        e.place_program();
        e.snapshot();
        CHECK_EQ(e.run(), VF_RNN_STEP_END);
        e.model_run(e.prog().size());
        CHECK_EQ(e.same_as_model(false), withtok == 1);
        CHECK(e.guards_intact());
    }
    { /* compute waits for a load that never pushes */
        Env e(1 << 14);
        g_ctx = "deadlock";
        e.prog() = {mk_marker(VF_OP_FRAME), mk_load(VF_RNN_BUF_VEC, 0, 0, 8),
                    mk_mv(0, 8, 0, 0, 0, 1, 8, false, VF_DEP_POP_PREV), mk_save(VF_RNN_BUF_VEC, 64, 0, 8),
                    mk_marker(VF_OP_END)};
        e.place_program();
        e.snapshot();
        CHECK_EQ(e.run(), VF_RNN_STEP_FAULT);
        CHECK_EQ(e.core().st.fault, VF_FAULT_DEADLOCK);
        CHECK_EQ(e.core().st.fault_insn, 2);
        CHECK_EQ(e.core().st.fault_addr, 1);
        CHECK_EQ(e.core().st.fault_opcode, VF_RNN_OP_MATVEC);
        CHECK(e.guards_intact());
    }
}

/* FRAME / BARRIER / END and the end of the stream. */
static void test_step_rule()
{
    Env e(1 << 14);
    g_ctx = "step rule";
    e.prog() = {mk_marker(VF_OP_FRAME, 1), mk_load(VF_RNN_BUF_VEC, 0, 0, 16), mk_marker(VF_OP_FRAME, 2),
                mk_load(VF_RNN_BUF_VEC, 16, 16, 16), blank(VF_OP_NOP), mk_marker(VF_OP_BARRIER),
                mk_load(VF_RNN_BUF_VEC, 32, 32, 16), mk_marker(VF_OP_END), mk_load(VF_RNN_BUF_VEC, 48, 48, 16)};
    e.place_program();
    e.snapshot();
    CHECK_EQ(e.step(), VF_RNN_STEP_FRAME);
    CHECK_EQ(e.core().st.pc, 2);
    CHECK_EQ(e.core().cnt.insns, 2);
    CHECK_EQ(e.step(), VF_RNN_STEP_FRAME); /* FRAME 2 .. BARRIER consumed */
    CHECK_EQ(e.core().st.pc, 6);
    CHECK_EQ(e.core().cnt.frames, 2);
    CHECK_EQ(e.step(), VF_RNN_STEP_END); /* body without FRAME, then END */
    CHECK_EQ(e.core().st.pc, 8);
    CHECK_EQ(e.core().st.running, 0);
    CHECK_EQ(e.step(), VF_RNN_STEP_END); /* stays stopped */
    CHECK_EQ(e.core().cnt.insns, 8);
    e.model_run(e.prog().size()); /* stops at END: the last load never runs */
    CHECK(e.same_as_model());
    for (uint32_t i = 0; i < 8; ++i)
        CHECK_EQ(e.core().iters[i], expect_iters(e.prog()[i]));
    CHECK_EQ(e.core().iters[8], 0xdeadbeefu);

    /* the stream ends without a marker; a BARRIER as last instruction ends it too */
    Env f(1 << 14);
    f.prog() = {mk_load(VF_RNN_BUF_VEC, 0, 0, 16), mk_marker(VF_OP_BARRIER)};
    f.place_program();
    CHECK_EQ(f.step(), VF_RNN_STEP_END);
    CHECK_EQ(f.core().st.pc, 2);
    Env h(1 << 14);
    h.prog() = {mk_marker(VF_OP_FRAME), mk_load(VF_RNN_BUF_VEC, 0, 0, 16)};
    h.place_program();
    CHECK_EQ(h.step(), VF_RNN_STEP_END);
    CHECK_EQ(h.core().st.pc, 2);
    CHECK_EQ(h.core().st.running, 0);
    /* NULL buffers: a buffer fault, nothing run */
    vf_rnn_buffers_t nb = h.core().bufs;
    nb.act = NULL;
    vf_rnn_state_t st;
    memset(&st, 0, sizeof st);
    CHECK_EQ(vf_rnn_core_step(h.seg(), h.limit, h.core().insn_offset, 2, &nb, &st, NULL, NULL), VF_RNN_STEP_FAULT);
    CHECK_EQ(st.fault, VF_FAULT_BUFFER);
}

/* lowest offending DDR offset of a LOAD/SAVE, by brute force over its rows */
static uint64_t first_outside(const vf_insn_rnn_mem_t &m, uint64_t limit)
{
    uint64_t low = ~0ull;
    for (uint64_t p = 0; p < m.planes; ++p)
        for (uint64_t r = 0; r < m.rows; ++r) {
            const uint64_t s = m.dram_addr + p * m.plane_stride + r * m.row_stride;
            if (s + m.row_bytes > limit)
                low = std::min(low, std::max(s, limit));
        }
    return low;
}

static void test_fault_segment()
{
    for (int trial = 0; trial < 80; ++trial) {
        Env e(1 << 13);
        const bool save = trial % 2;
        g_ctx = std::string(save ? "save" : "load") + " segment trial " + std::to_string(trial);
        const uint8_t buffer = save ? (uint8_t)VF_RNN_BUF_STATE : (uint8_t)(rnd(2) ? VF_RNN_BUF_WGT : VF_RNN_BUF_ACT);
        const uint32_t rb = buffer == VF_RNN_BUF_WGT ? TB * (1 + rnd(2)) : 4 * (1 + rnd(16));
        const uint32_t rows = 1 + rnd(6), planes = 1 + rnd(4);
        const uint32_t rs = save ? rb + rnd(64) : rnd(2 * rb + 64);
        const uint32_t ps = save ? (rows - 1) * rs + rb + rnd(64) : rnd(rows * rs + 64);
        const uint64_t span = (uint64_t)(planes - 1) * ps + (uint64_t)(rows - 1) * rs + rb;
        uint32_t dram = (uint32_t)(e.limit - span + 1 + rnd((uint32_t)span + 64)); /* sticks out */
        if (trial % 10 == 0)
            dram = 0xfffffff0u;
        vf_rnn_insn_t bad = mk_mem(save ? VF_RNN_OP_SAVE : VF_RNN_OP_LOAD, buffer, dram, 0, rb, rows, planes, rs, ps);
        e.prog() = {mk_marker(VF_OP_FRAME), mk_load(VF_RNN_BUF_VEC, 0, 0, 32), mk_marker(VF_OP_BARRIER), bad,
                    mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_fault(VF_FAULT_SEGMENT, 3, bad.head.opcode, std::min<uint64_t>(first_outside(bad.rnn_mem, e.limit),
                                                                                 0xffffffffull));
        if (g_checks_failed)
            return;
    }
    { /* a row that ends exactly at the limit is fine */
        Env e(1 << 13);
        g_ctx = "segment edge";
        e.prog() = {mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_VEC, e.limit - 64, 0, 16, 4, 1, 16, 0), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
    }
    { /* a NULL segment faults every access */
        Env e(1 << 13);
        g_ctx = "null segment";
        e.prog() = {mk_load(VF_RNN_BUF_VEC, 0, 0, 16), mk_marker(VF_OP_END)};
        e.place_program();
        vf_rnn_state_t st;
        memset(&st, 0, sizeof st);
        CHECK_EQ(vf_rnn_core_step(NULL, e.limit, 0, 2, &e.core().bufs, &st, NULL, NULL), VF_RNN_STEP_FAULT);
        CHECK_EQ(st.fault, VF_FAULT_FETCH);
    }
}

static void expect_single_fault(const char *name, const vf_rnn_insn_t &bad, uint32_t fault, uint64_t addr,
                                 bool shifts = true)
{
    Env e(1 << 14);
    g_ctx = name;
    if (shifts)
        e.core().sane_shifts();
    e.prog() = {mk_marker(VF_OP_FRAME), mk_load(VF_RNN_BUF_VEC, 0, 0, 64), mk_marker(VF_OP_BARRIER), bad,
                mk_marker(VF_OP_END)};
    e.place_program();
    e.expect_fault(fault, 3, bad.head.opcode, addr);
}

static void expect_clean_single(const char *name, const vf_rnn_insn_t &good)
{
    Env e(1 << 14);
    g_ctx = name;
    e.core().sane_shifts();
    e.prog() = {mk_marker(VF_OP_FRAME), good, mk_marker(VF_OP_END)};
    e.place_program();
    e.expect_clean_run();
}

static GatesArgs good_gates(uint8_t cell)
{
    GatesArgs a = {cell, 8, 8, 0, 64, 0, 64, 0, 16, 0, 0, (uint16_t)TW, 1 << 30, 38, 0};
    return a;
}

static void test_fault_buffer()
{
    const uint32_t W = VF_RNN_WBUF_BYTES, V = VF_RNN_VBUF_BYTES, A = VF_RNN_ACC_WORDS, P = VF_RNN_PARAM_ENTRIES;
    const uint32_t S = VF_RNN_STATE_WORDS, T = VF_RNN_ACT_WORDS;
    /* RNN_LOAD / RNN_SAVE: element units of the buffer */
    expect_single_fault("load wbuf", mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_WGT, 0, W - 2 * TB, TB, 3), VF_FAULT_BUFFER, W);
    /* WBUF is written a whole tile word at a time */
    expect_single_fault("load wbuf off a tile", mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_WGT, 0, TB / 2, TB, 1),
                        VF_FAULT_FIELD, offsetof(vf_insn_rnn_mem_t, buf_addr));
    expect_single_fault("load wbuf part of a tile", mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_WGT, 0, TB, TB / 2, 1),
                        VF_FAULT_FIELD, offsetof(vf_insn_rnn_mem_t, row_bytes));
    expect_single_fault("load vbuf", mk_load(VF_RNN_BUF_VEC, 0, V + 5, 1), VF_FAULT_BUFFER, V + 5);
    expect_single_fault("load acc", mk_load(VF_RNN_BUF_ACC, 0, A - 1, 8), VF_FAULT_BUFFER, A);
    expect_single_fault("load param", mk_load(VF_RNN_BUF_PARAM, 0, PARAM_WORDS - 2, 12), VF_FAULT_BUFFER,
                        PARAM_WORDS);
    expect_single_fault("load state", mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_STATE, 0, S - 4, 8, 1, 3), VF_FAULT_BUFFER, S);
    expect_single_fault("load act", mk_load(VF_RNN_BUF_ACT, 0, 0xffffffffu, 4), VF_FAULT_BUFFER, 0xffffffffu);
    expect_single_fault("load huge", mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_WGT, 0, 0, TB * (0xffffffffu / TB), 0xffff,
                                            0xffff), VF_FAULT_BUFFER, W);
    expect_single_fault("save vbuf", mk_save(VF_RNN_BUF_VEC, 0, V - 3, 4), VF_FAULT_BUFFER, V);
    expect_single_fault("save state", mk_save(VF_RNN_BUF_STATE, 0, S, 4), VF_FAULT_BUFFER, S);
    /* RNN_MATVEC */
    expect_single_fault("mv wgt", mk_mv(W - TB, 1, 0, 0, 0, 2, TC + 1, false), VF_FAULT_BUFFER, W);
    expect_single_fault("mv wgt stride", mk_mv(0, 0x80000000u, 0, 0, 0, TR + 1, 4, false), VF_FAULT_BUFFER, W);
    expect_single_fault("mv vec", mk_mv(0, 8, V - 7, 0, 0, 2, 8, false), VF_FAULT_BUFFER, V);
    expect_single_fault("mv acc", mk_mv(0, 8, 0, A - 1, 0, 2, 8, false), VF_FAULT_BUFFER, A);
    expect_single_fault("mv param", mk_mv(0, 8, 0, 0, P - 1, 2, 8, true), VF_FAULT_BUFFER, P);
    expect_single_fault("mv rows", mk_mv(0, 1, 0, 0, 0, 0xffffffffu, 1, false), VF_FAULT_BUFFER, W);
    expect_single_fault("mv wgt past a word", mk_mv(W - TB, 1, 0, 0, 0, TR + 1, 1, false), VF_FAULT_BUFFER, W);
    /* RNN_GATES: each range; GRU_RH ranges start at gate 1 */
    GatesArgs a = good_gates(VF_RNN_CELL_LSTM);
    a.acc_x = A - 30;
    expect_single_fault("gates acc_x", mk_gates(a), VF_FAULT_BUFFER, A);
    a = good_gates(VF_RNN_CELL_GRU_LBR);
    a.acc_h = A - 20;
    expect_single_fault("gates acc_h", mk_gates(a), VF_FAULT_BUFFER, A);
    a = good_gates(VF_RNN_CELL_GRU_RH);
    a.acc_h = A - 10;
    expect_single_fault("gates rh acc_h", mk_gates(a), VF_FAULT_BUFFER, A);
    a.acc_h = A - 16; /* gate 1 = [A - 8, A): fine */
    {
        Env e(1 << 14);
        g_ctx = "gates rh in range";
        e.core().sane_shifts();
        e.prog() = {mk_gates(a), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
    }
    a = good_gates(VF_RNN_CELL_GRU_RH);
    a.acc_x = 0xfffffff0u;
    expect_single_fault("gates rh acc_x", mk_gates(a), VF_FAULT_BUFFER, 0xfffffff8ull);
    a = good_gates(VF_RNN_CELL_LSTM);
    a.param_x = P - 8;
    expect_single_fault("gates param_x", mk_gates(a), VF_FAULT_BUFFER, P);
    a = good_gates(VF_RNN_CELL_GRU);
    a.param_h = P;
    expect_single_fault("gates param_h", mk_gates(a), VF_FAULT_BUFFER, P);
    a = good_gates(VF_RNN_CELL_LSTM);
    a.state_c = S - 4;
    expect_single_fault("gates state_c", mk_gates(a), VF_FAULT_BUFFER, S);
    a = good_gates(VF_RNN_CELL_GRU);
    a.state_h = S - 1;
    a.state_c = 0xffffffffu; /* not read by GRU */
    expect_single_fault("gates state_h", mk_gates(a), VF_FAULT_BUFFER, S);
    a = good_gates(VF_RNN_CELL_GRU_LBR);
    a.out = V - 2;
    expect_single_fault("gates out", mk_gates(a), VF_FAULT_BUFFER, V);
    a = good_gates(VF_RNN_CELL_LSTM);
    a.sig = (uint16_t)(T - TW + 1);
    expect_single_fault("gates sig", mk_gates(a), VF_FAULT_BUFFER, T);
    a = good_gates(VF_RNN_CELL_GRU);
    a.tanh_t = 0xffff;
    expect_single_fault("gates tanh", mk_gates(a), VF_FAULT_BUFFER, std::max<uint64_t>(0xffff, T));
}

/* Every range check is exact: a range that ends at the end of its buffer
 * runs, one element more faults. */
static void test_buffer_bounds()
{
    const uint32_t W = VF_RNN_WBUF_BYTES, V = VF_RNN_VBUF_BYTES, A = VF_RNN_ACC_WORDS, P = VF_RNN_PARAM_ENTRIES;
    const uint32_t S = VF_RNN_STATE_WORDS, T = VF_RNN_ACT_WORDS;
    struct Case {
        const char *name;
        vf_rnn_insn_t fits, over;
        uint64_t addr;
    };
    std::vector<Case> cs;
    cs.push_back({"load wbuf", mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_WGT, 0, W - 3 * TB, TB, 3),
                  mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_WGT, 0, W - 2 * TB, TB, 3), W});
    cs.push_back({"load param", mk_load(VF_RNN_BUF_PARAM, 0, PARAM_WORDS - 3, 12),
                  mk_load(VF_RNN_BUF_PARAM, 0, PARAM_WORDS - 2, 12), PARAM_WORDS});
    cs.push_back({"load act", mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_ACT, 0, T - 6, 4, 3, 2),
                  mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_ACT, 0, T - 5, 4, 3, 2), T});
    cs.push_back({"save state", mk_save(VF_RNN_BUF_STATE, 0, S - 2, 8), mk_save(VF_RNN_BUF_STATE, 0, S - 1, 8), S});
    cs.push_back({"save vbuf", mk_save(VF_RNN_BUF_VEC, 0, V - 8, 8), mk_save(VF_RNN_BUF_VEC, 0, V - 7, 8), V});
    /* three row blocks of two tiles, 3 words apart: ends at wgt + 8 tiles */
    cs.push_back({"mv wgt", mk_mv(W - 8 * TB, 3, 0, 0, 0, 2 * TR + 1, TC + 1, false),
                  mk_mv(W - 7 * TB, 3, 0, 0, 0, 2 * TR + 1, TC + 1, false), W});
    cs.push_back({"mv vec", mk_mv(0, 8, V - 8, 0, 0, 2, 8, false), mk_mv(0, 8, V - 7, 0, 0, 2, 8, false), V});
    cs.push_back({"mv acc", mk_mv(0, 8, 0, A - 2, 0, 2, 8, false), mk_mv(0, 8, 0, A - 1, 0, 2, 8, false), A});
    cs.push_back({"mv param", mk_mv(0, 8, 0, 0, P - 2, 2, 8, true), mk_mv(0, 8, 0, 0, P - 1, 2, 8, true), P});
    for (uint8_t cell = 0; cell < VF_RNN_CELL_COUNT; ++cell) {
        const uint32_t span = cell == VF_RNN_CELL_LSTM ? 32 : cell == VF_RNN_CELL_GRU_RH ? 16 : 24;
        GatesArgs a = good_gates(cell), b = good_gates(cell);
        a.acc_x = A - span;
        b.acc_x = A - span + 1;
        cs.push_back({"gates acc_x", mk_gates(a), mk_gates(b), A});
        a = b = good_gates(cell);
        a.acc_h = A - span;
        b.acc_h = A - span + 1;
        cs.push_back({"gates acc_h", mk_gates(a), mk_gates(b), A});
        a = b = good_gates(cell);
        a.param_x = P - span;
        b.param_x = P - span + 1;
        cs.push_back({"gates param_x", mk_gates(a), mk_gates(b), P});
        a = b = good_gates(cell);
        a.param_h = P - span;
        b.param_h = P - span + 1;
        cs.push_back({"gates param_h", mk_gates(a), mk_gates(b), P});
        a = b = good_gates(cell);
        a.state_h = S - 8;
        b.state_h = S - 7;
        cs.push_back({"gates state_h", mk_gates(a), mk_gates(b), S});
        a = b = good_gates(cell);
        a.out = V - 8;
        b.out = V - 7;
        cs.push_back({"gates out", mk_gates(a), mk_gates(b), V});
        a = b = good_gates(cell);
        a.sig = (uint16_t)(T - TW);
        b.sig = (uint16_t)(T - TW + 1);
        cs.push_back({"gates sig", mk_gates(a), mk_gates(b), T});
        if (cell != VF_RNN_CELL_GRU_RH) {
            a = b = good_gates(cell);
            a.tanh_t = (uint16_t)(T - TW);
            b.tanh_t = (uint16_t)(T - TW + 1);
            cs.push_back({"gates tanh", mk_gates(a), mk_gates(b), T});
        }
        if (cell == VF_RNN_CELL_LSTM) {
            a = b = good_gates(cell);
            a.state_c = S - 8;
            b.state_c = S - 7;
            cs.push_back({"gates state_c", mk_gates(a), mk_gates(b), S});
        }
    }
    for (const Case &c : cs) {
        Env e(1 << 14);
        g_ctx = std::string(c.name) + " at the end";
        e.core().sane_shifts();
        e.prog() = {c.fits, mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
        expect_single_fault((std::string(c.name) + " one over").c_str(), c.over, VF_FAULT_BUFFER, c.addr);
        if (g_checks_failed)
            return;
    }
}

static void test_fault_opcode()
{
    static const uint8_t bad[] = {1, 2, 3, 4, 5, 6, 10, 11, 15, VF_RNN_OP_LIMIT, 100, 255};
    for (uint8_t op : bad) {
        Env e(1 << 14);
        g_ctx = "opcode " + std::to_string(op);
        /* decode faults before anything of the step runs */
        e.prog() = {mk_marker(VF_OP_FRAME), mk_load(VF_RNN_BUF_VEC, 0, 0, 64), blank(op), mk_marker(VF_OP_END)};
        e.place_program();
        e.snapshot();
        CHECK_EQ(e.run(), VF_RNN_STEP_FAULT);
        CHECK_EQ(e.core().st.fault, VF_FAULT_OPCODE);
        CHECK_EQ(e.core().st.fault_insn, 2);
        CHECK_EQ(e.core().st.fault_opcode, op);
        CHECK_EQ(e.core().st.fault_addr, op);
        CHECK(e.same_as_model()); /* the load of the same step did not run */
        CHECK(e.guards_intact());
    }
}

static void test_fault_field()
{
    const uint32_t F = offsetof(vf_insn_head_t, flags), D = offsetof(vf_insn_head_t, deps);
#define OFF(t, m) ((uint64_t)offsetof(t, m))
    vf_rnn_insn_t i;
    i = mk_load(VF_RNN_BUF_VEC, 0, 0, 8);
    i.head.flags = 1;
    expect_single_fault("load flags", i, VF_FAULT_FIELD, F);
    expect_single_fault("load deps", mk_load(VF_RNN_BUF_VEC, 0, 0, 8, VF_DEP_POP_PREV), VF_FAULT_FIELD, D);
    expect_single_fault("save deps", mk_save(VF_RNN_BUF_VEC, 0, 0, 8, VF_DEP_PUSH_NEXT), VF_FAULT_FIELD, D);
    expect_single_fault("load buffer", mk_load(VF_RNN_BUF_COUNT, 0, 0, 8), VF_FAULT_FIELD, OFF(vf_insn_rnn_mem_t, buffer));
    expect_single_fault("save wbuf", mk_save(VF_RNN_BUF_WGT, 0, 0, 8), VF_FAULT_FIELD, OFF(vf_insn_rnn_mem_t, buffer));
    expect_single_fault("save param", mk_save(VF_RNN_BUF_PARAM, 0, 0, 8), VF_FAULT_FIELD, OFF(vf_insn_rnn_mem_t, buffer));
    expect_single_fault("save act", mk_save(VF_RNN_BUF_ACT, 0, 0, 8), VF_FAULT_FIELD, OFF(vf_insn_rnn_mem_t, buffer));
    expect_single_fault("load row_bytes 0", mk_load(VF_RNN_BUF_VEC, 0, 0, 0), VF_FAULT_FIELD,
                        OFF(vf_insn_rnn_mem_t, row_bytes));
    expect_single_fault("load rows 0", mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_VEC, 0, 0, 8, 0), VF_FAULT_FIELD,
                        OFF(vf_insn_rnn_mem_t, rows));
    expect_single_fault("load planes 0", mk_mem(VF_RNN_OP_LOAD, VF_RNN_BUF_VEC, 0, 0, 8, 1, 0), VF_FAULT_FIELD,
                        OFF(vf_insn_rnn_mem_t, planes));
    expect_single_fault("load words unaligned", mk_load(VF_RNN_BUF_STATE, 0, 0, 6), VF_FAULT_FIELD,
                        OFF(vf_insn_rnn_mem_t, row_bytes));
    expect_single_fault("save rows overlap", mk_mem(VF_RNN_OP_SAVE, VF_RNN_BUF_VEC, 0, 0, 8, 2, 1, 7, 0),
                        VF_FAULT_FIELD, OFF(vf_insn_rnn_mem_t, row_stride));
    expect_single_fault("save planes overlap", mk_mem(VF_RNN_OP_SAVE, VF_RNN_BUF_VEC, 0, 0, 8, 2, 2, 8, 15),
                        VF_FAULT_FIELD, OFF(vf_insn_rnn_mem_t, plane_stride));
    /* RNN_MATVEC */
    i = mk_mv(0, 8, 0, 0, 0, 2, 8, true);
    i.head.flags = 2;
    expect_single_fault("mv flags", i, VF_FAULT_FIELD, F);
    expect_single_fault("mv rows 0", mk_mv(0, 8, 0, 0, 0, 0, 8, false), VF_FAULT_FIELD, OFF(vf_insn_rnn_matvec_t, rows));
    expect_single_fault("mv cols 0", mk_mv(0, 8, 0, 0, 0, 2, 0, false), VF_FAULT_FIELD, OFF(vf_insn_rnn_matvec_t, cols));
    /* row blocks overlap: stride below the column blocks of a row block */
    expect_single_fault("mv stride", mk_mv(0, 1, 0, 0, 0, TR + 1, TC + 1, false), VF_FAULT_FIELD,
                        OFF(vf_insn_rnn_matvec_t, wgt_stride));
    /* one row block: the stride is not read */
    expect_clean_single("mv stride one block", mk_mv(0, 0, 0, 0, 0, TR, TC + 1, false));
    /* a tile's bytes sit at fixed offsets of a word: wgt_addr on a tile */
    expect_single_fault("mv wgt unaligned", mk_mv(1, 1, 0, 0, 0, 2, 8, false), VF_FAULT_FIELD,
                        OFF(vf_insn_rnn_matvec_t, wgt_addr));
    expect_single_fault("mv wgt unaligned before stride", mk_mv(TB / 2 + 1, 0, 0, 0, 0, TR + 1, TC + 1, false),
                        VF_FAULT_FIELD, OFF(vf_insn_rnn_matvec_t, wgt_addr));
    /* RNN_GATES */
    i = mk_gates(good_gates(VF_RNN_CELL_LSTM));
    i.head.flags = 1;
    expect_single_fault("gates flags", i, VF_FAULT_FIELD, F);
    GatesArgs a = good_gates(VF_RNN_CELL_COUNT);
    expect_single_fault("gates cell", mk_gates(a), VF_FAULT_FIELD, OFF(vf_insn_rnn_gates_t, cell));
    a = good_gates(VF_RNN_CELL_GRU);
    a.n = 0;
    expect_single_fault("gates n 0", mk_gates(a), VF_FAULT_FIELD, OFF(vf_insn_rnn_gates_t, n));
    a = good_gates(VF_RNN_CELL_GRU);
    a.gs = 7;
    expect_single_fault("gates gate_stride", mk_gates(a), VF_FAULT_FIELD, OFF(vf_insn_rnn_gates_t, gate_stride));
    a = good_gates(VF_RNN_CELL_GRU_RH);
    a.shift = 63;
    expect_single_fault("gates out_shift", mk_gates(a), VF_FAULT_FIELD, OFF(vf_insn_rnn_gates_t, out_shift));
    a = good_gates(VF_RNN_CELL_LSTM);
    a.state_c = a.state_h + 7;
    expect_single_fault("gates c/h overlap", mk_gates(a), VF_FAULT_FIELD, OFF(vf_insn_rnn_gates_t, state_c));
    a.state_c = a.state_h + 8; /* adjacent is fine */
    {
        Env e(1 << 14);
        g_ctx = "gates adjacent state";
        e.core().sane_shifts();
        e.prog() = {mk_gates(a), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
    }
    /* PARAM shifts outside [0, 62] among the entries read (after the buffer checks) */
    for (int part = 0; part < 2; ++part)
        for (uint8_t cell = 0; cell < VF_RNN_CELL_COUNT; ++cell) {
            Env e(1 << 14);
            g_ctx = "gates param shift part " + std::to_string(part) + " cell " + std::to_string(cell);
            Core &k = e.core();
            k.sane_shifts();
            const GatesArgs b = good_gates(cell);
            const uint32_t base = part ? b.param_h : b.param_x;
            const uint32_t gate = cell == VF_RNN_CELL_GRU_RH ? 1 : cell == VF_RNN_CELL_LSTM ? 3 : 2;
            k.param[(base + gate * b.gs + 7) * 3 + 2] = rnd(2) ? 63 : -1;
            if (cell == VF_RNN_CELL_GRU_RH) /* entries of gates 0 and 2 are not read */
                k.param[(base + 0 * b.gs + 1) * 3 + 2] = k.param[(base + 2 * b.gs + 1) * 3 + 2] = 99;
            e.prog() = {mk_marker(VF_OP_FRAME), mk_load(VF_RNN_BUF_VEC, 0, 0, 64), mk_marker(VF_OP_BARRIER),
                        mk_gates(b), mk_marker(VF_OP_END)};
            e.place_program();
            e.expect_fault(VF_FAULT_FIELD, 3, VF_RNN_OP_GATES,
                           part ? OFF(vf_insn_rnn_gates_t, param_h) : OFF(vf_insn_rnn_gates_t, param_x));
        }
    { /* GRU_RH does not read gates 0 and 2 */
        Env e(1 << 14);
        g_ctx = "gates rh unread shifts";
        e.core().sane_shifts();
        const GatesArgs b = good_gates(VF_RNN_CELL_GRU_RH);
        e.core().param[(b.param_x + 1) * 3 + 2] = 99;
        e.core().param[(b.param_h + 2 * b.gs) * 3 + 2] = -5;
        e.prog() = {mk_gates(b), mk_marker(VF_OP_END)};
        e.place_program();
        e.expect_clean_run();
    }
#undef OFF
}

static void test_fault_fetch()
{
    Env e(1 << 12);
    g_ctx = "fetch";
    e.prog() = {mk_marker(VF_OP_FRAME), mk_load(VF_RNN_BUF_VEC, 0, 0, 8), mk_marker(VF_OP_FRAME),
                mk_load(VF_RNN_BUF_VEC, 8, 8, 8), mk_marker(VF_OP_END)};
    /* the program's second frame lies past the segment end */
    const uint32_t off = e.limit - 3 * VF_INSN_BYTES;
    memcpy(e.seg() + off, e.prog().data(), 3 * VF_INSN_BYTES);
    e.core().iters.assign(5, 0);
    e.snapshot();
    CHECK_EQ(vf_rnn_core_step(e.seg(), e.limit, off, 5, &e.core().bufs, &e.core().st, &e.core().cnt,
                              e.core().iters.data()),
             VF_RNN_STEP_FRAME);
    CHECK_EQ(vf_rnn_core_step(e.seg(), e.limit, off, 5, &e.core().bufs, &e.core().st, &e.core().cnt,
                              e.core().iters.data()),
             VF_RNN_STEP_FAULT);
    CHECK_EQ(e.core().st.fault, VF_FAULT_FETCH);
    CHECK_EQ(e.core().st.fault_insn, 3);
    CHECK_EQ(e.core().st.fault_addr, e.limit);
    CHECK_EQ(e.core().st.fault_opcode, 0xffffffffu);
    e.model_run(2);
    CHECK(e.same_as_model());
    CHECK(e.guards_intact());
    /* an offset near 2^32 does not wrap */
    vf_rnn_state_t st;
    memset(&st, 0, sizeof st);
    CHECK_EQ(vf_rnn_core_step(e.seg(), e.limit, 0xffffffc0u, 2, &e.core().bufs, &st, NULL, NULL), VF_RNN_STEP_FAULT);
    CHECK_EQ(st.fault, VF_FAULT_FETCH);
    CHECK_EQ(st.fault_addr, 0xffffffc0u);
}

/* Fuzzed instruction streams: never touch memory outside the segment or the
 * buffers (guards + ASan + UBSan), never hang, a fault is sticky. */
static uint8_t fz_deps(uint8_t opcode)
{
    if (edge())
        return (uint8_t)rnd64();
    if (rnd(4))
        return 0;
    const uint8_t load = VF_DEP_POP_NEXT | VF_DEP_PUSH_NEXT, save = VF_DEP_POP_PREV | VF_DEP_PUSH_PREV;
    const uint8_t allowed = opcode == VF_RNN_OP_LOAD ? load : opcode == VF_RNN_OP_SAVE ? save : (uint8_t)(load | save);
    return (uint8_t)(rnd64() & allowed);
}

static void test_fuzz()
{
    static const uint8_t ops[] = {VF_RNN_OP_LOAD,  VF_RNN_OP_LOAD, VF_RNN_OP_LOAD,  VF_RNN_OP_MATVEC, VF_RNN_OP_MATVEC,
                                  VF_RNN_OP_GATES, VF_RNN_OP_GATES, VF_RNN_OP_SAVE, VF_RNN_OP_SAVE,   VF_OP_NOP,
                                  VF_OP_FRAME,     VF_OP_BARRIER};
    const int programs = 1500;
    TbFuzzTally f;
    memset(&f, 0, sizeof f);
    Env e(1 << 14); /* the core's buffers carry over between programs, like the board's */
    const std::vector<int32_t> sig = make_table(false), tnh = make_table(true);
    for (int t = 0; t < programs; ++t) {
        static const uint32_t levels[] = {6, 24, 100, 1000};
        g_edge = levels[t % 4];
        Core &k = e.core();
        k.reset();
        e.bump = 0;
        TB_UNPOISON(e.mem.data(), e.mem.size());
        fill_random(e.seg(), e.limit);
        tb_poison_guards(e.mem, e.limit);
        if (rnd(4))
            k.sane_shifts();
        if (t % 50 == 0) {
            memcpy(&k.act[0], sig.data(), TW * 4);
            if (VF_RNN_ACT_WORDS >= 2 * TW)
                memcpy(&k.act[TW], tnh.data(), TW * 4);
            k.sync_act();
        }
        const uint32_t n = 1 + rnd(24);
        k.prog.resize(n);
        for (uint32_t i = 0; i < n; ++i) {
            vf_rnn_insn_t &x = k.prog[i];
            fill_random(x.raw, sizeof x.raw);
            if (rnd(4 * g_edge) == 0)
                continue; /* all 64 bytes random */
            x.head.opcode = rnd(4 * g_edge) == 0 ? (uint8_t)rnd(256) : ops[rnd(sizeof ops)];
            if (rnd(60) == 0)
                x.head.opcode = VF_OP_END;
            x.head.deps = fz_deps(x.head.opcode);
            x.head.flags = (uint16_t)(!edge() ? 0 : rnd64());
            switch (x.head.opcode) {
            case VF_RNN_OP_LOAD:
            case VF_RNN_OP_SAVE:
                x.rnn_mem.dram_addr = !edge() ? rnd(e.limit) : (uint32_t)rnd64();
                x.rnn_mem.buffer = (uint8_t)(!edge() ? rnd(VF_RNN_BUF_COUNT) : rnd64());
                if (x.head.opcode == VF_RNN_OP_SAVE && !edge()) {
                    static const uint8_t savable[] = {VF_RNN_BUF_VEC, VF_RNN_BUF_ACC, VF_RNN_BUF_STATE};
                    x.rnn_mem.buffer = savable[rnd(3)];
                }
                x.rnn_mem.buf_addr = !edge() ? rnd(2048) : (uint32_t)rnd64();
                x.rnn_mem.row_bytes = !edge() ? 4 * (1 + rnd(64)) : fz(1, 300);
                x.rnn_mem.rows = (uint16_t)fz(1, 6);
                x.rnn_mem.planes = (uint16_t)fz(1, 4);
                x.rnn_mem.row_stride = !edge() ? x.rnn_mem.row_bytes + rnd(16) : (uint32_t)rnd64();
                x.rnn_mem.plane_stride = !edge() ? x.rnn_mem.rows * x.rnn_mem.row_stride + rnd(16) : fz(0, 1 << 13);
                break;
            case VF_RNN_OP_MATVEC:
                x.head.flags = (uint16_t)(!edge() ? rnd(2) : rnd64());
                x.matvec.rows = fz(1, 80);
                x.matvec.cols = fz(1, 200);
                x.matvec.wgt_stride = !edge() ? (uint32_t)cdiv(x.matvec.cols, TC) + rnd(3) : (uint32_t)rnd64();
                x.matvec.wgt_addr = !edge() ? TB * rnd((1 << 14) / TB) : (uint32_t)rnd64();
                x.matvec.vec_addr = !edge() ? rnd(2048) : (uint32_t)rnd64();
                x.matvec.acc_addr = !edge() ? rnd(1024) : (uint32_t)rnd64();
                x.matvec.param_addr = !edge() ? rnd(1024) : (uint32_t)rnd64();
                break;
            case VF_RNN_OP_GATES:
                x.gates.cell = (uint8_t)(!edge() ? rnd(VF_RNN_CELL_COUNT) : rnd64());
                x.gates.n = fz(1, 64);
                x.gates.gate_stride = !edge() ? x.gates.n + rnd(4) : (uint32_t)rnd64();
                x.gates.acc_x = !edge() ? rnd(1024) : (uint32_t)rnd64();
                x.gates.acc_h = !edge() ? rnd(1024) : (uint32_t)rnd64();
                x.gates.param_x = !edge() ? rnd(1024) : (uint32_t)rnd64();
                x.gates.param_h = !edge() ? rnd(1024) : (uint32_t)rnd64();
                x.gates.state_c = !edge() ? rnd(512) : (uint32_t)rnd64();
                x.gates.state_h = !edge() ? 512 + rnd(256) : (uint32_t)rnd64();
                x.gates.out_addr = !edge() ? rnd(2048) : (uint32_t)rnd64();
                x.gates.sig_addr = (uint16_t)(!edge() ? 0 : rnd64());
                x.gates.tanh_addr = (uint16_t)(!edge() ? TW : rnd64());
                x.gates.out_shift = (uint8_t)(!edge() ? rnd(63) : rnd64());
                break;
            default:
                break;
            }
        }
        e.place_program();
        tb_fuzz_run(f, e, k.prog, k.insn_offset, VF_RNN_OP_LIMIT, k.st, k.cnt,
                    [&e, &k](uint32_t offset, uint32_t count, uint32_t *it) {
                        return vf_rnn_core_step(e.seg(), e.limit, offset, count, &k.bufs, &k.st, &k.cnt, it);
                    },
                    t);
        if (g_checks_failed)
            return;
    }
    static const char *const names[] = {"load", "matvec", "gates", "save"};
    static const uint8_t units[] = {VF_RNN_OP_LOAD, VF_RNN_OP_MATVEC, VF_RNN_OP_GATES, VF_RNN_OP_SAVE};
    tb_fuzz_report(f, programs, names, units, sizeof units);
    for (int op = VF_RNN_OP_FIRST; op < VF_RNN_OP_LIMIT; ++op)
        CHECK(f.executed[op] > 0);
}

/* The HLS top runs a whole program and reports through its registers. */
static void test_top()
{
    {
        uint32_t H = 16, I = 12;
        fit_layer(VF_RNN_CELL_LSTM, H, I, 1);
        LayerCase c;
        random_case(c, VF_RNN_CELL_LSTM, H, I, 3);
        Env e(1u << 20);
        g_ctx = "top lstm";
        const LayerDdr d = place_layer(e, c.L, c.xs, c.T, c.h0, c.c0);
        const LayerOpts o = {false, false, false};
        layer_program(e, e.prog(), c.L, d, c.T, 0, H, o);
        e.place_program();
        const TbTopRun regs =
            tb_run_top(vf_rnn_core_top, e.seg(), e.limit, e.core().insn_offset, (uint32_t)e.prog().size());
        CHECK_EQ(regs.fault, VF_FAULT_NONE);
        CHECK_EQ(regs.insns, e.prog().size());
        uint64_t el = 0, ec = 0, es = 0;
        for (const vf_rnn_insn_t &p : e.prog()) {
            const uint32_t u = p.head.opcode;
            (u == VF_RNN_OP_LOAD ? el : u == VF_RNN_OP_SAVE ? es : ec) += expect_iters(p);
        }
        CHECK_EQ(regs.load_iters, el);
        CHECK_EQ(regs.compute_iters, ec);
        CHECK_EQ(regs.save_iters, es);
        std::vector<int8_t> ry;
        std::vector<int32_t> rh = c.h0, rc = c.c0;
        ref_layer(c.L, c.xs, c.T, ry, rh, rc);
        CHECK(memcmp(e.seg() + d.Y, ry.data(), ry.size()) == 0);
        CHECK(e.guards_intact());
    }
    {
        Env e(1 << 14);
        g_ctx = "top fault";
        e.prog() = {mk_marker(VF_OP_FRAME), mk_load(VF_RNN_BUF_VEC, 0, 0, 64), mk_marker(VF_OP_FRAME),
                    mk_save(VF_RNN_BUF_VEC, e.limit - 8, 0, 16), mk_marker(VF_OP_END)};
        e.place_program();
        e.snapshot();
        const TbTopRun regs =
            tb_run_top(vf_rnn_core_top, e.seg(), e.limit, e.core().insn_offset, (uint32_t)e.prog().size());
        tb_check_top_fault(regs, e.limit, expect_iters(e.prog()[1]));
        CHECK(memcmp(e.seg(), e.model.seg.data(), e.limit) == 0);
        CHECK(e.guards_intact());
    }
}

int main()
{
    printf("tb_rnn_core: ROWS %d COLS %d LANES %d AXI %d WBUF %d VBUF %d ACC %d PARAM %d STATE %d ACT %d "
           "(table %d x 2^%d)%s\n",
           VF_RNN_ROWS, VF_RNN_COLS, VF_RNN_LANES, VF_AXI_BYTES, VF_RNN_WBUF_BYTES, VF_RNN_VBUF_BYTES,
           VF_RNN_ACC_WORDS, VF_RNN_PARAM_ENTRIES, VF_RNN_STATE_WORDS, VF_RNN_ACT_WORDS, VF_RNN_ACT_SEGMENTS,
           VF_RNN_ACT_STEP_LOG2, TB_BODIES);
    run_test("geometry", test_geometry);
    run_test("activation", test_activation);
    run_test("load_save", test_load_save);
    run_test("matvec", test_matvec);
    run_test("gates", test_gates);
    run_test("layer_sequences", test_layer_sequences);
    run_test("hidden_slices", test_hidden_slices);
    run_test("tokens", test_tokens);
    run_test("step_rule", test_step_rule);
    run_test("fault_segment", test_fault_segment);
    run_test("fault_buffer", test_fault_buffer);
    run_test("buffer_bounds", test_buffer_bounds);
    run_test("fault_opcode", test_fault_opcode);
    run_test("fault_field", test_fault_field);
    run_test("fault_fetch", test_fault_fetch);
    run_test("fuzz", test_fuzz);
    run_test("top", test_top);
    return tb_summary("tb_rnn_core");
}
