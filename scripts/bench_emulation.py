#!/usr/bin/env python3
"""Emulation speed against onnxruntime, and the host overhead per request.

For ResNet-50, VGG-19 and SqueezeNet of the ONNX light model zoo (random
weights, quantized to QDQ by onnxruntime on two inputs), in one run on this
machine:

  * onnxruntime on the QDQ model, its default threads and one thread;
  * the emulated board (the HLS C++ as C-simulation, the driver and runtime
    as on a board) running the same model on k = 1, 2 and all host threads'
    worth of cores: the tenant holds k cores; frames the dispatcher issues
    in one advance run on up to min(k, host threads) host threads at once
    (a frame issued later waits for the earlier ones' results, see the
    README's Emulation speed);
  * ms per image (median of --runs) and the ratio to both onnxruntime
    figures; the process CPU time per image beside it (on a shared machine
    the wall time also counts the other processes);
  * the host overhead per request on the driver's path (RunInfo /
    stats()): submit to doorbell and completion record to result, p50 / p99
    in microseconds; the input's marshalling (part of the first half: a
    float input quantized, then folded or copied into the segment and
    synced), p50; the p50 of each request's two halves together, and of the
    two halves without the input's marshalling (the part that does not grow
    with the input's bytes); over --overhead-requests requests one at a time per
    model (--requests for a small CNN), for an int8 HWC input
    (submit_quantized) and for a float NCHW input (submit: quantized on the
    host first, the float output dequantized), beside the floor of the
    input's bytes: one memcpy of the folded input's size on this host, and
    the input's fold alone and the float input's quantization alone on warm
    caches. The
    same again on a timing-only emulated board (frames timed, not run): the
    host path without the C-sim's working set evicting the host's caches
    between requests, nearer to what the host CPU of a board sees; and on
    that board, int8 input, with the host idle for IDLE_S (about ResNet-50's
    C-sim per image) between requests, then with POLLUTE_BYTES of other
    memory written between them instead: what the C-sim board's figures
    pay for the wait and for the C-sim's working set, apart. The small CNN
    on the timing-only board too (without the idle and memory variants).
    Last, the run's figures beside the targets (class Targets): each model's
    ratio per k, and per board and input kind both halves of a request
    with and without the input's marshalling.

The emulator's loop polls for a host write for VFPGA_EMU_POLL_US (500 us
by default) before it sleeps; VFPGA_EMU_POLL_US=0 runs the same without
(driver/emulated_dispatcher.py). With --suite it also times the default
test suite (python -m pytest -q).
--loop python runs the emulated dispatcher's reference loop in Python
instead of the C++ one (VFPGA_EMU_LOOP); --models "" skips the models (the
small CNN's overhead alone).

    python scripts/bench_emulation.py [--models resnet50,vgg19,squeezenet] [--runs 5] [--suite] [--loop native|python]

Every figure is measured on this host; none is modeled.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

MODELS = ("resnet50", "vgg19", "squeezenet")


class Targets:
    """This run's figures beside the emulation's targets, printed last: the
    ratio to onnxruntime's default threads per model and k, and per model,
    board and input kind the p50 of a request's two halves with and without
    the input's marshalling."""

    RATIO = 3.0  # ResNet-50 within 3x of onnxruntime
    OVERHEAD_US = 100.0  # host overhead per request, p50

    def __init__(self):
        self.ratios: dict[str, dict[int, float]] = {}
        self.overheads: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}

    def recorder(self, model: str, board: str):
        """What :func:`_overheads` calls with an input kind's p50s."""
        return lambda kind, both, fixed: self.overheads.setdefault(model, {}).__setitem__((board, kind), (both, fixed))

    def lines(self) -> list[str]:
        out = [f"against the targets (ratio to onnxruntime's default threads within {self.RATIO:.0f}x; host overhead "
               f"per request p50 within {self.OVERHEAD_US:.0f} us):"]
        for model, by_k in self.ratios.items():
            out.append(f"  {model} emulation: " + ", ".join(f"k={k} {r:.1f}x" for k, r in by_k.items()))
        out.append("  host overhead p50, us, both halves of a request / without the input marshalling:")
        for model, by in self.overheads.items():
            out.append(f"  {model:<11} " + "; ".join(
                f"{board} board " + ", ".join(f"{kind} {by[board, kind][0]:.0f} / {by[board, kind][1]:.0f}"
                                             for kind in ("int8", "float") if (board, kind) in by)
                for board in ("timing-only", "C-sim") if any(b == board for b, _ in by)))
        return out


def _timed(fn, runs: int) -> tuple[float, float]:
    """(median wall seconds, mean process CPU seconds) of ``runs`` calls after a warm-up."""
    fn()
    wall = []
    c0 = time.process_time()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
    return statistics.median(wall), (time.process_time() - c0) / runs


