"""The user's view: open an accelerator, deploy models as tenants, run them.

    ov = vfpga.open("u200")                  # the emulated board here, a real one where there is one
    net = ov.deploy("model.onnx", cores=4, name="vision")
    y = net.run(x)                           # float in, float out, like onnxruntime
    fut = net.submit(x); y = fut.result()    # or asynchronously
    ov.reallocate({"vision": 8})             # live: nothing in flight is lost
    ov.stats()                               # per tenant: requests, latency, throughput, utilisation

Every tenant gets a dispatcher context, a segment of device memory (its
program, weights, activations, request ring and dispatch programs) and a
set of CNN cores. The level-1 dispatcher runs its requests on those cores;
re-allocation changes the set while requests are in flight.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

import onnx
import pynq

from vfpga import overlay
from vfpga.driver import emulated
from vfpga.driver.dispatcher import Dispatcher
from vfpga.driver.tenant_context import CompletionHandler
from vfpga.overlay.vfpga_overlay import OverlayError, VfpgaOverlay, find_dispatcher
from vfpga.runtime.compiler import cache as compile_cache
from vfpga.runtime.compiler import cnn_batch, mixed, rnn, static
from vfpga.runtime.errors import (  # noqa: F401
    ContextError,
    DeployError,
    MaskRejected,
    QueueFull,
    TenantFault,
    TenantRemoved,
)
from vfpga.runtime.tenants.cnn_batch_tenant import CnnBatchTenant
from vfpga.runtime.tenants.mixed_tenant import MixedTenant, front_slots
from vfpga.runtime.tenants.rnn_tenant import RnnTenant
from vfpga.runtime.tenants.tenant import RunInfo, Tenant, _mask  # noqa: F401 - RunInfo is part of the API
from vfpga.runtime.tenants.throughput import check_throughput_options


def board_present() -> bool:
    """Whether this host has a real PYNQ device (not only the emulated one)."""
    return any(not isinstance(d, emulated.EmulatedDevice) for d in pynq.Device.devices)


def _pick_device(board: str, emulate: bool | None):
    """The emulated device, or the real board's device with the vfpga overlay
    loaded (``emulate=None``: a real PYNQ device if there is one). Says which."""
    if emulate is None:
        emulate = not board_present()
    if emulate:
        return emulated.EmulatedDevice(board)
    try:
        ov = VfpgaOverlay(board=board)
    except OverlayError as e:
        raise DeployError(f"board mode: {e}") from e
    logging.getLogger("vfpga").info("vfpga: %s on the board, overlay %s", board, ov.bitfile_name)
    return ov.device


@dataclass
class TenantStats:
    """One tenant's figures. ``source`` says where the device figures come
    from: "modeled" (emulation: the cycle model's clock) or "measured" (a
    board's cycle counter). Host figures are always measured on the host."""

    name: str
    cores: list[int]
    requests: int  # completed OK (host count)
    failed: int
    source: str
    latency_ms: float | None  # device latency per request, mean of the recent window (modeled or measured)
    throughput_rps: float | None  # 1 / device time per request: one run at a time, a batch's run shared by its requests
    utilisation: float | None  # busy core-cycles / (request cycles x cores held), since the core count last changed
    host_latency_ms: dict  # measured on the host: mean, p50, p99 of the last tenant.LATENCY_WINDOW requests
    frames: int
    core_cycles: int
    ddr_slowdown: float | None  # emulation only: frame cycles as run / with the DDR bank to itself
    mac_share: float | None = None  # the model's MACs on the accelerator (the rest on the host)
    host_cpu_ms: float | None = None  # measured per request: the CPU parts (mean)
    # measured host overhead per request on the driver's path, p50 / p99 in microseconds of the recent window:
    # {"submit_to_doorbell": {...}, "completion_to_result": {...}, "input_marshal": {...}} (the input's
    # marshalling, RunInfo.input_marshal_s: part of the first, the part that grows with the input's bytes)
    host_overhead_us: dict = field(default_factory=dict)


@dataclass
class Reallocation:
    """What one reallocate() did and how long each step took."""

    before: dict[str, list[int]]
    after: dict[str, list[int]]
    retargeted: list[str]  # tenants whose core count changed (dynamic stage run)
    dynamic_stage_s: float  # host: plan + program upload, all retargeted tenants
    release_s: float  # host: mask writes of the shrinking tenants until applied
    drain_s: float  # host: until released cores finished their frames in flight
    acquire_s: float  # host: mask writes of the growing tenants until applied
    total_s: float
    drain_cycles: int  # dispatcher clock from release to drained (modeled in emulation)
    source: str

    def describe(self) -> str:
        moves = ", ".join(f"{n}: {len(self.before[n])}->{len(self.after[n])} cores" for n in self.after)
        return (f"reallocate ({moves}): total {self.total_s * 1e3:.2f} ms host = dynamic stage "
                f"{self.dynamic_stage_s * 1e3:.2f} ms + release {self.release_s * 1e3:.2f} ms + drain "
                f"{self.drain_s * 1e3:.2f} ms + acquire {self.acquire_s * 1e3:.2f} ms; drain {self.drain_cycles} "
                f"cycles ({self.source})")


class Accelerator:
    """One vfpga overlay (emulated or on a board) shared by tenants."""

    def __init__(self, board: str = "u200", emulate: bool | None = None, device=None, stripe_segments: bool = True):
        """``stripe_segments``: on a board that stripes segments over its banks
        (``ddr.segment_banks``: u200, u200_bigcore), every tenant's segment is
        word-interleaved over them, so each tenant's frames have every bank's
        bandwidth, shared with the others; False keeps each segment in one
        bank (a bank's bandwidth then serves only the tenants placed on it:
        bandwidth isolation by placement). The same bitstream does both (the
        tenant control bit VF_TENANT_STRIPED)."""
        self.config = overlay.load(board)
        self.board = self.config["name"]
        # striped segments: one buffer per bank, the layout of hls/include/vfpga_ddr.h (driver/segment.py)
        self.stripe = overlay.config.segment_stripe(self.config) if stripe_segments else None
        self._own_device = device is None
        self.device = device if device is not None else _pick_device(board, emulate)
        self.emulated = isinstance(self.device, emulated.EmulatedDevice)
        try:  # by VLNV on Zynq overlays, by kernel name on Alveo shells
            _, found = find_dispatcher(self.device.ip_dict, self.config)
        except OverlayError as e:
            raise DeployError(f"{self.device!r}: {e}") from e
        self.dispatcher = Dispatcher(found, config=self.config)
        ddr = self.config["ddr"]
        self.dispatcher.start(ddr["base_address"], (ddr["banks"] - 1) * ddr["bank_stride"] + ddr["bank_bytes"])
        self.n_cores = self.dispatcher.n_cores
        self.n_rnn = int(self.config["rnn_core"]["count"])
        if (self.n_cores != self.config["cnn_core"]["count"] or self.dispatcher.read("cores") != self.n_cores
                or self.dispatcher.read("rnn_cores") != self.n_rnn):
            raise DeployError(f"the dispatcher drives {self.dispatcher.read('cores')} CNN and "
                              f"{self.dispatcher.read('rnn_cores')} RNN cores, the {self.board} config "
                              f"{self.config['cnn_core']['count']} and {self.n_rnn}")
        self.completions = CompletionHandler(self.dispatcher)
        self._lock = threading.RLock()  # tenants, core ownership, contexts
        self._owner: dict[int, str] = {}
        self._contexts: dict[int, str] = {}
        self.tenants: dict[str, Tenant] = {}
        self.mixed: dict[str, MixedTenant] = {}  # CNN + RNN models: their parts are in tenants
        self._reserved: set[str] = set()  # names of tenants being deployed
        self.closed = False

    @property
    def mode(self) -> str:
        return "emulated" if self.emulated else "board"

    @property
    def cores(self) -> list[int]:
        """The CNN cores of the pool (physical indices)."""
        return list(range(self.n_cores))

    @property
    def rnn_cores(self) -> list[int]:
        """The RNN cores of the pool (physical indices, after the CNN cores)."""
        return list(range(self.n_cores, self.n_cores + self.n_rnn))

    def _pool(self, kind: str) -> list[int]:
        return self.cores if kind == "cnn" else self.rnn_cores

    @property
    def free_cores(self) -> list[int]:
        with self._lock:
            return [c for c in self.cores if c not in self._owner]

    @property
    def free_rnn_cores(self) -> list[int]:
        with self._lock:
            return [c for c in self.rnn_cores if c not in self._owner]

    def compile(self, model, calibration=None, input_shape=None, *, cache=None, progress=None,
                fallback: bool = True) -> static.CompiledModel:
        """Static stage: ONNX model (path, bytes or proto, float or QDQ), layer graph or IFP file
        -> program. ONNX models go through the compile cache (cache=False skips it); see
        :func:`compile_model`."""
        if isinstance(model, static.CompiledModel):
            if model.board != self.board:
                raise DeployError(f"model compiled for {model.board}, this accelerator is {self.board}")
            return model
        return compile_model(model, self.config, calibration, input_shape, cache=cache, progress=progress,
                             fallback=fallback)

    # ---- placement ------------------------------------------------------------------------------
    def _core_bank(self, core: int) -> int:
        if core < self.n_cores:
            return self.config["cnn_core"]["banks"][core]
        return self.config["rnn_core"]["banks"][core - self.n_cores]

    def _pick_bank(self) -> int:
        """The DDR bank with the most free memory where the device reports it
        per bank (the emulated device), else the one holding the fewest bytes
        of this accelerator's tenants: either way tenants' DDR traffic spreads."""
        if self.stripe is not None:
            return 0  # a striped segment spans banks 0 .. ports-1 from bank 0 on
        banks = getattr(self.device, "banks", None)
        if banks:
            return max(range(len(banks)), key=lambda b: (banks[b].free_bytes, -b))
        used = [0] * int(self.config["ddr"]["banks"])
        for t in self.tenants.values():
            used[t.segment.bank] += t.segment.size
        return min(range(len(used)), key=lambda b: (used[b], b))

    def _pick_cores(self, k: int, bank: int, free: list[int]) -> list[int]:
        """k of ``free``: the cores wired to ``bank`` first, then the lowest indices."""
        return sorted(sorted(free, key=lambda c: (self._core_bank(c) != bank, c))[:k])

    def deploy(self, model, cores: int = 1, name: str | None = None, calibration=None,
               input_shape=None, fallback: bool = True, max_pending: int = 64, max_batch: int = 1,
               max_delay_us: float = 0.0, max_inflight: int = 1) -> Tenant:
        """Compiles ``model`` (or takes it compiled), gives it ``cores``
        cores, a dispatcher context and a segment. CNNs get CNN cores; models
        with ONNX LSTM/GRU nodes get RNN cores (an RnnTenant: ``run`` takes
        the ONNX feeds). Ops the CNN cores lack run on the host through
        onnxruntime unless ``fallback=False``, which rejects them instead.
        ``max_batch`` > 1 (CNN models, RNN models of batch 1): requests
        arriving within ``max_delay_us`` of each other run together, up to
        max_batch (a CNN's convolutions load their weights once per batch).
        ``max_inflight`` > 1 (CNN models): up to that many requests in flight,
        each on its own activation slot of the segment."""
        is_mixed = isinstance(model, mixed.CompiledMixed) or mixed_model(model)
        check_throughput_options("mixed" if is_mixed else "rnn" if rnn_model(model) else "cnn", self.config,
                                 max_batch, max_delay_us, max_inflight)
        if is_mixed:
            return self._deploy_mixed(model, cores, name, calibration, input_shape, fallback, max_pending,
                                      max_batch, max_delay_us, max_inflight)
        if not isinstance(cores, int) or cores < 1:
            raise DeployError(f"cores must be a positive integer, not {cores!r}")
        kind = "rnn" if rnn_model(model) else "cnn"
        pool = self._pool(kind)
        if cores > len(pool):
            raise DeployError(f"asked for {cores} {kind.upper()} cores; the {self.board} pool has {len(pool)}")
        if kind == "rnn":
            compiled = model if isinstance(model, rnn.CompiledRnn) else rnn.compile_rnn(
                model, self.config, calibration, input_shape)
            if compiled.board != self.board:
                raise DeployError(f"model compiled for {compiled.board}, this accelerator is {self.board}")
            try:  # every batch size compiled now, before any core is taken
                batched = rnn.compile_batched(compiled, max_batch) if max_batch > 1 else None
            except rnn.RnnCompileError as e:
                raise DeployError(f"cannot batch this model (max_batch={max_batch}): {e}") from e
        else:
            compiled = self.compile(model, calibration, input_shape, fallback=fallback)
            try:  # every batch size compiled now, before any core is taken
                batched = cnn_batch.compile_batched(compiled, max_batch, self.config) if max_batch > 1 else None
            except (cnn_batch.BatchError, static.CompileError) as e:
                raise DeployError(f"cannot batch this model (max_batch={max_batch}): {e}") from e
        with self._lock:
            self._check_open()
            name = name or f"tenant{len(self.tenants)}"
            if name in self.tenants or name in self._reserved:
                raise DeployError(f"a tenant named {name!r} is already deployed")
            free = [c for c in pool if c not in self._owner]
            if len(free) < cores:
                raise DeployError(f"asked for {cores} {kind.upper()} cores, {len(free)} free "
                                  f"({len(pool) - len(free)} held by "
                                  f"{sorted({self._owner[c] for c in pool if c in self._owner})}); "
                                  "remove a tenant or reallocate first")
            contexts = [t for t in range(self.dispatcher.n_tenants) if t not in self._contexts]
            if not contexts:
                raise DeployError(f"all {self.dispatcher.n_tenants} dispatcher tenant contexts are in use by "
                                  f"{sorted(self._contexts.values())}; remove a tenant first")
            bank = self._pick_bank()
            chosen = self._pick_cores(cores, bank, free)
            for c in chosen:
                self._owner[c] = name
            self._contexts[contexts[0]] = name
            self._reserved.add(name)
        try:
            if kind == "rnn":
                tenant = RnnTenant(self, name, compiled, contexts[0], chosen, bank, max_pending=max_pending,
                                   batched=batched, max_delay_us=max_delay_us)
            elif batched is not None:
                tenant = CnnBatchTenant(self, name, batched, contexts[0], chosen, bank, max_pending=max_pending,
                                        max_delay_us=max_delay_us)
            else:
                tenant = Tenant(self, name, compiled, contexts[0], chosen, bank, max_pending=max_pending,
                                max_inflight=max_inflight)
        except BaseException:
            with self._lock:
                self._release(name)
            raise
        with self._lock:
            self._reserved.discard(name)
            self.tenants[name] = tenant
        return tenant

    def _deploy_mixed(self, model, cores, name, calibration, input_shape, fallback, max_pending, max_batch=1,
                      max_delay_us=0.0, max_inflight=1) -> MixedTenant:
        """Convolutions before LSTM/GRU layers: the front end on ``cores``
        CNN cores (tenant ``<name>.cnn``), the recurrent part on as many RNN
        cores as are free up to ``cores`` (``<name>.rnn``); ``cores`` may
        also be {"cnn": a, "rnn": b}. ``max_inflight``: requests in the
        pipeline through both parts, half of them (rounded up) in flight on
        the front end's cores; ``max_batch``, ``max_delay_us``: the RNN
        part's batching."""
        kc, kr = (cores.get("cnn", 1), cores.get("rnn", 1)) if isinstance(cores, dict) else (cores, None)
        if not isinstance(kc, int) or kc < 1:
            raise DeployError(f"cores must be a positive integer, not {cores!r}")
        if kr is None:
            kr = max(1, min(kc, len(self.free_rnn_cores)))
        compiled = model if isinstance(model, mixed.CompiledMixed) else mixed.compile_mixed(
            model, self.config, calibration, input_shape, fallback=fallback)
        if compiled.board != self.board:
            raise DeployError(f"model compiled for {compiled.board}, this accelerator is {self.board}")
        name = name or f"tenant{len(self.tenants)}"
        if name in self.mixed:
            raise DeployError(f"a tenant named {name!r} is already deployed")
        front = self.deploy(compiled.front, cores=kc, name=f"{name}.cnn", fallback=fallback, max_pending=max_pending,
                            max_inflight=front_slots(max_inflight))
        try:
            recurrent = self.deploy(compiled.recurrent, cores=kr, name=f"{name}.rnn", max_pending=max_pending,
                                    max_batch=max_batch, max_delay_us=max_delay_us)
        except BaseException:
            self.remove(front)
            raise
        t = MixedTenant(self, name, compiled, front, recurrent, max_inflight=max_inflight)
        self.mixed[name] = t
        return t

    def _release(self, name: str) -> None:
        self._owner = {c: n for c, n in self._owner.items() if n != name}
        self._contexts = {t: n for t, n in self._contexts.items() if n != name}
        self.tenants.pop(name, None)
        self._reserved.discard(name)

    def _check_open(self) -> None:
        if self.closed:
            raise DeployError("this accelerator has been closed")

    def _tenant(self, tenant) -> Tenant:
        return find_tenant(self.tenants, tenant)

    # ---- re-allocation ------------------------------------------------------------------------------
    def _targets(self, allocation: dict) -> dict[str, list[int]]:
        """Core sets after ``allocation`` ({tenant: count or list of cores});
        tenants not named keep theirs. Counts keep as many current cores as
        they can and take free ones wired to the tenant's bank first."""
        named = {self._tenant(t).name: v for t, v in allocation.items()}
        target = {n: list(t.cores) for n, t in self.tenants.items() if n not in named}
        explicit = {n: sorted(int(c) for c in v) for n, v in named.items() if not isinstance(v, int)}
        counts = {n: v for n, v in named.items() if isinstance(v, int)}
        for n, cs in explicit.items():
            pool = self._pool(self.tenants[n].kind)
            bad = [c for c in cs if c not in pool]
            if bad or len(set(cs)) != len(cs) or not cs:
                raise DeployError(f"tenant {n!r}: core list {cs} must name distinct {self.tenants[n].kind.upper()} "
                                  f"cores of {pool[0]}..{pool[-1]}")
        for n, k in counts.items():
            if k < 1:
                raise DeployError(f"tenant {n!r}: a tenant holds at least one core, not {k}")
        target.update(explicit)
        taken = {c for cs in target.values() for c in cs}
        if len(taken) != sum(len(cs) for cs in target.values()):
            raise DeployError(f"core sets overlap: {target}")
        for kind in ("cnn", "rnn"):
            pool = self._pool(kind)
            need = sum(k for n, k in counts.items() if self.tenants[n].kind == kind)
            have = len([c for c in taken if c in pool])
            if have + need > len(pool):
                raise DeployError(f"asked for {have + need} {kind.upper()} cores in all; the {self.board} pool has "
                                  f"{len(pool)}")
        for n, k in counts.items():  # shrinking tenants first keep their own cores
            keep = [c for c in self.tenants[n].cores if c not in taken][:k]
            target[n] = keep
            taken.update(keep)
        for n, k in sorted(counts.items()):
            missing = k - len(target[n])
            if missing:
                free = [c for c in self._pool(self.tenants[n].kind) if c not in taken]
                more = self._pick_cores(missing, self.tenants[n].segment.bank, free)
                target[n] = sorted(target[n] + more)
                taken.update(more)
        return target

    def reallocate(self, allocation: dict) -> Reallocation:
        """Changes tenants' cores live: ``{"vision": 8, rnn: [12, 13]}`` (a
        count, or the exact cores). Requests in flight finish; frames never
        move mid-run. A changed count runs only the dynamic stage; a move to
        other cores of the same count needs nothing but the masks."""
        t0 = time.perf_counter()
        with self._lock:
            self._check_open()
            before = {n: list(t.cores) for n, t in self.tenants.items()}
            target = self._targets(allocation)
            tenants = {n: self.tenants[n] for n in target}
            # tenants whose cores keep state between frames change between requests only
            held = [t for n, t in sorted(tenants.items()) if t.needs_hold and target[n] != before[n]]
            for t in held:
                t.hold().acquire()
        try:
            return self._reallocate(t0, before, target, tenants)
        finally:
            for t in held:
                t.hold().release()

    def _reallocate(self, t0, before, target, tenants) -> Reallocation:
        with self._lock:
            # 1. dynamic stage where the count changes
            retargeted = [n for n in target if len(target[n]) != len(before[n])]
            for n in retargeted:
                tenants[n].retarget(len(target[n]))
            t1 = time.perf_counter()
            # 2. release: every tenant drops the cores it is losing
            released = 0
            clock0 = self.dispatcher.read("cycles")
            for n, t in tenants.items():
                keep = [c for c in before[n] if c in target[n]]
                if keep != before[n]:
                    t.context.set_mask(_mask(keep))
                    released |= _mask(c for c in before[n] if c not in target[n])
            t2 = time.perf_counter()
            # 3. drain: released cores finish the frames they had
            deadline = time.monotonic() + 60
            while self.dispatcher.read("busy_cores") & released:
                if time.monotonic() > deadline:
                    raise ContextError(f"released cores {released:#x} still busy after 60 s")
                time.sleep(20e-6)
            drain_cycles = self.dispatcher.read("cycles") - clock0 if released else 0
            t3 = time.perf_counter()
            # 4. acquire
            for n, t in tenants.items():
                if target[n] != [c for c in before[n] if c in target[n]]:
                    t.context.set_mask(_mask(target[n]))
                if len(target[n]) != len(before[n]):
                    regs = t.context.counters()
                    t.util_base = (regs["core_cycles"], regs["request_cycles"])
                t.cores = list(target[n])
            self._owner = {c: n for n, cs in target.items() for c in cs}
            t4 = time.perf_counter()
        return Reallocation(before, {n: list(cs) for n, cs in target.items()}, retargeted, t1 - t0, t2 - t1,
                            t3 - t2, t4 - t3, t4 - t0, drain_cycles, "modeled" if self.emulated else "measured")

    # ---- figures --------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, TenantStats]:
        """Per tenant: requests, device latency and throughput (modeled in
        emulation, measured on a board), core utilisation, host latency."""
        out = {}
        source = "modeled" if self.emulated else "measured"
        hz = float(self.config["clock_mhz"]) * 1e6
        disp = getattr(self.device, "dispatcher", None) if self.emulated else None
        with self._lock:
            tenants = list(self.tenants.values())
        for t in tenants:
            regs = t.context.counters()
            host, modeled = t.latencies()
            lat = [c / hz for c in modeled]
            mean = statistics.fmean(lat) if lat else None
            per = t.device_cycles_per_request()
            host_ms = _percentiles(host, 1e3, mean=True)
            overheads = t.overheads()
            host_us = {key: _percentiles([o[i] for o in overheads if o[i] == o[i]], 1e6)  # (NaN: not timed)
                       for i, key in enumerate(("submit_to_doorbell", "completion_to_result", "input_marshal"))
                       } if overheads else {}
            # over the requests since the core count last changed (one spanning the change counts whole)
            busy, held = regs["core_cycles"] - t.util_base[0], regs["request_cycles"] - t.util_base[1]
            util = busy / (held * t.k) if held > 0 else None
            slowdown = None
            if disp is not None:
                solo = int(disp.timeline.tenant_solo_cycles[t.context.index])
                slowdown = int(disp.timeline.tenant_frame_cycles[t.context.index]) / solo if solo else None
            cpu = list(t.host_cpu_seconds)
            out[t.name] = TenantStats(t.name, list(t.cores), t.requests, t.failed, source,
                                      mean * 1e3 if mean else None, hz / per if per else None, util, host_ms,
                                      regs["frames"], regs["core_cycles"], slowdown, t.mac_share().share,
                                      statistics.fmean(cpu) * 1e3 if cpu else None, host_us)
        return out

    # ---- removal -------------------------------------------------------------------------------------------------
    def remove(self, tenant) -> None:
        """Removes a tenant: queued requests fail with TenantRemoved, the one
        in flight finishes, its cores, context and memory are freed. A
        mixed (CNN + RNN) tenant removes both its parts."""
        key = tenant if isinstance(tenant, str) else getattr(tenant, "name", None)
        if isinstance(tenant, MixedTenant) or key in self.mixed:
            m = self.mixed.pop(key)
            m._shutdown()
            for p in m.parts:
                self.remove(p)
            return
        with self._lock:
            t = self._tenant(tenant)
        try:
            t._shutdown()
        finally:
            with self._lock:
                self._release(t.name)

    def close(self) -> None:
        """Removes every tenant and stops the dispatcher."""
        if self.closed:
            return
        for name in list(self.mixed):
            self.remove(name)
        for name in list(self.tenants):
            self.remove(name)
        self.closed = True
        self.completions.stop()
        self.dispatcher.stop()
        if self._own_device and hasattr(self.device, "close"):
            self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _percentiles(values: list[float], scale: float, mean: bool = False) -> dict[str, float]:
    """p50 and p99 (and the mean) of ``values`` times ``scale``; {} for none."""
    if not values:
        return {}
    v = sorted(values)
    out = {"mean": statistics.fmean(v) * scale} if mean else {}
    out.update(p50=v[len(v) // 2] * scale, p99=v[min(len(v) - 1, int(0.99 * len(v)))] * scale)
    return out


def mixed_model(model) -> bool:
    """Whether ``model`` (path, bytes or proto) has convolutions (more than
    layout ops) before its first LSTM/GRU node."""
    if not rnn_model(model) or isinstance(model, rnn.CompiledRnn):
        return False
    try:
        proto = model if isinstance(model, onnx.ModelProto) else (
            onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model))
    except Exception:  # noqa: BLE001 - rnn_model read it already
        return False
    return mixed.is_mixed(proto)


def find_tenant(tenants: dict, tenant):
    """``tenant`` (a name, or an object with one) among ``tenants``; DeployError naming those there are."""
    name = tenant if isinstance(tenant, str) else tenant.name
    t = tenants.get(name)
    if t is None:
        raise DeployError(f"no tenant named {name!r}; deployed: {sorted(tenants)}")
    return t


def rnn_model(model) -> bool:
    """Whether ``model`` is for the RNN cores: a CompiledRnn, or an ONNX model
    (path, bytes or proto) with LSTM/GRU nodes."""
    if isinstance(model, rnn.CompiledRnn):
        return True
    if isinstance(model, (bytes, onnx.ModelProto)) or (
            isinstance(model, (str, os.PathLike)) and str(model).endswith(".onnx") and os.path.exists(model)):
        try:
            proto = model if isinstance(model, onnx.ModelProto) else (
                onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model))
        except Exception:  # noqa: BLE001 - not a readable model: the CNN front end names the problem
            return False
        return any(n.op_type in rnn.CELLS for n in proto.graph.node)
    return False


def compile_model(model, board="u200", calibration=None, input_shape=None, *, cache=None, progress=None,
                  fallback: bool = True) -> static.CompiledModel:
    """Static stage without an accelerator: ONNX model (path, bytes or proto), ir.Graph or IFP
    file -> CompiledModel for ``board`` (name or config). cache: None (the default cache,
    VFPGA_CACHE=0 turns it off), False, a directory or a cache.CompileCache. progress: None
    (a bar on a terminal), False, or a callable (done, total, name). fallback: ops the
    accelerator lacks run on the host CPU instead of raising UnsupportedOperatorError."""
    return compile_cache.compile_with_cache(model, board, calibration, input_shape, cache=cache,
                                            progress=progress, fallback=fallback).compiled


def open(board: str = "u200", emulate: bool | None = None) -> Accelerator:  # noqa: A001 - the API name
    """The vfpga accelerator for ``board``: the emulated board on a host
    without one."""
    return Accelerator(board, emulate=emulate)
