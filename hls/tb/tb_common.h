/*
 * What the C-simulation testbenches share: CHECK macros, the test runner that
 * prints PASS/FAIL and the summary, a fixed-seed xorshift64* generator (the
 * same streams on every host; define TB_SEED before including to pick one),
 * guarded memories, instruction heads, and the core testbenches' fixture: a
 * guarded tenant segment, the comparison with their reference models, the
 * clean-run and fault expectations, the fuzz run and tally, the stand-alone
 * top's registers.
 */
#ifndef VFPGA_TB_COMMON_H
#define VFPGA_TB_COMMON_H

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "vfpga_isa.h"
#include "vfpga_core.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define TB_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define TB_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#define TB_SANITIZED 1
#else
#define TB_POISON(p, n) ((void)(p), (void)(n))
#define TB_UNPOISON(p, n) ((void)(p), (void)(n))
#define TB_SANITIZED 0
#endif

/* ========================================================================== */
/* Test bookkeeping                                                            */
/* ========================================================================== */

static int g_checks_failed; /* failures inside the running test */
static int g_passed, g_failed;
static std::string g_ctx; /* trial description for failure messages */

#define CHECK(cond)                                                                                          \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            if (g_checks_failed < 12)                                                                        \
                printf("    CHECK failed at line %d: %s%s%s\n", __LINE__, #cond, g_ctx.empty() ? "" : "  [", \
                       g_ctx.empty() ? "" : (g_ctx + "]").c_str());                                          \
            ++g_checks_failed;                                                                               \
        }                                                                                                    \
    } while (0)

#define CHECK_EQ(a, b)                                                                                       \
    do {                                                                                                     \
        const unsigned long long va_ = (unsigned long long)(a), vb_ = (unsigned long long)(b);               \
        if (va_ != vb_) {                                                                                    \
            if (g_checks_failed < 12)                                                                        \
                printf("    CHECK_EQ failed at line %d: %s == %s (%llu vs %llu)%s%s\n", __LINE__, #a, #b, va_, \
                       vb_, g_ctx.empty() ? "" : "  [", g_ctx.empty() ? "" : (g_ctx + "]").c_str());         \
            ++g_checks_failed;                                                                               \
        }                                                                                                    \
    } while (0)

static inline void run_test(const char *name, void (*fn)())
{
    g_checks_failed = 0;
    g_ctx.clear();
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    g_ctx.clear();
    if (g_checks_failed == 0) {
        ++g_passed;
        printf("  PASS %s (%.2f s)\n", name, s);
    } else {
        ++g_failed;
        printf("  FAIL %s (%d checks, %.2f s)\n", name, g_checks_failed, s);
    }
    fflush(stdout);
}

/* "<bench>: N passed, M failed" (what `make csim` and pytest read); the exit
 * status. */
static inline int tb_summary(const char *bench)
{
    printf("%s: %d passed, %d failed\n", bench, g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}

/* The C-sim bodies of the cores in this build, for the banner line. */
#ifdef VF_HLS_LITERAL
#define TB_BODIES " (HLS loop nests)"
#else
#define TB_BODIES " (vectorised C-sim bodies)"
#endif

/* ========================================================================== */
/* Random streams                                                              */
/* ========================================================================== */

#ifndef TB_SEED
#define TB_SEED 0x9e3779b97f4a7c15ull
#endif
static uint64_t g_rng = TB_SEED;
static inline uint64_t rnd64()
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545f4914f6cdd1dull;
}
static inline uint32_t rnd(uint32_t n) { return n ? (uint32_t)(rnd64() % n) : 0; } /* [0, n) */
static inline int64_t rrange(int64_t lo, int64_t hi) { return lo + (int64_t)(rnd64() % (uint64_t)(hi - lo + 1)); }
static inline int8_t rnd_i8() { return (int8_t)(uint8_t)rnd64(); }

/* CONV weights are beat-major words (the CONV comment of vfpga_isa.h, written
 * out again here from its text): the offset of W(oc, ky, kx, i) from wgt_addr,
 * the bytes a CONV reads, and w[oc][ky][kx][cin_g] packed that way, with
 * random padding (which the core must never use) or zeros (the compiler's,
 * without drawing from the tb's random sequence). */
