/*
 * What the HLS sources share about the tool (C++ only): the g++ host-build
 * settings, and the pragma blocks of the synthesizable tops as macros, so
 * that cnn_core_top.cpp, rnn_core_top.cpp and dispatcher_top.cpp state each
 * interface and memory partitioning once. Pragmas inside macros are
 * _Pragma("HLS ..."), with the macro arguments expanded first: register
 * offsets and partition factors come from the board config macros.
 */
#ifndef VFPGA_HLS_H
#define VFPGA_HLS_H

/* Loop labels name the HLS loops; g++ would call them unused. (HLS pragmas
 * are unknown to g++: host builds pass -Wno-unknown-pragmas.) */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__SYNTHESIS__)
#pragma GCC diagnostic ignored "-Wunused-label"
#endif

/* Vitis HLS synthesises the cores' literal loop nests ("Two bodies" in
 * cnn_core.cpp / rnn_core.cpp). */
#if defined(__SYNTHESIS__) && !defined(VF_HLS_LITERAL)
#define VF_HLS_LITERAL 1
#endif

#define VF_PRAGMA_STR(x) _Pragma(#x)
#define VF_PRAGMA(x) VF_PRAGMA_STR(x)
#define VF_AXILITE(p, off) VF_PRAGMA(HLS INTERFACE s_axilite port=p offset=off bundle=control)

/* ---- stand-alone core tops (vf_cnn_core_top, vf_rnn_core_top) ---------------
 * Ports: seg, an m_axi master (bundle gmem) whose base address is the
 * s_axilite register R##SEG; every scalar and result an s_axilite register
 * (bundle control) at the offset of the board config's R##* macro, R being
 * the kind's register prefix (VF_REG_ or VF_RREG_). */
