"""Calibration of the CNN cycle model from a board's counters: the
microbenchmarks, the fit and its report.

A microbenchmark is one instruction of one class and shape, repeated: a
frame of ``FRAME, insn x r, END`` run alone on one core, for two repetition
counts. The board reports each request's cycles (the dispatcher's cycle
stamps in the completion record); their difference divided by the
difference of the repetition counts is the instruction's cycles plus its
share of the frame's instruction fetch -- everything else the request costs
(the dispatcher's issue and record, the fetch's latency, the markers)
cancels. The instructions use no dependency tokens, so they run back to back
in their unit.

The fit finds the model's parameters (:mod:`vfpga.runtime.hw.parameters`:
per class a fixed cost and a per-iteration cost, the DDR's latency and
bandwidth) that minimise the squared relative error of those per-instruction
cycles, by Levenberg-Marquardt on the model before rounding
(:func:`cycle_model.program_cycles_exact`). A parameter no microbenchmark
makes binding (a per-beat cost hidden behind the bank bandwidth, say) has no
influence and keeps the board config's value; the report says which.

Running the microbenchmarks needs a board (or the emulated device, whose
counters are the model itself): :mod:`vfpga.runtime.cli.calibrate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vfpga.driver import isa
from vfpga.runtime.hw import cycle_model, parameters

REPEATS = (4, 20)  # instructions per frame of the two runs of a microbenchmark


@dataclass(frozen=True)
class Bench:
    """One microbenchmark: instruction ``insn`` (64 bytes) of class ``cls``."""

    cls: str
    shape: str
    insn: bytes
    data_bytes: int  # segment bytes its DDR accesses reach, from offset 0 of the data area

    def program(self, repeats: int, data_offset: int) -> bytes:
        """FRAME, the instruction ``repeats`` times (its DDR offsets moved by
        ``data_offset``), END."""
        insn = np.frombuffer(self.insn, np.uint8).copy()
        fmt = isa.FORMAT_OF.get(int(insn[0]))
        if fmt in ("mem", "linear"):
            row = insn.view(isa.FORMATS[fmt])
            row["dram_addr"] += data_offset
        marker = {"frame_id": 0, "layer": 0}
        return isa.encode("FRAME", **marker) + insn.tobytes() * repeats + isa.encode("END", **marker)


def microbenchmarks(config: dict) -> list[Bench]:
    """The microbenchmarks of ``config``'s CNN core: per class a few shapes
    that fit its buffers, chosen so that each parameter binds somewhere
    (padding-only tiles give the load unit's own costs, linear loads of
    growing size the DDR's latency and bandwidth)."""
    core = config["cnn_core"]
    icp, ocp, axi = int(core["icp"]), int(core["ocp"]), cycle_model._geometry(config).axi_bytes
    ibuf, wbuf, obuf, acc = (int(core[k]) for k in ("ibuf_bytes", "wbuf_bytes", "obuf_bytes", "acc_words"))
    out: list[Bench] = []

    def add(cls, shape, insn, data_bytes=0):
        out.append(Bench(cls, shape, insn, data_bytes))

    for th, tw, ch in ((1, 2, axi), (4, 8, axi), (8, 16, 2 * axi)):  # all padding: no DDR byte
        if th * tw * ch <= ibuf:
            add("LOAD", f"pad {th}x{tw}x{ch}",
                isa.encode("LOAD_TILE", dram_addr=0, buf_addr=0, height=1, width=1, pixel_stride=ch, channels=ch,
                           y0=-th, x0=0, tile_h=th, tile_w=tw, pad_value=0))
    for n in (16, 64, 256, 1024):
        nbytes = n * axi
        if nbytes <= wbuf:
            add("LOAD", f"linear {nbytes} B",
                isa.encode("LOAD_LINEAR", dram_addr=0, buf_addr=0, nbytes=nbytes, buffer=isa.BUF_WGT), nbytes)
    for th, tw, ch in ((1, 4, axi), (4, 16, axi), (8, 32, axi), (8, 32, 2 * axi)):
        if th * tw * ch <= obuf:
            add("SAVE", f"{th}x{tw}x{ch}",
                isa.encode("SAVE", dram_addr=0, buf_addr=0, height=th, width=tw, pixel_stride=ch, channels=ch,
                           y0=0, x0=0, tile_h=th, tile_w=tw), th * tw * ch)
    for oh, k, cin, cout in ((2, 1, icp, ocp), (4, 3, 2 * icp, ocp), (4, 3, 2 * icp, 2 * ocp), (8, 3, icp, 2 * ocp)):
        ih = oh + k - 1
        if ih * ih * cin <= ibuf and isa.conv_weight_bytes(1, cin, cout, k, k, icp, ocp) <= wbuf \
                and oh * oh * cout <= acc:
            add("CONV", f"{oh}x{oh} k{k} {cin}->{cout}", _conv(ih, oh, k, 1, cin, cout))
    for oh, k, ch in ((2, 1, ocp), (4, 3, 2 * ocp), (8, 3, ocp)):
        ih = oh + k - 1
        if ih * ih * ch <= ibuf and isa.conv_weight_bytes(ch, 1, 1, k, k, icp, ocp) <= wbuf and oh * oh * ch <= acc:
            add("CONV_LANES", f"{oh}x{oh} k{k} dw{ch}", _conv(ih, oh, k, ch, 1, 1))
    for oh, ch in ((2, ocp), (4, 2 * ocp), (8, ocp)):
        ih = 2 * oh
        if ih * ih * ch <= ibuf and oh * oh * ch <= obuf:
            add("POOL", f"max 2x2 {ih}x{ih}x{ch}",
                isa.encode("POOL", in_addr=0, out_addr=0, mult=1, in_h=ih, in_w=ih, out_h=oh, out_w=oh, channels=ch,
                           kh=2, kw=2, sh=2, sw=2, valid_y0=0, valid_y1=ih, valid_x0=0, valid_x1=ih, shift=0,
                           in_zp=0, out_zp=0, clip_lo=-128, clip_hi=127))
    for n in (16, 128, 1024):
        length = n * ocp
        if 2 * length <= ibuf and length <= obuf:
            add("ADD", f"{length}",
                isa.encode("ADD", a_addr=0, b_addr=length, out_addr=0, length=length, a_mult=1 << 14,
                           b_mult=1 << 14, shift=15, a_zp=0, b_zp=0, out_zp=0, clip_lo=-128, clip_hi=127))
    for n in (16, 128, 1024):
        length = n * ocp
        if length <= ibuf and length <= obuf and isa.lib.VF_LUT_ENTRIES <= wbuf:
            add("LUT", f"{length}", isa.encode("LUT", in_addr=0, out_addr=0, table_addr=0, length=length))
    for pixels, ch in ((4, ocp), (32, ocp), (64, 2 * ocp)):
        if 2 * pixels * ch <= ibuf and pixels * ch <= obuf:
            add("MUL", f"{pixels}x{ch}",
                isa.encode("MUL", a_addr=0, b_addr=pixels * ch, out_addr=0, pixels=pixels, mult=1 << 14,
                           channels=ch, shift=15, a_zp=0, b_zp=0, out_zp=0, clip_lo=-128, clip_hi=127))
    return out


def _conv(ih: int, oh: int, k: int, groups: int, cin_g: int, cout_g: int) -> bytes:
    """A CONV that accumulates into ACC (no INIT/FINAL: no PARAM read)."""
    return isa.encode("CONV", in_addr=0, wgt_addr=0, out_addr=0, acc_addr=0, param_addr=0, in_h=ih, in_w=ih,
                      out_h=oh, out_w=oh, groups=groups, cin_g=cin_g, cout_g=cout_g, kh=k, kw=k, sh=1, sw=1,
                      out_zp=0, clip_lo=-128, clip_hi=127)


# ---------------------------------------------------------------- the model of a measurement


def predicted(benches: list[Bench], config: dict, params: parameters.Parameters) -> np.ndarray:
    """Per-instruction cycles of each microbenchmark under ``params`` (what
    the repetition difference of its request cycles measures)."""
    insns = np.frombuffer(b"".join(b.insn for b in benches), np.uint8).reshape(-1, isa.INSN_BYTES)
    cycles = cycle_model.program_cycles_exact(insns, config, params)
    r1, r2 = REPEATS
    fetch = (cycle_model.fetch_cycles_exact(r2 + 2, config, params)
             - cycle_model.fetch_cycles_exact(r1 + 2, config, params)) / (r2 - r1)
    return cycles + fetch


def per_instruction(cycles_r1, cycles_r2) -> np.ndarray:
    """Measured per-instruction cycles from the request cycles of the two runs."""
    r1, r2 = REPEATS
    return (np.asarray(cycles_r2, np.float64) - np.asarray(cycles_r1, np.float64)) / (r2 - r1)


# ---------------------------------------------------------------- the fit


@dataclass
class Fit:
    params: parameters.Parameters
    before: dict[str, float]  # per class: mean relative error of the config's model
    after: dict[str, float]  # ... of the fitted model
    identified: list[str]  # parameters the measurements determine
    kept: list[str] = field(default_factory=list)  # parameters no microbenchmark binds (config value kept)

    def table(self) -> str:
        lines = [f"{'class':<12}{'error before':>14}{'error after':>14}"]
        lines += [f"{c:<12}{self.before[c]:>13.2%}{self.after[c]:>14.2%}" for c in self.before]
        return "\n".join(lines)


def class_errors(benches: list[Bench], measured, model) -> dict[str, float]:
    measured, model = np.asarray(measured, np.float64), np.asarray(model, np.float64)
    rel = np.abs(model - measured) / np.maximum(np.abs(measured), 1e-9)
    return {c: float(rel[[b.cls == c for b in benches]].mean())
            for c in parameters.CLASSES if any(b.cls == c for b in benches)}


def fit(benches: list[Bench], measured, config: dict, iterations: int = 200) -> Fit:
    """The parameters that best explain ``measured`` (per-instruction cycles
    of ``benches``), starting from the board config's."""
    measured = np.asarray(measured, np.float64)
    start = cycle_model.default_parameters(config)
    names = start.names()
    x = np.array(start.as_vector(), np.float64)

    def residual(v):
        p = parameters.Parameters.from_vector(np.maximum(v, 1e-6), "fit")
        return predicted(benches, config, p) / measured - 1.0

    def jacobian(v):
        # central differences: at a kink of the model (two bounds of a
        # transfer equal) a parameter still shows its influence
        cols = []
        for i in range(len(v)):
            h = 1e-6 * max(abs(v[i]), 1.0)
            up, down = v.copy(), v.copy()
            up[i] += h
            down[i] -= h
            cols.append((residual(up) - residual(down)) / (2 * h))
        return residual(v), np.stack(cols, axis=1)

    r, jac = jacobian(x)
    live = np.linalg.norm(jac, axis=0) > 1e-9
    damping = 1e-3
    for _ in range(iterations):
        j = jac[:, live]
        a = j.T @ j
        step = np.linalg.lstsq(a + damping * np.diag(np.diag(a) + 1e-12), -j.T @ r, rcond=None)[0]
        trial = x.copy()
        trial[live] += step
        trial = np.maximum(trial, 1e-6)
        rt = residual(trial)
        if rt @ rt < r @ r:
            x, damping = trial, damping / 3
            r, jac = jacobian(x)
            live = np.linalg.norm(jac, axis=0) > 1e-9
            if np.max(np.abs(step) / np.maximum(np.abs(x[live]), 1.0)) < 1e-10:
                break
        else:
            damping *= 4
            if damping > 1e12:
                break
    fitted = parameters.Parameters.from_vector(x, "fit")
    return Fit(fitted, class_errors(benches, measured, predicted(benches, config, start)),
               class_errors(benches, measured, predicted(benches, config, fitted)),
               [n for n, ok in zip(names, live) if ok], [n for n, ok in zip(names, live) if not ok])
