/*
 * Bookkeeping shared by the C-simulation testbenches: CHECK macros, the test
 * runner that prints PASS/FAIL and a fixed-seed xorshift64* generator (the
 * same streams on every host; define TB_SEED before including to pick one).
 */
#ifndef VFPGA_TB_COMMON_H
#define VFPGA_TB_COMMON_H

#include <cstdint>
#include <cstdio>
#include <string>

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
    fn();
    g_ctx.clear();
    if (g_checks_failed == 0) {
        ++g_passed;
        printf("  PASS %s\n", name);
    } else {
        ++g_failed;
        printf("  FAIL %s (%d checks)\n", name, g_checks_failed);
    }
    fflush(stdout);
}

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
static inline uint64_t cdiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

#endif /* VFPGA_TB_COMMON_H */