#define VF_CORE_TOP_PORTS(R)                                        \
    VF_PRAGMA(HLS INTERFACE m_axi port=seg offset=slave bundle=gmem) \
    VF_AXILITE(seg, R##SEG)                                         \
    VF_AXILITE(seg_limit, R##SEG_LIMIT)                             \
    VF_AXILITE(insn_offset, R##INSN_OFFSET)                         \
    VF_AXILITE(insn_count, R##INSN_COUNT)                           \
    VF_AXILITE(fault, R##FAULT)                                     \
    VF_AXILITE(fault_insn, R##FAULT_INSN)                           \
    VF_AXILITE(fault_addr, R##FAULT_ADDR)                           \
    VF_AXILITE(insns, R##INSNS)                                     \
    VF_AXILITE(load_iters, R##LOAD_ITERS)                           \
    VF_AXILITE(compute_iters, R##COMPUTE_ITERS)                     \
    VF_AXILITE(save_iters, R##SAVE_ITERS)                           \
    VF_PRAGMA(HLS INTERFACE s_axilite port=return bundle=control)

/* The board config's offsets for a core top (at file scope): every one
 * defined (a missing one is an undeclared name here, where the pragmas,
 * unknown to g++, would hide it) and word aligned, and the block-level
 * control registers where Vitis HLS places them. */
#define VF_CORE_TOP_CHECK(R)                                                                                   \
    static_assert(((R##SEG | R##SEG_LIMIT | R##INSN_OFFSET | R##INSN_COUNT | R##FAULT | R##FAULT_INSN |       \
                    R##FAULT_ADDR | R##INSNS | R##LOAD_ITERS | R##COMPUTE_ITERS | R##SAVE_ITERS) & 3) == 0,   \
                  "board config: core registers missing or not word aligned (compile with the flags printed " \
                  "by python3 overlay/config.py BOARD)");                                                      \
    static_assert(R##CTRL == 0x00 && R##GIE == 0x04 && R##IER == 0x08 && R##ISR == 0x0c,                       \
                  "board config: ap_ctrl_hs registers are fixed by Vitis HLS at 0x00/0x04/0x08/0x0c")

/* ---- a core's memories, partitioned for its lanes -----------------------------
 * D is the array dimension that holds the words: 1 in a stand-alone core top,
 * 2 in the dispatcher's per-core arrays (dimension 1 is the core). WBUF
 * reshaped cyclically by VF_CONV_WORD = ICP * OCP: one memory whose word is
 * a MAC beat's weights. CONV weights are beat-major words (vfpga_isa.h) at
 * word-aligned addresses, so a beat reads one word whole; LOAD_LINEAR
 * assembles each word from its bus beats and writes it whole (byte writes
 * into a wide word would be read-modify-writes). One wide memory instead
 * of ICP * OCP byte-wide banks: 512 x 8 banks fill an eighth of a RAMB36. */
#define VF_CNN_PARTITIONS(D, ibuf, wbuf, obuf, acc)                              \
    VF_PRAGMA(HLS ARRAY_PARTITION variable=ibuf dim=D cyclic factor=VF_ICP)     \
    VF_PRAGMA(HLS ARRAY_RESHAPE variable=wbuf dim=D cyclic factor=VF_CONV_WORD) \
    VF_PRAGMA(HLS ARRAY_PARTITION variable=obuf dim=D cyclic factor=VF_OCP)     \
    VF_PRAGMA(HLS ARRAY_PARTITION variable=acc dim=D cyclic factor=VF_OCP)

/* WBUF reshaped by the tile (VF_RNN_TILE_BYTES = VF_RNN_ROWS x VF_RNN_COLS):
 * one memory of tile words; a MATVEC beat reads one tile-aligned word of
 * beat-major weights whole, RNN_LOAD writes whole tiles; VBUF so that the array reads a column
 * block of the vector per cycle; ACC and STATE by the gate unit's lanes. ACT
 * is declared [VF_RNN_LANES][VF_RNN_ACT_WORDS] (dimension D the lane): one
 * memory per lane's copy of the tables, so the lanes look them up at once. */
#define VF_RNN_PARTITIONS(D, wbuf, vbuf, acc, state, act)                             \
    VF_PRAGMA(HLS ARRAY_RESHAPE variable=wbuf dim=D cyclic factor=VF_RNN_TILE_BYTES)   \
    VF_PRAGMA(HLS ARRAY_PARTITION variable=vbuf dim=D cyclic factor=VF_RNN_COLS)       \
    VF_PRAGMA(HLS ARRAY_PARTITION variable=acc dim=D cyclic factor=VF_RNN_LANES)       \
    VF_PRAGMA(HLS ARRAY_PARTITION variable=state dim=D cyclic factor=VF_RNN_LANES)     \
    VF_PRAGMA(HLS ARRAY_PARTITION variable=act dim=D complete)

/* ---- UltraRAM where the board config puts a memory ---------------------------
 * VF_URAM_IF(VF_URAM_<NAME>, var): the config's storage.uram list makes
 * VF_URAM_<NAME> 1 (overlay/config.py) and var a true dual-port UltraRAM
 * (4096 x 72 blocks, cascaded), else nothing (block RAM, the tool's
 * default). The flag is expanded before it selects the branch. */
#define VF_URAM_IF(flag, var) VF_URAM_IF_(flag, var)
#define VF_URAM_IF_(flag, var) VF_URAM_IF_##flag(var)
#define VF_URAM_IF_0(var)
#define VF_URAM_IF_1(var) VF_PRAGMA(HLS BIND_STORAGE variable=var type=ram_t2p impl=uram)

/* ---- the dispatcher top's DDR bank ports ------------------------------------
 * Port p is bank b's m_axi master (bundle bank<b>, AXI port m_axi_bank<b>),
 * its base address the s_axilite register R (offset=slave); the burst,
 * outstanding, latency and width options are the cycle model's numbers
 * (the board config's timing.axi_max_burst_beats, timing.axi_outstanding,
 * ddr.burst_latency_cycles, ddr.axi_bytes: one source). */
#define VF_DDR_PORT(p, b, R)                                                                                  \
    VF_PRAGMA(HLS INTERFACE m_axi port=p offset=slave bundle=bank##b depth=VF_DDR_PORT_DEPTH                 \
              latency=VF_DDR_LATENCY max_read_burst_length=VF_AXI_MAX_BURST_BEATS                             \
              max_write_burst_length=VF_AXI_MAX_BURST_BEATS num_read_outstanding=VF_AXI_OUTSTANDING           \
              num_write_outstanding=VF_AXI_OUTSTANDING max_widen_bitwidth=VF_DDR_PORT_BITS)                   \
    VF_AXILITE(p, R)

/* ---- free-running processes ------------------------------------------------
 * A process of the free-running dispatcher top runs its body forever in
 * hardware; in the C-simulation one call runs one iteration (a bounded unit
 * of work), and the testbench, the emulator and the simulator call it as
 * often as their schedule says. */
#ifdef __SYNTHESIS__
#define VF_HARDWARE_LOOP for (;;)
#else
#define VF_HARDWARE_LOOP for (int vf_once_ = 0; vf_once_ < 1; ++vf_once_)
#endif

/* One instance of a memory per core of the pool (dimension 1). */
#define VF_PER_CORE(var) VF_PRAGMA(HLS ARRAY_PARTITION variable=var dim=1 complete)

#endif /* VFPGA_HLS_H */