def _ort(qdq, x, runs: int) -> dict[str, float]:
    import onnxruntime as ort

    out = {}
    for label, threads in (("default", 0), ("1 thread", 1)):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(qdq.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        out[label] = _timed(lambda s=sess, f=feed: s.run(None, f), runs)[0]
    return out


IDLE_S = 0.06  # the host's wait between requests in the idle figure
POLLUTE_BYTES = 64 << 20  # other memory written between requests in the polluted one


def _overhead(tenant, run, x, requests: int, between=None) -> tuple[str, float, float]:
    """submit -> doorbell and completion -> result of ``requests`` calls of
    ``run(x)``, one at a time (``between()`` after each): the line, and the
    p50 of both halves with and without the input's marshalling (us)."""
    for _ in range(requests):
        run(x)
        if between is not None:
            between()
    o = np.array(tenant.overheads()[-requests:]) * 1e6  # per request: the two halves, the input's marshalling
    (d50, r50, w50), (d99, r99, _) = np.percentile(o, 50, axis=0), np.percentile(o, 99, axis=0)
    both = o[:, 0] + o[:, 1]  # each request's two halves together, then the median
    both50, fixed50 = np.percentile(both, 50), np.percentile(both - o[:, 2], 50)
    return (f"submit->doorbell p50 {d50:.0f} / p99 {d99:.0f} us (input marshalling p50 {w50:.0f} us), completion->result "
            f"p50 {r50:.0f} / p99 {r99:.0f} us, both halves of a request p50 {both50:.0f} us, "
            f"without the input marshalling p50 {fixed50:.0f} us"), both50, fixed50


def _overheads(tenant, x, x_q, requests: int, where: str = "", record=None) -> list[str]:
    """The int8 and float inputs' overhead lines; ``record(input_kind, both, fixed)`` keeps their p50s."""
    lines = []
    for kind, run, arg in (("int8", tenant.run_quantized, x_q), ("float", tenant.run, x)):
        text, both, fixed = _overhead(tenant, run, arg, requests)
        lines.append(f"  host overhead{where}, {kind} input ({requests} requests): {text}")
        if record is not None:
            record(kind, both, fixed)
    return lines


def _timing_only_overheads(board: str, model, x, requests: int, calibration=None, between: bool = True,
                           record=None) -> list[str]:
    """The overheads on a timing-only emulated board (the same host path; no
    frame runs); ``between``: also with the host idle, then other memory
    written, between requests; ``record``: as in :func:`_overheads`."""
    from vfpga.driver.emulated import EmulatedDevice
    from vfpga.runtime import tenants
    from vfpga.runtime.compiler import frontend

    ov = tenants.Accelerator(board, device=EmulatedDevice(board, compute=False))
    try:
        tenant = ov.deploy(model, cores=1, name="timing_only", calibration=calibration)
        x_q = frontend.quantize_input(x, tenant.graph.tensors[tenant.graph.inputs[0]])
        for _ in range(3):  # the loop times each frame once
            tenant.run_quantized(x_q)
        lines = _overheads(tenant, x, x_q, requests, " on a timing-only board", record)
        if not between:
            return lines
        other = np.zeros(POLLUTE_BYTES, np.uint8)
        for what, between in ((f"the host idle {IDLE_S * 1e3:.0f} ms", lambda: time.sleep(IDLE_S)),
                              (f"{POLLUTE_BYTES >> 20} MB of other memory written",
                               lambda: np.add(other, 1, out=other))):
            lines.append(f"  host overhead on a timing-only board, int8 input, {what} between requests ({requests} "
                         f"requests): {_overhead(tenant, tenant.run_quantized, x_q, requests, between)[0]}")
        return lines
    finally:
        ov.close()


def _memcpy_us(nbytes: int) -> float:
    """Median microseconds of one numpy copy of ``nbytes`` on this host (buffers already touched)."""
    src, dst = np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)
    return _timed(lambda: np.copyto(dst, src), 200)[0] * 1e6


def _fold_us(fold, x_q) -> float:
    """Median microseconds of the input fold alone (FoldWriter.write into a buffer, warm caches)."""
    writer = fold.writer(0)
    out = np.empty(writer.nbytes, np.uint8)
    return _timed(lambda: writer.write(x_q, out), 200)[0] * 1e6


def _quantize_us(x, tensor) -> float:
    """Median microseconds of quantize_input alone (the float input to int8 HWC, warm caches)."""
    from vfpga.runtime.compiler import frontend

    return _timed(lambda: frontend.quantize_input(x, tensor), 200)[0] * 1e6


