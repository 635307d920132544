"""The second half of `vfpga demo`: two tenants share the emulated board and
trade cores while their requests stream in.

Two quantized CNNs are deployed as tenants on disjoint core sets; one host
thread per tenant keeps submitting requests; while they run, the cores are
re-allocated twice (a change of core count, which runs the dynamic stage,
then a move to other cores of the same count, which only rewrites masks).
Every result is compared with the golden model, so a request lost,
duplicated or computed wrong shows up as a count below the total.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from vfpga.runtime import tenants
from vfpga.runtime.compiler import frontend
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small


@dataclass
class SharingResult:
    correct: int
    total: int
    reallocations: list  # tenants.Reallocation
    stats: dict  # name -> tenants.TenantStats


def _tenant_inputs(graph, n: int, seed: int):
    xs = [frontend.quantize_input(x, graph.tensors[graph.inputs[0]]) for x in small.calibration_inputs(n, seed)]
    return xs, [golden.run_graph(graph, x)[graph.outputs[0]] for x in xs]


def run_sharing(board: str = "u200", requests: int = 24, seed: int = 0, echo=print) -> SharingResult:
    specs = [("vision", small.small_cnn(seed), 8), ("flat", small.flatten_cnn(seed + 1), 4)]
    ov = tenants.open(board, emulate=True)
    try:
        deployed, inputs = {}, {}
        for name, model, k in specs:
            graph = frontend.to_graph(frontend.quantize(model, small.calibration_inputs(16, seed + 2)))
            deployed[name] = ov.deploy(ov.compile(graph, cache=False, progress=False), cores=k, name=name)
            inputs[name] = _tenant_inputs(graph, 6, seed + 10)
        n_cores = ov.n_cores
        echo(f"vfpga demo, sharing: two tenants on the {ov.mode} {board} ({n_cores} CNN cores)")
        for name, t in deployed.items():
            echo(f"  {name:<7} {len(t.compiled.layers):>2} layers, cores {t.cores}")

        results: dict[str, list] = {name: [] for name in deployed}
        progress = threading.Semaphore(0)

        def stream(name: str) -> None:
            t, (xs, _) = deployed[name], inputs[name]
            for i in range(requests):
                fut = t.submit_quantized(xs[i % len(xs)])
                results[name].append((i % len(xs), fut))
                fut.result(timeout=600)
                progress.release()

        threads = [threading.Thread(target=stream, args=(n,), daemon=True) for n in deployed]
        for th in threads:
            th.start()
        total = requests * len(deployed)
        plans = [(total // 3, {"vision": 4, "flat": 8}),  # core counts change: dynamic stage
                 (2 * total // 3, {"vision": list(range(n_cores - 4, n_cores))})]  # same count, other cores
        reallocations, done = [], 0
        for when, allocation in plans:
            while done < when:
                progress.acquire()
                done += 1
            r = ov.reallocate(allocation)
            reallocations.append(r)
            echo(f"  after {done:>2} of {total} requests: {r.describe()}")
            echo("      now: " + ", ".join(f"{n} on cores {cs}" for n, cs in r.after.items()))
        for th in threads:
            th.join(timeout=600)

        correct = 0
        for name, pairs in results.items():
            want = inputs[name][1]
            for i, fut in pairs:
                (y,), _info = fut.result()
                correct += bool(np.array_equal(y, want[i]))
        stats = ov.stats()
        echo(f"  results: {correct}/{total} bit-exact against the golden model "
             "(nothing lost, duplicated or wrong across the re-allocations)")
        echo(f"  {'tenant':<7} {'cores':>5} {'requests':>8} {'latency':>10} {'throughput':>12} {'util':>5} "
             f"{'DDR x':>6} {'host p50':>9}")
        for s in stats.values():
            echo(f"  {s.name:<7} {len(s.cores):>5} {s.requests:>8} {s.latency_ms * 1e3:>7.1f} us "
                 f"{s.throughput_rps:>8.0f} /s {s.utilisation:>5.0%} {s.ddr_slowdown:>6.3f} "
                 f"{s.host_latency_ms['p50']:>6.1f} ms")
        echo(f"  ({stats[next(iter(stats))].source}: latency, throughput and utilisation come from the "
             "dispatcher's clock, i.e. the cycle model; DDR x = frame time with the bank shared / alone; "
             "host p50 is measured emulation time)")
        return SharingResult(correct, total, reallocations, stats)
    finally:
        ov.close()