static inline size_t tb_conv_wgt_offset(size_t cin_g, size_t cout_g, size_t kh, size_t kw, size_t oc, size_t ky,
                                        size_t kx, size_t i)
{
    if (cin_g == 1)
        return (size_t)VF_OCP * (((oc / VF_OCP) * kh + ky) * kw + kx) + oc % VF_OCP;
    const size_t g = oc / cout_g, o = oc % cout_g;
    const size_t nob = (cout_g + VF_OCP - 1) / VF_OCP, nib = (cin_g + VF_ICP - 1) / VF_ICP;
    return (size_t)VF_CONV_WORD * ((((g * nob + o / VF_OCP) * kh + ky) * kw + kx) * nib + i / VF_ICP) +
           (o % VF_OCP) * VF_ICP + i % VF_ICP;
}

static inline size_t tb_conv_wgt_bytes(size_t groups, size_t cin_g, size_t cout_g, size_t kh, size_t kw)
{
    if (cin_g == 1)
        return (groups * cout_g + VF_OCP - 1) / VF_OCP * VF_OCP * kh * kw;
    return groups * ((cout_g + VF_OCP - 1) / VF_OCP) * kh * kw * ((cin_g + VF_ICP - 1) / VF_ICP) * VF_CONV_WORD;
}

static inline std::vector<int8_t> tb_pack_conv_wgt(size_t groups, size_t cin_g, size_t cout_g, size_t kh, size_t kw,
                                                   const std::vector<int8_t> &w, bool random_pad = true)
{
    std::vector<int8_t> out(tb_conv_wgt_bytes(groups, cin_g, cout_g, kh, kw), 0);
    if (random_pad)
        for (auto &b : out)
            b = rnd_i8();
    for (size_t oc = 0; oc < groups * cout_g; ++oc)
        for (size_t ky = 0; ky < kh; ++ky)
            for (size_t kx = 0; kx < kw; ++kx)
                for (size_t i = 0; i < cin_g; ++i)
                    out.at(tb_conv_wgt_offset(cin_g, cout_g, kh, kw, oc, ky, kx, i)) =
                        w.at(((oc * kh + ky) * kw + kx) * cin_g + i);
    return out;
}
static inline uint64_t cdiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

/* Random bytes, one draw per byte. */
static inline void fill_random_bytes(void *p, size_t bytes)
{
    uint8_t *b = (uint8_t *)p;
    for (size_t i = 0; i < bytes; ++i)
        b[i] = (uint8_t)rnd64();
}

/* Random bytes, one draw per 8 bytes (the tail one per byte). */
static inline void fill_random(void *p, size_t bytes)
{
    uint8_t *b = (uint8_t *)p;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        const uint64_t v = rnd64();
        memcpy(b + i, &v, 8);
    }
    fill_random_bytes(b + i, bytes - i);
}

/* Fuzzed field values: an edge value (0, 0xffff, anything) once in g_edge
 * draws, else one in [lo, hi]. */
static uint32_t g_edge = 24;
static inline bool edge() { return rnd(g_edge) == 0; }
static inline uint32_t fz(uint32_t lo, uint32_t hi)
{
    switch (rnd(g_edge)) {
    case 0: return 0;
    case 1: return 0xffff;
    case 2: return (uint32_t)rnd64();
    default: return lo + rnd(hi - lo + 1);
    }
}

/* ========================================================================== */
/* Guarded memories                                                            */
/* ========================================================================== */

/* raw = GUARD | n bytes | GUARD: the guards hold canaries and are poisoned
 * under ASan, so that any access outside the n bytes is caught. */
static const size_t GUARD = 4096;
static const int8_t CANARY = (int8_t)0x5a;

static inline void tb_poison_guards(std::vector<int8_t> &raw, size_t n)
{
    TB_POISON(raw.data(), GUARD);
    TB_POISON(raw.data() + GUARD + n, GUARD);
}

static inline bool tb_guards_intact(std::vector<int8_t> &raw, size_t n)
{
    TB_UNPOISON(raw.data(), GUARD);
    TB_UNPOISON(raw.data() + GUARD + n, GUARD);
    bool ok = true;
    for (size_t i = 0; i < GUARD; ++i)
        ok = ok && raw[i] == CANARY && raw[GUARD + n + i] == CANARY;
    tb_poison_guards(raw, n);
    return ok;
}

/* A bump allocator over a segment's [0, limit). */
struct TbBump {
    uint32_t limit;
    uint32_t bump;

