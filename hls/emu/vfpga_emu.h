/* The emulated dispatcher's event loop (emulation library only, never synthesized).
 *
 * The free-running top (hls/include/vfpga_pool.h) as the emulator schedules
 * it: the dispatcher advances until an advance does nothing, the clock moves
 * to the earliest frame end, that frame retires, the dispatcher advances
 * again. driver/emulated_dispatcher.py ran this loop in Python; here it runs
 * in C++ and returns to Python only for what C++ does not know: a frame
 * timing it has not been handed yet (the cycle model stays in Python, its
 * answers are kept per instruction bytes), a core's buffers, or stop. The
 * bank sharing (frame_timing.bank_stretches) is the one model rule done
 * here, float for float (host_tests/driver/test_native_loop.py).
 * Interrupts and idle waits stay in C++ (vf_emu_irq_wait, vf_emu_run).
 * Frames known to run without a fault run ahead: timed at issue, run on the
 * host's threads while the loop goes on, waited for when they retire
 * (emu_loop.cpp says why that is exact).
 */
#ifndef VFPGA_EMU_H
#define VFPGA_EMU_H

#include <stdint.h>

#include "vfpga_dispatcher.h"

/* What vf_emu_run returns (and asks for in need->kind). */
#define VF_EMU_STOP 0      /* the device closed */
#define VF_EMU_BUFFERS 1   /* vf_emu_set_buffers(need->core) */
#define VF_EMU_SOLO 2      /* vf_emu_put_solo: the frame's cycles alone and its bank demand (without, with a scrub) */
#define VF_EMU_UNTIMED 4   /* vf_emu_put_cycles: fetch only (instructions outside memory) */
#define VF_EMU_FAULTED 5   /* vf_emu_put_cycles: a faulting frame's cycles from its counters */
#define VF_EMU_ERROR 6     /* an internal error (need->message); the loop stays stopped */

/* The timeline's constants (runtime/hw/timeline.py computes them from the board config). */
typedef struct {
    uint64_t issue_cycles;
    uint64_t barrier_cycles;
    uint64_t completion_cycles;
    uint64_t scrub_cycles;       /* a CNN core's buffer scrub */
    uint64_t rnn_scrub_cycles;
    uint32_t charge_scrubs;
    uint32_t compute;            /* 0: the timing-only board, frames are timed, never run */
    uint64_t bank_stride;
    uint32_t n_banks;
    uint32_t threads;            /* host threads that run frames (the loop's own among them) */
    uint32_t run_ahead;          /* 0: every frame is waited for at issue (the comparison point) */
    uint32_t idle_poll_us;       /* out of work, the loop polls for a host write this long before it sleeps */
    int64_t *core_busy_cycles;   /* VF_POOL_CORES entries, accumulated */
    int64_t *tenant_frame_cycles;  /* VF_DISP_TENANTS entries: frame cycles as run */
    int64_t *tenant_solo_cycles;   /* the same with the bank to themselves */
} vf_emu_config_t;

/* A question for Python (vf_emu_run's answer other than STOP). */
typedef struct {
    uint32_t kind;
    uint32_t core;
    uint32_t rnn;
    int8_t *mem;                 /* the window the frame was issued with */
    uint64_t mem_bytes;
    vf_disp_frame_t frame;
    vf_core_state_t result;
    vf_core_counters_t counters;
    char message[512];           /* VF_EMU_ERROR: what went wrong */
} vf_emu_need_t;

typedef struct vf_emu vf_emu_t;

vf_emu_t *vf_emu_new(const vf_emu_config_t *config, vf_disp_regs_t *regs, vf_disp_state_t *state);
void vf_emu_free(vf_emu_t *emu);  /* after vf_emu_run has returned STOP (or was never called) */

/* The host side, from any thread. */
void vf_emu_set_window(vf_emu_t *emu, int8_t *mem, uint64_t mem_bytes);
void vf_emu_set_buffers(vf_emu_t *emu, uint32_t core, void *buffers);
uint32_t vf_emu_read_word(vf_emu_t *emu, uint32_t word);
void vf_emu_write_word(vf_emu_t *emu, uint32_t word, uint32_t value);
void vf_emu_set_running(vf_emu_t *emu, uint32_t running);
void vf_emu_poke(vf_emu_t *emu);  /* a host register changed: the idle loop looks again */
void vf_emu_stop(vf_emu_t *emu);
uint64_t vf_emu_now(vf_emu_t *emu);
uint64_t vf_emu_frames(vf_emu_t *emu);
uint64_t vf_emu_cache_entries(vf_emu_t *emu);  /* instruction strings whose timings are held */
uint64_t vf_emu_frames_ahead(vf_emu_t *emu);   /* frames timed at issue and run while the loop went on */
/* Test hook: on != 0 corrupts the loop's knowledge of clean frames (every
 * frame whose timing is held runs ahead), so that the check at retire fires. */
void vf_emu_test_trust_cached(vf_emu_t *emu, uint32_t on);
/* Sets the clock of a loop with nothing in flight (a device restored from
 * another's snapshot); returns 0 if frames are in flight (nothing set). */
uint32_t vf_emu_set_clock(vf_emu_t *emu, uint64_t now);
/* Blocks until the interrupt line has been asserted with news after event
 * count seen, or timeout_s (< 0: forever); returns the event count. */
uint64_t vf_emu_irq_wait(vf_emu_t *emu, uint64_t seen, double timeout_s);
void vf_emu_irq_raise(vf_emu_t *emu);

/* frame_timing.bank_stretches as the loop computes it (n demands -> n stretches), for the test against Python. */
void vf_emu_bank_stretches(const double *demands, uint32_t n, double *stretches);

/* The loop thread. vf_emu_run loops until it needs Python; answer with the
 * put function need->kind names, then call it again. */
uint32_t vf_emu_run(vf_emu_t *emu, vf_emu_need_t *need);
void vf_emu_put_solo(vf_emu_t *emu, uint64_t cycles, double demand, double demand_scrubbed);
void vf_emu_put_cycles(vf_emu_t *emu, uint64_t cycles);

#endif /* VFPGA_EMU_H */
