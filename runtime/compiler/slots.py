"""Per-request activation slots: several requests of one CNN tenant in flight.

The static stage places a request's activations (its input, intermediates
and output) in the arena [0, activation_bytes) of the segment and addresses
them at fixed offsets. Slot 0 is that arena and the compiled instructions
as they are. Slot s >= 1 is a region after the compiled bytes holding its
own arena and a relocated copy of the instruction stream: every LOAD_TILE,
SAVE and LOAD_LINEAR whose DDR address lies in the arena moves by the slot's
arena base; constants (weights, parameters, tables) stay shared. Dispatch
programs of slot s are slot 0's with every frame offset moved by the copy's
distance from the original. The relocation is exact: a slot-s frame runs
the same instructions on the same bytes at other addresses, so its results
are those of slot 0 (the dispatcher keeps requests s and s + M apart, see
hls/include/vfpga_dispatcher.h).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfpga.driver import isa
from vfpga.runtime.compiler import static

_ADDR_OPS = ("LOAD_TILE", "SAVE", "LOAD_LINEAR")


def _pages(n: int) -> int:
    return static.align(n, static.PAGE)


@dataclass(frozen=True)
class Slots:
    """Where each slot's arena and instructions are (segment offsets)."""

    count: int
    arena_bytes: int
    base: int  # first byte of slot 1's region (= the compiled model's segment size)
    stride: int  # bytes per extra slot: its arena, then its instruction copy (whole pages)
    program_offset: int  # slot 0's instructions

    def arena(self, s: int) -> int:
        """Offset of slot s's arena (its activations' delta from slot 0)."""
        return 0 if s == 0 else self.base + (s - 1) * self.stride

    def program(self, s: int) -> int:
        """Offset of slot s's instruction stream."""
        return self.program_offset if s == 0 else self.arena(s) + _pages(self.arena_bytes)

    @property
    def end(self) -> int:
        """First byte after the last slot (the compiled bytes with every slot)."""
        return self.base + (self.count - 1) * self.stride


def slots(compiled: static.CompiledModel, count: int) -> Slots:
    """The layout of ``count`` slots of ``compiled`` (count >= 1)."""
    if count < 1:
        raise ValueError(f"max_inflight must be >= 1, not {count}")
    stride = _pages(compiled.activation_bytes) + _pages(len(compiled.program))
    return Slots(count, compiled.activation_bytes, compiled.segment_size, stride, compiled.program_offset)


def relocate(program: np.ndarray, arena_bytes: int, delta: int) -> np.ndarray:
    """A copy of ``program`` (uint8, whole instructions) whose DDR addresses
    inside [0, arena_bytes) are moved by ``delta``."""
    insns = np.array(program, np.uint8).reshape(-1, isa.INSN_BYTES)
    if delta == 0:
        return insns.reshape(-1)
    mem, lin = isa.FORMATS["mem"], isa.FORMATS["linear"]
    assert mem.fields["dram_addr"][1] == lin.fields["dram_addr"][1]  # one field for the three opcodes
    at = mem.fields["dram_addr"][1]
    ops = isa.opcodes_of(insns)
    sel = np.isin(ops, [isa.OPCODES[o] for o in _ADDR_OPS])
    addr = insns[:, at:at + 4].copy().view("<u4")[:, 0]
    move = sel & (addr < arena_bytes)
    moved = (addr.astype(np.int64) + np.where(move, delta, 0)).astype("<u4")
    insns[:, at:at + 4] = moved.view(np.uint8).reshape(-1, 4)
    return insns.reshape(-1)


def slot_image(compiled: static.CompiledModel, lay: Slots) -> dict[int, bytes]:
    """The bytes of slots 1.. to upload at deploy: {segment offset: bytes}."""
    return {lay.program(s): relocate(compiled.program, lay.arena_bytes, lay.arena(s)).tobytes()
            for s in range(1, lay.count)}


def slot_programs(programs: list[np.ndarray], lay: Slots, s: int) -> list[np.ndarray]:
    """Slot s's dispatch programs from slot 0's (frame offsets moved to its
    instruction copy)."""
    if s == 0:
        return programs
    out = []
    delta = lay.program(s) - lay.program_offset
    for p in programs:
        q = p.copy()
        frame = q["op"] == isa.DISPATCH_OPS["FRAME"]
        q["frame_offset"][frame] += delta
        out.append(q)
    return out