def bench_model(ov, name: str, runs: int, ks: list[int], requests: int, board: str, targets: Targets) -> list[str]:
    from vfpga.runtime.compiler import frontend
    from vfpga.runtime.models import zoo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = zoo.load(name, seed=0)
        xs = zoo.random_inputs(model, 3, seed=1)
        qdq = frontend.quantize(model, xs[:2])
    ort_s = _ort(qdq, xs[2], runs)
    t0 = time.perf_counter()
    tenant = ov.deploy(qdq, cores=ks[0], name=name)  # the compile cache makes a second run skip compiling
    deploy_s = time.perf_counter() - t0
    x_q = frontend.quantize_input(xs[2], tenant.graph.tensors[tenant.graph.inputs[0]])
    macs = tenant.mac_share()
    lines = [f"{name}: {macs.accel_macs / 1e9:.2f} GMAC on the accelerator ({macs.share * 100:.1f} %), deploy "
             f"{deploy_s:.1f} s; onnxruntime {ort_s['default'] * 1e3:.1f} ms (default threads), "
             f"{ort_s['1 thread'] * 1e3:.1f} ms (1 thread)"]
    ref = None
    for k in ks:
        if k != tenant.k:
            ov.reallocate({name: k})
        wall, cpu = _timed(lambda: tenant.run_quantized(x_q), runs)
        outs, _ = tenant.run_quantized(x_q)
        ref = ref or outs
        assert all(np.array_equal(a, b) for a, b in zip(outs, ref)), f"{name}: k={k} output differs from k={ks[0]}"
        threads = min(k, os.cpu_count() or 1)
        targets.ratios.setdefault(name, {})[k] = wall / ort_s['default']
        lines.append(f"  k={k:<2} (up to {threads} host thread{'s' if threads > 1 else ''}): {wall * 1e3:7.1f} ms/image "
                     f"= {wall / ort_s['default']:4.1f}x onnxruntime default, {wall / ort_s['1 thread']:4.1f}x "
                     f"1 thread   (process CPU {cpu * 1e3:.0f} ms/image)")
    p = tenant.compiled.input
    folded = p.shape[0] * p.shape[1] * p.shape[2]
    fold = tenant.compiled.input_fold
    quantize_us = _quantize_us(xs[2], tenant.graph.tensors[tenant.graph.inputs[0]])
    lines.append(f"  input: {xs[2].nbytes / 1e3:.0f} KB float, {folded / 1e3:.0f} KB int8 in the segment"
                 f"{' (folded)' if fold else ''}; one memcpy of {folded / 1e3:.0f} KB on this "
                 f"host: {_memcpy_us(folded):.0f} us" + (f"; the fold alone: {_fold_us(fold, x_q):.0f} us" if fold else "")
                 + f"; the float input's quantization alone: {quantize_us:.0f} us")
    lines += _overheads(tenant, xs[2], x_q, requests, record=targets.recorder(name, "C-sim"))
    ov.remove(name)
    return lines + _timing_only_overheads(board, qdq, xs[2], requests, record=targets.recorder(name, "timing-only"))


def small_cnn_overhead(ov, requests: int, board: str, targets: Targets) -> list[str]:
    from vfpga.runtime.compiler import frontend
    from vfpga.runtime.models import small

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = small.small_cnn(seed=0)
        rng = np.random.default_rng(0)
        shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
        tenant = ov.deploy(model, cores=1, name="small_cnn", calibration=calib)
    x_q = frontend.quantize_input(calib[0], tenant.graph.tensors[tenant.graph.inputs[0]])
    t0 = time.perf_counter()
    lines = _overheads(tenant, calib[0], x_q, requests, record=targets.recorder("small_cnn", "C-sim"))
    per = (time.perf_counter() - t0) / (2 * requests)
    ov.remove("small_cnn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines += _timing_only_overheads(board, model, calib[0], requests, calibration=calib, between=False,
                                        record=targets.recorder("small_cnn", "timing-only"))
    return [f"small_cnn, requests one at a time ({per * 1e6:.0f} us each end to end):"] + lines


def suite_time() -> str:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = next((ln for ln in reversed(proc.stdout.splitlines()) if " passed" in ln), "no summary")
    return f"default test suite (python -m pytest -q): {wall:.0f} s wall, {summary.strip()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--board", default="u200")
    p.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    p.add_argument("--requests", type=int, default=500, help="small-CNN requests for the overhead figure")
    p.add_argument("--overhead-requests", type=int, default=30,
                   help="requests per model and input kind for its overhead figure")
    p.add_argument("--suite", action="store_true", help="also time the default test suite")
    p.add_argument("--loop", choices=("native", "python"), default=None,
                   help="the emulated dispatcher's loop (default: VFPGA_EMU_LOOP, else native)")
    a = p.parse_args(argv)
    if a.loop:
        os.environ["VFPGA_EMU_LOOP"] = a.loop

    import onnxruntime

    from vfpga.runtime import tenants

    threads = os.cpu_count() or 1
    ks = sorted({1, 2, threads})
    ov = tenants.open(a.board)
    targets = Targets()
    build = getattr(ov.device, "build", "board")
    loop = getattr(getattr(ov.device, "dispatcher", None), "loop", None)
    print(f"host: {threads} threads, load average {os.getloadavg()[0]:.1f} at start (a shared machine's wall "
          f"times vary from run to run); emulation library: {build}"
          + (f", dispatcher loop: {loop}" if loop else "") + f"; onnxruntime {onnxruntime.__version__}")
    print(f"board {a.board}; k = cores the tenant holds (all = {threads} host threads); median of {a.runs} runs")
    for name in filter(None, a.models.split(",")):
        for line in bench_model(ov, name, a.runs, ks, a.overhead_requests, a.board, targets):
            print(line, flush=True)
    for line in small_cnn_overhead(ov, a.requests, a.board, targets):
        print(line, flush=True)
    for line in targets.lines():
        print(line)
    ov.close()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if a.suite:
        print(suite_time(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
