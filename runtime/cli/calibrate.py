"""``vfpga calibrate``: the cycle model fitted to a board's counters.

    vfpga calibrate --board u200 [--out FILE] [--core N]

Runs the microbenchmarks of :mod:`vfpga.runtime.hw.calibration` on one core
of the board through the real driver -- a dispatcher context over its own
segment, each microbenchmark a request whose completion record carries the
dispatcher's cycle stamps -- fits the model's parameters per instruction
class and writes the calibration file the cycle model loads: ``--out``,
else $VFPGA_CALIBRATION, else ``overlay/configs/<board>.calibration.json``
beside the board config. Prints the per-class error before and after the
fit. On the emulated device (no board) the stamps are the model itself: the
fit is the config's own numbers, and nothing is written without ``--out``.

:func:`layer_table` compares the model with the board per layer of a
compiled model (each layer's frames run as one request on one core): what
board_tests print for ResNet-50.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from vfpga import overlay
from vfpga.driver import isa
from vfpga.driver.segment import Segment
from vfpga.driver.tenant_context import TenantContext, ring_bytes
from vfpga.runtime.compiler import dynamic, static
from vfpga.runtime.compiler.segment import segment_layout
from vfpga.runtime.hw import calibration, cycle_model, parameters

RING = 8
PAGE = static.PAGE


class ProgramRunner:
    """Requests on one core of ``accel`` (no tenant deployed there) through a
    dispatcher context of its own over a segment of ``size`` bytes, whose
    ``scratch`` offset has 256 free bytes (64-aligned)."""

    def __init__(self, accel, size: int, scratch: int, core: int = 0, ring_offset: int = 0,
                 cpl_offset: int | None = None, timeout: float = 60.0):
        if core not in accel.cores:
            raise ValueError(f"core {core} is not a CNN core of the {accel.board} pool ({accel.cores})")
        busy = [t.name for t in accel.tenants.values() if core in t.cores]
        if busy:
            raise ValueError(f"core {core} is held by tenant {busy[0]!r}: calibrate on a free core")
        cpl_offset = ring_offset + ring_bytes(RING)[0] if cpl_offset is None else cpl_offset
        self.accel, self.timeout = accel, timeout
        self.segment = Segment(size, bank=0, device=accel.device, stripe=accel.stripe)
        self.segment.write(0, np.zeros(size, np.uint8))
        self.segment.sync_to_device()
        index = accel.dispatcher.n_tenants - 1  # a context no tenant of a fresh accelerator uses
        self.context = TenantContext(accel.dispatcher, index, self.segment, ring_offset, cpl_offset, RING)
        self.context.enable(1 << core)
        self._ids = 0
        # a first frame takes the core over (its buffers are scrubbed, as
        # when a core changes hands): no measurement pays for that
        marker = isa.encode("FRAME", frame_id=0, layer=0) + isa.encode("END", frame_id=0, layer=0)
        self.write(scratch, marker)
        self.run(scratch + 2 * isa.INSN_BYTES, dispatch([(scratch, 2)]))

    def write(self, offset: int, data) -> None:
        data = np.frombuffer(bytes(data), np.uint8) if isinstance(data, (bytes, bytearray)) else data
        self.segment.write(offset, data)
        self.segment.sync_to_device(offset, len(data))

    def run(self, prog_offset: int, entries: np.ndarray):
        """Posts a request walking ``entries`` (vf_dispatch_t) written at
        ``prog_offset``; returns its completion record."""
        self.write(prog_offset, np.ascontiguousarray(entries, isa.DISPATCH).view(np.uint8))
        self._ids += 1
        self.context.post(prog_offset, len(entries), self._ids)
        deadline = time.monotonic() + self.timeout
        while True:
            done = self.context.collect()
            if done:
                rec = done[-1]
                if not rec.ok:
                    raise RuntimeError(f"calibration request {rec.request_id} failed: {rec.describe()}")
                return rec
            if time.monotonic() > deadline:
                raise RuntimeError(f"calibration request {self._ids} did not complete in {self.timeout} s")
            time.sleep(1e-4)

    def close(self) -> None:
        self.context.disable()
        self.segment.free()


def dispatch(frames: list[tuple[int, int]]) -> np.ndarray:
    """A dispatch program: each (frame_offset, n_insns) on slot 0, then END."""
    entries = np.zeros(len(frames) + 1, isa.DISPATCH)
    for i, (offset, n) in enumerate(frames):
        entries[i]["frame_offset"], entries[i]["n_insns"] = offset, n
        entries[i]["op"] = isa.DISPATCH_OPS["FRAME"]
    entries[-1]["op"] = isa.DISPATCH_OPS["END"]
    return entries


# ---------------------------------------------------------------- microbenchmarks


def measure(accel, benches: list[calibration.Bench], core: int = 0) -> np.ndarray:
    """Per-instruction cycles of each microbenchmark on ``core``, from the
    request cycles of its two repetition counts."""
    prog_area = PAGE
    insn_area = 2 * PAGE
    data_area = insn_area + static.align((max(calibration.REPEATS) + 2) * isa.INSN_BYTES, PAGE)
    size = data_area + static.align(max([b.data_bytes for b in benches] + [1]), PAGE)
    runner = ProgramRunner(accel, size, prog_area + PAGE // 2, core)
    try:
        cycles = []
        for b in benches:
            row = []
            for r in calibration.REPEATS:
                runner.write(insn_area, b.program(r, data_area))
                row.append(runner.run(prog_area, dispatch([(insn_area, r + 2)])).cycles)
            cycles.append(row)
    finally:
        runner.close()
    cycles = np.array(cycles, np.float64)
    return calibration.per_instruction(cycles[:, 0], cycles[:, 1])


def calibrate(accel, core: int = 0) -> tuple[calibration.Fit, list[calibration.Bench], np.ndarray]:
    benches = calibration.microbenchmarks(accel.config)
    measured = measure(accel, benches, core)
    return calibration.fit(benches, measured, accel.config), benches, measured


def output_path(board: str, out: str | None) -> str:
    if out:
        return out
    return os.environ.get(parameters.ENV) or os.path.join(overlay.config.CONFIG_DIR, f"{board}.calibration.json")


def run(board: str, out: str | None = None, core: int = 0) -> int:
    from vfpga.runtime.tenants import Accelerator

    with Accelerator(board) as accel:
        where = "the emulated device (its counters are the model: a check of the path)" if accel.emulated \
            else "the board's counters"
        print(f"vfpga calibrate: {board}, core {core}, {where}")
        fit, benches, _ = calibrate(accel, core)
    print(fit.table())
    p = fit.params
    for cls, f, it in zip(parameters.CLASSES, p.fixed, p.per_iter):
        print(f"  {cls:<11} fixed {f:8.2f} cycles, {it:6.3f} cycles per iteration")
    print(f"  DDR         latency {p.latency:.1f} cycles, {p.bytes_per_cycle:.2f} bytes per cycle")
    if fit.kept:
        print(f"  not bound by any microbenchmark (the config's value kept): {', '.join(fit.kept)}")
    if accel.emulated and not out:
        print("emulated: no calibration file written (give --out to write one)")
        return 0
    path = output_path(board, out)
    parameters.save(p, accel.config, path, {
        "source": "emulated device" if accel.emulated else "board counters",
        "microbenchmarks": len(benches), "error_before": fit.before, "error_after": fit.after,
        "not_identified": fit.kept})
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------- per layer


@dataclasses.dataclass
class LayerRow:
    layer: int
    name: str
    frames: int
    modeled: int
    measured: int

    @property
    def error(self) -> float:
        return (self.modeled - self.measured) / max(self.measured, 1)


def layer_programs(compiled: static.CompiledModel) -> list[np.ndarray]:
    """The one-core dispatch program of each accelerator layer: its frames, then END."""
    out = []
    for prog in dynamic.plan(dynamic.DispatchTable(compiled), 1).programs:
        frames: list[tuple[int, int]] = []
        for e in prog:
            if e["op"] == isa.DISPATCH_OPS["FRAME"]:
                frames.append((int(e["frame_offset"]), int(e["n_insns"])))
            elif frames:  # BARRIER or END closes a layer
                out.append(dispatch(frames))
                frames = []
        if frames:
            out.append(dispatch(frames))
    return out


def layer_table(accel, compiled: static.CompiledModel, core: int = 0) -> list[LayerRow]:
    """Model against board per layer: each layer's frames as one request on
    ``core`` (the model: the dispatcher's issue cost and the cycle model's
    schedule of each frame, one after the other, as the pool timeline
    charges them on one core)."""
    cfg = accel.config
    layout = segment_layout(compiled)
    scratch = static.align(layout.size, PAGE)  # a page beyond the model's segment
    runner = ProgramRunner(accel, scratch + PAGE, scratch, core, layout.ring_offset, layout.cpl_offset)
    issue = int(cfg["dispatcher"]["issue_cycles"])
    code = np.asarray(compiled.program, np.uint8).reshape(-1)
    rows = []
    try:
        for offset, data in compiled.segment_image().items():
            runner.write(offset, data)
        for prog in layer_programs(compiled):
            frames = [(int(e["frame_offset"]), int(e["n_insns"])) for e in prog[:-1]]
            insns = [code[f - compiled.program_offset:f - compiled.program_offset + n * isa.INSN_BYTES]
                     for f, n in frames]
            modeled = sum(issue + cycle_model.schedule(i, cfg).total_cycles for i in insns)
            layer = int(np.frombuffer(insns[0][:isa.HEAD.itemsize].tobytes(), isa.HEAD)[0]["tag"])
            measured = runner.run(layout.program_halves[0], prog).cycles
            name = compiled.graph.layers[layer].name if layer < len(compiled.graph.layers) else str(layer)
            rows.append(LayerRow(layer, name, len(frames), modeled, measured))
    finally:
        runner.close()
    return rows


def format_layer_table(rows: list[LayerRow]) -> str:
    lines = [f"{'layer':>5} {'name':<28}{'frames':>7}{'modeled':>12}{'measured':>12}{'error':>9}"]
    lines += [f"{r.layer:>5} {r.name[:27]:<28}{r.frames:>7}{r.modeled:>12}{r.measured:>12}{r.error:>9.1%}"
              for r in rows]
    total_m, total_b = sum(r.modeled for r in rows), sum(r.measured for r in rows)
    lines.append(f"{'':>5} {'total':<28}{sum(r.frames for r in rows):>7}{total_m:>12}{total_b:>12}"
                 f"{(total_m - total_b) / max(total_b, 1):>9.1%}")
    return "\n".join(lines)