    /* reserve n bytes of segment data (aligned) */
    uint32_t alloc(uint32_t n, uint32_t align = 64)
    {
        bump = (bump + align - 1) / align * align;
        const uint32_t at = bump;
        bump += n;
        if (bump > limit) {
            printf("tb: segment too small (%u > %u)\n", bump, limit);
            abort();
        }
        return at;
    }
};

/* A core testbench's tenant segment: seg_limit random bytes, guarded. */
struct TbSegment : TbBump {
    std::vector<int8_t> mem; /* GUARD | segment | GUARD */

    explicit TbSegment(uint32_t seg_limit) : mem(GUARD + seg_limit + GUARD, CANARY)
    {
        limit = seg_limit;
        bump = 0;
        fill_random(seg(), limit);
        tb_poison_guards(mem, limit);
    }
    ~TbSegment() { TB_UNPOISON(mem.data(), mem.size()); }
    TbSegment(const TbSegment &) = delete;
    TbSegment &operator=(const TbSegment &) = delete;

    int8_t *seg() { return mem.data() + GUARD; }
    bool guards_intact() { return tb_guards_intact(mem, limit); }

    /* n bytes of data, placed at a fresh aligned offset */
    uint32_t put(const void *data, uint32_t n, uint32_t align = 64)
    {
        const uint32_t at = alloc(n, align);
        memcpy(seg() + at, data, n);
        return at;
    }
};

/* ========================================================================== */
/* Instructions                                                                */
/* ========================================================================== */

/* A slot of either instruction union with its head set and every other byte
 * 0; the tag (TB_TAG + opcode) tells which testbench wrote it. */
#ifndef TB_TAG
#define TB_TAG 0x1000u
#endif
template <class Insn>
static inline Insn tb_blank(uint8_t opcode, uint8_t deps, uint16_t flags)
{
    Insn i;
    memset(&i, 0, sizeof i);
    i.head.opcode = opcode;
    i.head.deps = deps;
    i.head.flags = flags;
    i.head.tag = TB_TAG + opcode;
    return i;
}

template <class Insn>
static inline Insn tb_marker(uint8_t opcode, uint32_t frame_id, uint32_t layer)
{
    Insn i = tb_blank<Insn>(opcode, 0, 0);
    i.marker.frame_id = frame_id;
    i.marker.layer = layer;
    return i;
}

/* CNN LOAD_TILE / SAVE: a th x tw tile at (y0, x0) of an h x w view of ch
 * channels, ps bytes per pixel, at dram; buf on chip. */
static inline vf_insn_t tb_mem(uint8_t opcode, uint8_t deps, uint32_t dram, uint32_t buf, uint32_t h, uint32_t w,
                               uint32_t ps, uint32_t ch, int32_t y0, int32_t x0, uint32_t th, uint32_t tw, int8_t pad)
{
    vf_insn_t i = tb_blank<vf_insn_t>(opcode, deps, 0);
    i.mem.dram_addr = dram;
    i.mem.buf_addr = buf;
    i.mem.height = (uint16_t)h;
    i.mem.width = (uint16_t)w;
    i.mem.pixel_stride = (uint16_t)ps;
    i.mem.channels = (uint16_t)ch;
    i.mem.y0 = (int16_t)y0;
    i.mem.x0 = (int16_t)x0;
    i.mem.tile_h = (uint16_t)th;
    i.mem.tile_w = (uint16_t)tw;
    i.mem.pad_value = pad;
    return i;
}

static inline vf_insn_t tb_linear(uint8_t deps, uint32_t dram, uint32_t buf, uint32_t n, uint8_t buffer)
{
    vf_insn_t i = tb_blank<vf_insn_t>(VF_OP_LOAD_LINEAR, deps, 0);
    i.linear.dram_addr = dram;
    i.linear.buf_addr = buf;
    i.linear.nbytes = n;
    i.linear.buffer = buffer;
    return i;
}

/* ========================================================================== */
/* The core testbenches' fixture                                               */
/* ========================================================================== */

/* One memory of a core and its copy in the reference model: n elements of w
 * bytes (1: int8, 4: int32). */
struct TbMemPair {
    const char *name;
    const void *core;
    const void *model;
    size_t n;
    size_t w;
};

