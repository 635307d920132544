"""`vfpga demo`: a small float ONNX CNN, quantized with onnxruntime, compiled,
run on one emulated CNN core, and checked against the golden model and
against onnxruntime running the same quantized model; then two tenants
sharing the board with live re-allocations between them (demo_sharing)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from vfpga.runtime import tenants
from vfpga.runtime.cli.sharing import SharingResult, run_sharing
from vfpga.runtime.compiler import frontend
from vfpga.runtime.compiler.frontend.reference import OrtReference
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small


@dataclass
class Agreement:
    """Accelerator int8 outputs against a reference, over all inputs."""

    max_lsb: int
    exact_fraction: float
    top1_agree: int
    cosine: float
    inputs: int


def compare(ours: list[np.ndarray], theirs: list[np.ndarray]) -> Agreement:
    a = np.stack([o.astype(np.int32).ravel() for o in ours])
    b = np.stack([t.astype(np.int32).ravel() for t in theirs])
    diff = np.abs(a - b)
    af, bf = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = float(af @ bf / (np.linalg.norm(af) * np.linalg.norm(bf) or 1.0))
    top1 = int((a.argmax(axis=1) == b.argmax(axis=1)).sum())
    return Agreement(int(diff.max()), float((diff == 0).mean()), top1, cos, len(ours))


@dataclass
class DemoResult:
    golden_exact: int
    inputs: int
    vs_ort: Agreement  # onnxruntime, QDQ graph as written (DQ -> float op -> Q)
    vs_ort_fused: Agreement  # onnxruntime with its int8 kernel fusions
    ort_fused_vs_unfused: Agreement  # onnxruntime against itself, for scale
    modeled_cycles: int
    modeled_seconds: float
    host_seconds: float
    sharing: SharingResult | None = None  # None on a board with one core


def run_demo(board: str = "u200", n_inputs: int = 8, seed: int = 0, echo=print, headline: bool = False) -> DemoResult:
    """The demo; ``headline`` ends it with the public-cloud headline of
    `vfpga bench --quick` (compiles two zoo models on first use, about a minute)."""
    t0 = time.perf_counter()
    model = small.small_cnn(seed)
    qdq = frontend.quantize(model, small.calibration_inputs(32, seed + 1))
    graph = frontend.to_graph(qdq)
    t_quant = time.perf_counter() - t0

    ov = tenants.open(board, emulate=True)
    compiled = ov.compile(graph)
    tenant = ov.deploy(compiled, name="small_cnn")
    cfg = ov.config
    core = cfg["cnn_core"]

    out_name = graph.outputs[0]
    unfused = OrtReference(qdq, tensors=[out_name], optimize=False)
    fused = OrtReference(qdq, tensors=[out_name], optimize=True)
    ours, gold, ort_q, ort_f = [], [], [], []
    host = 0.0
    info = None
    for x in small.calibration_inputs(n_inputs, seed + 100):
        x_q = frontend.quantize_input(x, graph.tensors[graph.inputs[0]])
        (y,), info = tenant.run_quantized(x_q)
        host += info.host_seconds
        ours.append(y)
        gold.append(golden.run_graph(graph, x_q)[out_name])
        ort_q.append(unfused.run_hwc(x, [out_name])[out_name])
        ort_f.append(fused.run_hwc(x, [out_name])[out_name])
    exact = sum(bool(np.array_equal(a, b)) for a, b in zip(ours, gold))
    result = DemoResult(exact, n_inputs, compare(ours, ort_q), compare(ours, ort_f), compare(ort_f, ort_q),
                        info.modeled_cycles, info.modeled_seconds, host / n_inputs)

    mhz = cfg["clock_mhz"]
    echo(f"vfpga demo: small CNN on the {ov.mode} {board} "
         f"(1 of {core['count']} CNN cores, {core['icp']}x{core['ocp']} int8 MACs at {mhz} MHz)")
    echo(f"  model: {len(model.graph.node)} float ONNX nodes -> onnxruntime static QDQ quantization "
         f"(per-channel int8 weights, int8 activations) in {t_quant:.2f} s")
    one_core = sum(p.n_insns for p in compiled.parts if p.kind == "accel")
    echo(f"  compiled: {len(compiled.layers)} accelerator layers, {one_core} instructions on one core "
         f"({compiled.n_insns} with the tiling variants for more cores), segment "
         f"{compiled.segment_size / 1024:.0f} KiB, {compiled.compile_seconds * 1e3:.1f} ms")
    echo("")
    echo(f"  {'#':>2}  {'layer':<22} {'kind':<5} {'output HxWxC':<13} {'frames':>6} {'insns':>6} "
         f"{'MACs':>9} {'cycles':>8}  tiling")
    layer_cycles = tenant.layer_cycles()
    for li in compiled.layers:
        shape = "x".join(map(str, li.out_shape))
        echo(f"  {li.index:>2}  {li.name[:22]:<22} {li.kind:<5} {shape:<13} {li.frames:>6} {li.insns:>6} "
             f"{li.macs:>9} {layer_cycles.get(li.index, 0):>8}  {li.tiling}")
    util = tenant.schedules[0].utilisation()
    echo(f"  modeled: {result.modeled_cycles} cycles = {result.modeled_seconds * 1e6:.1f} us per image "
         f"(cycle model, emulation; unit busy: load {util['load']:.0%}, compute {util['compute']:.0%}, "
         f"save {util['save']:.0%})")
    echo(f"  emulation: {result.host_seconds * 1e3:.1f} ms host time per image (HLS C++ C-sim)")
    echo("")
    echo(f"  on {n_inputs} random inputs, final int8 logits:")
    echo(f"    vs golden model:            {exact}/{n_inputs} bit-exact")
    r = result.vs_ort
    echo(f"    vs onnxruntime (QDQ model): max {r.max_lsb} LSB, {r.exact_fraction:.1%} identical, "
         f"cosine {r.cosine:.5f}, top-1 {r.top1_agree}/{r.inputs}")
    r = result.vs_ort_fused
    echo(f"    vs onnxruntime int8 fused:  max {r.max_lsb} LSB, {r.exact_fraction:.1%} identical, "
         f"cosine {r.cosine:.5f}, top-1 {r.top1_agree}/{r.inputs}")
    r = result.ort_fused_vs_unfused
    echo(f"    (onnxruntime fused vs its own unfused QDQ run: max {r.max_lsb} LSB, {r.exact_fraction:.1%} identical;"
         " its int8 kernels round differently on this CPU)")
    ov.close()
    echo("")
    if cfg["cnn_core"]["count"] >= 2:
        result.sharing = run_sharing(board, seed=seed, echo=echo)
    else:
        echo(f"  (the {board} overlay has one CNN core: the sharing part of the demo needs two)")
    if headline:
        from vfpga.runtime.experiments import report

        echo("")
        echo("headline (modeled; `vfpga bench --quick` public-cloud splits: squeezenet as the small tenant, "
             "resnet50; `vfpga bench` for the full report):")
        echo(report.quick_headline())
    return result
