/*
 * What every core of the pool (CNN and RNN) has in common at its C boundary:
 * the architectural state between steps, the iteration counters and the
 * step results. vfpga_cnn_core.h and vfpga_rnn_core.h name these types for
 * their kind; the dispatcher, the tops and the emulator read both kinds
 * through the same fields. Same cdef-friendly subset as vfpga_isa.h.
 */
#ifndef VFPGA_CORE_H
#define VFPGA_CORE_H

#include <stdint.h>

/* Architectural state between steps. */
typedef struct {
    uint32_t pc;           /* next instruction index (relative to insn_offset) */
    uint32_t running;      /* 1 until END or a fault */
    uint32_t fault;        /* VF_FAULT_* */
    uint32_t fault_insn;   /* index of the faulting instruction */
    uint32_t fault_addr;   /* offending segment offset / buffer offset / field */
    uint32_t fault_opcode; /* 0xffffffff for VF_FAULT_FETCH */
} vf_core_state_t;

/* Pipelined-loop iteration counters, accumulated over steps. Which
 * instructions each unit counts is the kind's (vfpga_cnn_core.h,
 * vfpga_rnn_core.h). */
typedef struct {
    uint64_t insns;         /* instructions retired */
    uint64_t frames;        /* FRAME markers seen */
    uint64_t load_iters;    /* LOAD unit bus beats */
    uint64_t compute_iters; /* COMPUTE unit pipelined iterations */
    uint64_t save_iters;    /* SAVE unit bus beats */
    uint64_t load_bytes;    /* bytes read from DDR */
    uint64_t save_bytes;    /* bytes written to DDR */
    uint64_t macs;          /* useful multiply-accumulates */
} vf_core_counters_t;

/* Results of a core's step function. */
#define VF_STEP_FRAME 0   /* a frame (or barrier) completed, more to run */
#define VF_STEP_END 1     /* END reached, or the stream is exhausted */
#define VF_STEP_FAULT 2   /* stopped with state->fault set */

#endif /* VFPGA_CORE_H */