/* Every memory equal to the model's (report: where each first differs). */
static inline bool tb_same_memories(const TbMemPair *c, size_t count, bool report)
{
    bool ok = true;
    for (size_t k = 0; k < count; ++k) {
        const TbMemPair &x = c[k];
        if (memcmp(x.core, x.model, x.n * x.w) == 0)
            continue;
        ok = false;
        if (report) {
            size_t i = 0;
            while (memcmp((const char *)x.core + i * x.w, (const char *)x.model + i * x.w, x.w) == 0)
                ++i;
            long long va, vb;
            if (x.w == 1) {
                va = ((const int8_t *)x.core)[i];
                vb = ((const int8_t *)x.model)[i];
            } else {
                va = ((const int32_t *)x.core)[i];
                vb = ((const int32_t *)x.model)[i];
            }
            printf("    %s differs from the model at %zu: core %lld, model %lld [%s]\n", x.name, i, va, vb,
                   g_ctx.c_str());
        }
    }
    return ok;
}

/* A whole run's counters against what the formulas give. */
static inline void tb_check_counters(const vf_core_counters_t &got, const vf_core_counters_t &want)
{
    CHECK_EQ(got.insns, want.insns);
    CHECK_EQ(got.frames, want.frames);
    CHECK_EQ(got.load_iters, want.load_iters);
    CHECK_EQ(got.compute_iters, want.compute_iters);
    CHECK_EQ(got.save_iters, want.save_iters);
    CHECK_EQ(got.load_bytes, want.load_bytes);
    CHECK_EQ(got.save_bytes, want.save_bytes);
    CHECK_EQ(got.macs, want.macs);
}

/* What a core testbench's Env E offers the two expectations below:
 * snapshot() (the model starts from the core's memories), run() (steps until
 * END or a fault), step(), model_run(upto) (the model, program order),
 * same_as_model(report), guards_intact(), check_counts() (iters and counters
 * against the formulas), size() (instructions), state(), counters(). */

/* A valid program: runs to END, equals the model, counts match. */
template <class E>
static void tb_expect_clean_run(E &e)
{
    e.snapshot();
    const uint32_t r = e.run();
    CHECK_EQ(r, VF_STEP_END);
    CHECK_EQ(e.state().fault, VF_FAULT_NONE);
    CHECK_EQ(e.state().running, 0);
    e.model_run(e.size());
    CHECK(e.same_as_model());
    CHECK(e.guards_intact());
    if (e.state().fault == VF_FAULT_NONE)
        e.check_counts();
}

/* A program whose instruction `at` faults: everything before it (in program
 * order) has run, nothing of it has been written; the core stays faulted and
 * touches nothing more. */
template <class E>
static void tb_expect_fault(E &e, uint32_t fault, uint32_t at, uint32_t opcode, uint64_t addr)
{
    e.snapshot();
    const uint32_t r = e.run();
    CHECK_EQ(r, VF_STEP_FAULT);
    CHECK_EQ(e.state().fault, fault);
    CHECK_EQ(e.state().fault_insn, at);
    CHECK_EQ(e.state().fault_opcode, opcode);
    CHECK_EQ(e.state().fault_addr, addr);
    CHECK_EQ(e.state().running, 0);
    CHECK_EQ(e.state().pc, at);
    e.model_run(at);
    CHECK(e.same_as_model());
    CHECK(e.guards_intact());
    const vf_core_counters_t before = e.counters();
    CHECK_EQ(e.step(), VF_STEP_FAULT);
    CHECK_EQ(e.counters().insns, before.insns);
    CHECK(e.same_as_model(false));
}

/* What a fuzz test tallies over its programs. */
struct TbFuzzTally {
    uint64_t faults[8];     /* by VF_FAULT_* code (0: none, or a code out of range) */
    uint64_t clean;         /* programs that ended without a fault */
    uint64_t retired;       /* instructions retired */
    uint64_t executed[256]; /* instructions that ran with work, by opcode */
};

/* One fuzzed program of prog.size() instructions placed at insn_offset,
 * sometimes run longer than it is or from a stray offset: it must end (no
 * hang), touch nothing outside the segment, and a fault must be sticky.
 * step(offset, count, iters) is one step of the core whose state and
 * counters st and cnt are (zeroed by the caller). */
