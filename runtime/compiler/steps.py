"""The longest step a program asks of a core.

A core runs a program step by step (hls/include/vfpga_unit_scheduler.h):
a step's body is the run of instructions between two markers (FRAME,
BARRIER, END), or from where the dispatcher starts a frame. The decoder
holds a whole body on chip (its per-unit instruction queues), so a body of
more than the board's ``frame_insns`` (cnn_core / rnn_core section of the
board config) faults VF_FAULT_FRAME_SIZE on the board; the compilers check
their programs here and refuse such a program instead.
"""

from __future__ import annotations

import numpy as np

from vfpga.driver import isa

MARKERS = np.array([isa.OPCODES[k] for k in ("FRAME", "BARRIER", "END")], np.uint8)


def longest_step(code: np.ndarray, starts=()) -> tuple[int, int]:
    """(length, first instruction) of the longest step body of ``code``
    (uint8, whole instructions); ``starts``: instruction indices where a
    dispatcher frame begins (a body never runs across one)."""
    ops = np.asarray(code, np.uint8).reshape(-1, isa.INSN_BYTES)[:, 0]
    if ops.size == 0:
        return 0, 0
    marker = np.isin(ops, MARKERS)
    cut = marker.copy()
    starts = np.asarray(starts, np.int64)
    cut[starts[(starts >= 0) & (starts < ops.size)]] = True
    group = np.cumsum(cut)  # a new group at every marker and frame start
    counts = np.bincount(group[~marker], minlength=int(group[-1]) + 1)
    g = int(np.argmax(counts))
    if counts[g] == 0:
        return 0, 0
    return int(counts[g]), int(np.flatnonzero((group == g) & ~marker)[0])


def check_steps(code: np.ndarray, limit: int, what: str, error: type[Exception], starts=()) -> int:
    """Raises ``error`` when a step body of ``code`` exceeds ``limit``
    instructions; returns the longest body."""
    n, first = longest_step(code, starts)
    if n > limit:
        raise error(f"{what}: a step of {n} instructions (from instruction {first}) is longer than the core's "
                    f"instruction queues hold ({limit}, frame_insns in the board config); the core would fault "
                    f"FRAME_SIZE")
    return n