template <class Insn, class Step>
static void tb_fuzz_run(TbFuzzTally &f, TbSegment &e, const std::vector<Insn> &prog, uint32_t insn_offset,
                        uint32_t op_limit, const vf_core_state_t &st, const vf_core_counters_t &cnt, Step step,
                        int t)
{
    const uint32_t n = (uint32_t)prog.size();
    uint32_t count = n;
    if (rnd(25) == 0)
        count = n + 1 + rnd(4);
    const uint32_t offset = rnd(25) == 0 ? e.limit - 64 * rnd(n + 1) + rnd(64) : insn_offset;
    g_ctx = "program " + std::to_string(t);
    std::vector<uint32_t> it(count, 0);
    uint32_t r = VF_STEP_FRAME;
    size_t steps = 0;
    while (r == VF_STEP_FRAME && steps <= count + 1) {
        r = step(offset, count, it.data());
        ++steps;
    }
    CHECK(r != VF_STEP_FRAME);
    CHECK(e.guards_intact());
    CHECK(st.fault < 8);
    f.faults[st.fault < 8 ? st.fault : 0]++;
    if (r == VF_STEP_FAULT) {
        CHECK(st.fault != VF_FAULT_NONE);
        CHECK(st.fault_insn < count);
        CHECK_EQ(step(offset, count, it.data()), VF_STEP_FAULT);
    } else {
        ++f.clean;
        CHECK_EQ(st.fault, VF_FAULT_NONE);
    }
    CHECK(cnt.insns <= count);
    f.retired += cnt.insns;
    if (offset == insn_offset)
        for (uint32_t i = 0; i < n; ++i)
            if (prog[i].head.opcode < op_limit && it[i] != 0)
                f.executed[prog[i].head.opcode]++;
}

/* The tally -- its totals, then the instructions of each opcode ops[k]
 * (names[k]) that ran with work -- and what every fuzz test must have seen:
 * clean programs and every fault a core records. */
static inline void tb_fuzz_report(const TbFuzzTally &f, int programs, const char *const *names, const uint8_t *ops,
                                  size_t n)
{
    printf("    fuzz: %d programs, %llu instructions retired, %llu clean; faults: segment %llu buffer %llu "
           "opcode %llu field %llu deadlock %llu fetch %llu\n",
           programs, (unsigned long long)f.retired, (unsigned long long)f.clean, (unsigned long long)f.faults[1],
           (unsigned long long)f.faults[2], (unsigned long long)f.faults[3], (unsigned long long)f.faults[4],
           (unsigned long long)f.faults[5], (unsigned long long)f.faults[6]);
    printf("    fuzz: executed with work:");
    for (size_t k = 0; k < n; ++k)
        printf(" %s %llu", names[k], (unsigned long long)f.executed[ops[k]]);
    printf("\n");
    CHECK(f.clean > 0);
    for (int k = 1; k <= 6; ++k)
        CHECK(f.faults[k] > 0);
}

/* The stand-alone core tops (vf_cnn_core_top, vf_rnn_core_top) share their
 * ports; one invocation's result registers, each written (they start at 77). */
typedef void tb_core_top_fn(int8_t *seg, uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count,
                            uint32_t *fault, uint32_t *fault_insn, uint32_t *fault_addr, uint64_t *insns,
                            uint64_t *load_iters, uint64_t *compute_iters, uint64_t *save_iters);

struct TbTopRun {
    uint32_t fault, fault_insn, fault_addr;
    uint64_t insns, load_iters, compute_iters, save_iters;
};

static inline TbTopRun tb_run_top(tb_core_top_fn *top, int8_t *seg, uint32_t seg_limit, uint32_t insn_offset,
                                  uint32_t insn_count)
{
    TbTopRun o = {77, 77, 77, 77, 77, 77, 77};
    top(seg, seg_limit, insn_offset, insn_count, &o.fault, &o.fault_insn, &o.fault_addr, &o.insns, &o.load_iters,
        &o.compute_iters, &o.save_iters);
    return o;
}

/* The top-fault program both core testbenches run -- FRAME, a load (whose
 * iterations are load_iters), FRAME, a SAVE that ends past seg_limit, END --
 * stops at the SAVE having retired three instructions. */
static inline void tb_check_top_fault(const TbTopRun &o, uint32_t seg_limit, uint64_t load_iters)
{
    CHECK_EQ(o.fault, VF_FAULT_SEGMENT);
    CHECK_EQ(o.fault_insn, 3);
    CHECK_EQ(o.fault_addr, seg_limit);
    CHECK_EQ(o.insns, 3);
    CHECK_EQ(o.load_iters, load_iters);
    CHECK_EQ(o.save_iters, 0);
}

#endif /* VFPGA_TB_COMMON_H */
