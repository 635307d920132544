"""The user's view of many boards, like ``vfpga.open`` for one:

    cl = vfpga.cluster(boards={"u200": 3})            # starts Ray here, or address="auto" joins one
    net = cl.deploy("model.onnx", cores=4, replicas=2, name="vision")
    y = net.run(x)                                   # on the replica with the fewest requests outstanding
    cl.reallocate({"vision": 8})                     # live: on its boards, or migrated to boards with room
    cl.reallocate({"vision": {"replicas": 3}})
    cl.migrate("vision", from_board=0)               # deploy elsewhere, switch, drain, remove
    cl.stats()["vision"]; cl.boards()
    cl.remove(net); cl.close()

The model is compiled once per board kind, here (through the compile
cache), and put in Ray's object store; every board that takes a replica
deploys it from there with the dynamic stage for the cores it gives.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from vfpga import overlay
from vfpga.runtime.compiler import frontend, rnn, static
from vfpga.runtime.errors import DeployError, TenantRemoved
from vfpga.runtime.tenants import compile_model
from vfpga.runtime.tenants.accelerator import find_tenant, rnn_model
from vfpga.runtime.tenants.request import quantized_input
from vfpga.runtime.tenants.rnn_tenant import rnn_feeds
from vfpga.runtime.tenants.throughput import check_throughput_options

from . import pool
from .controller import Controller
from .state import TenantState


@dataclasses.dataclass
class ReplicaStats:
    board: int
    cores: list[int]
    state: str
    requests: int  # answered OK through this replica
    outstanding: int
    latency_ms: float | None  # device latency per request on its board (modeled or measured)
    utilisation: float | None
    batched: int = 0  # of its requests, those that ran in a batch of more than one (dynamic batching)


@dataclasses.dataclass
class ClusterTenantStats:
    """A tenant's figures over its replicas. ``source`` as in TenantStats."""

    name: str
    kind: str
    board_kind: str
    cores: list[str]  # "board:core" of every core it holds
    replicas: list[ReplicaStats]
    replicas_wanted: int
    requests: int  # answered OK
    failed: int
    retried: int  # tries after a board died under a request
    pending: int  # submitted, not answered
    source: str
    latency_ms: float | None  # device latency per request, mean over its replicas
    throughput_rps: float | None  # sum over replicas of 1 / latency
    utilisation: float | None  # mean over replicas
    host_latency_ms: dict  # submit -> answer, measured here: mean, p50, p99


@dataclasses.dataclass
class BoardStats:
    index: int
    name: str
    kind: str
    up: bool
    mode: str
    host: str
    pid: int
    cores: dict  # core kind -> count
    free: dict  # core kind -> cores no replica holds
    replicas: list[str]
    requests: int  # requests its replicas answered OK (since it started)
    outstanding: int
    clock_s: float | None  # the board's clock (modeled on emulated and timing-only boards)
    source: str | None
    downs: int
    rejoins: int
    down_reason: str | None


@dataclasses.dataclass
class ClusterReallocation:
    """What one reallocate() did: placements before and after, and the time it took."""

    before: dict[str, list[dict]]
    after: dict[str, list[dict]]
    migrated: dict[str, list[int]]  # tenant -> boards replicas were migrated away from
    total_s: float

    def describe(self) -> str:
        def where(p):
            return ", ".join(f"board {r['board']}: {len(r['cores'])} cores" for r in p) or "nothing"

        moves = "; ".join(f"{n}: [{where(self.before[n])}] -> [{where(self.after[n])}]"
                          + (f" (migrated from board(s) {self.migrated[n]})" if self.migrated.get(n) else "")
                          for n in self.after)
        return f"reallocate {moves}: {self.total_s * 1e3:.1f} ms host"


class ClusterTenant:
    """A tenant of the cluster: submit/run like a tenant of one board; its
    requests go to its replicas, least outstanding first."""

    def __init__(self, cluster: Cluster, state: TenantState):
        self._cluster = cluster
        self._state = state

    name = property(lambda self: self._state.name)
    kind = property(lambda self: self._state.kind)
    board_kind = property(lambda self: self._state.board_kind)
    compiled = property(lambda self: self._state.compiled)
    replicas = property(lambda self: self._state.wanted)

    @property
    def graph(self):
        if self.kind == "rnn":
            raise AttributeError("an RNN tenant has no CNN layer graph; see .compiled (CompiledRnn)")
        return self._state.compiled.graph

    @property
    def placement(self) -> list[dict]:
        """Its replicas: board, cores, state."""
        return self._state.placement()

    @property
    def cores(self) -> list[str]:
        """Every core it holds, as "board:core"."""
        return [f"{p['board']}:{c}" for p in self.placement for c in p["cores"]]

    @property
    def pending(self) -> int:
        return self._state.outstanding

    @property
    def fault(self):
        """The TenantFault that stops it (every replica stopped), else None."""
        return self._state.stopped_by()

    @property
    def requests(self) -> int:
        return self._state.ok

    @property
    def failed(self) -> int:
        return self._state.failed

    def submit(self, x):
        """Float input (CNN: the model's ONNX layout; RNN: an array or a dict of
        feeds) -> a Future of the float output(s), like onnxruntime (NotComputed
        from a timing-only board)."""
        c = self._state.compiled
        if self.kind == "rnn":
            return self._cluster.controller.submit(self._state, rnn_feeds(c, x), True)
        x_q = frontend.quantize_input(x, c.graph.tensors[c.graph.inputs[0]])
        return self._cluster.controller.submit(self._state, x_q, True)

    def submit_quantized(self, x_q):
        """int8 HWC input -> a Future of (int8 HWC outputs, RunInfo) (CNN tenants)."""
        if self.kind == "rnn":
            raise TypeError(f"tenant {self.name!r} is an RNN tenant: submit(feeds) takes float inputs")
        return self._cluster.controller.submit(self._state, quantized_input(self._state.compiled, x_q, self.name),
                                               False)

    def run(self, x):
        return self.submit(x).result()

    def run_quantized(self, x_q):
        return self.submit_quantized(x_q).result()

    def reset(self) -> None:
        """Re-enables the replicas a fault stopped."""
        if self._state.removed:
            raise TenantRemoved(f"tenant {self.name!r} has been removed")
        self._cluster.controller.call(self._cluster.controller.reset(self._state))

    def __repr__(self) -> str:
        return f"ClusterTenant({self.name!r}, {self.kind}, {self.placement})"


class Cluster:
    """Boards of one or more kinds, each a Ray actor, shared by tenants.

    ``boards``: {kind: count} or "u200:3,zcu104:1". ``address``: None (the Ray
    this process is connected to, else a new local one declaring the boards),
    "auto" or "HOST:PORT" (a cluster whose hosts declared ``vfpga_<kind>``
    resources). ``mode``: "auto" (a card where the host has one, else the
    emulated board), "emulated", "timing" (timing-only boards: no outputs) or
    "board". ``bank_capacity``: bytes per DDR bank of emulated boards."""

    def __init__(self, boards, address: str | None = None, *, mode: str = "auto", bank_capacity: int | None = None,
                 object_store_mb: int | None = None, log_to_driver: bool = True, startup_timeout_s: float = 120.0,
                 **controller_options):
        self.spec = pool.parse_boards(boards)
        self.kinds = list(self.spec)
        self._started_ray = pool.connect(address, self.spec, object_store_mb=object_store_mb,
                                         log_to_driver=log_to_driver)
        try:
            pool.check_resources(self.spec)
            self._boards = pool.start_boards(self.spec, mode, bank_capacity, startup_timeout_s)
        except BaseException:
            self._stop_ray()
            raise
        self.mode = mode
        self.controller = Controller(self._boards, **controller_options)
        self._tenants: dict[str, ClusterTenant] = {}
        self.closed = False

    # ---- what the server and the user read ------------------------------------------------------------
    @property
    def board(self) -> str:
        return ",".join(f"{k}x{n}" for k, n in self.spec.items())

    @property
    def config(self) -> dict:
        """The board config of the first kind (IFP files load against their own kind)."""
        return overlay.load(self.kinds[0])

    @property
    def n_cores(self) -> int:
        return sum(b.cores.get("cnn", 0) for b in self._boards if b.up)

    @property
    def tenants(self) -> dict[str, ClusterTenant]:
        return dict(self._tenants)

    def _tenant(self, tenant) -> ClusterTenant:
        return find_tenant(self._tenants, tenant)

    # ---- tenants ---------------------------------------------------------------------------------------
    def compile(self, model, board: str, calibration=None, input_shape=None, fallback: bool = True):
        """Static stage once for board kind ``board`` (CompiledModel or CompiledRnn)."""
        if rnn_model(model):
            if isinstance(model, rnn.CompiledRnn):
                compiled = model
            else:
                compiled = rnn.compile_rnn(model, overlay.load(board), calibration, input_shape)
        elif isinstance(model, static.CompiledModel):
            compiled = model
        else:
            compiled = compile_model(model, board, calibration, input_shape, fallback=fallback)
        if compiled.board != board:
            raise DeployError(f"model compiled for {compiled.board}, the tenant asks for {board} boards")
        return compiled

    def deploy(self, model, cores: int = 1, replicas: int = 1, name: str | None = None, calibration=None,
               input_shape=None, fallback: bool = True, max_pending: int = 64, board: str | None = None,
               spread: bool = False, max_batch: int = 1, max_delay_us: float = 0.0,
               max_inflight: int = 1) -> ClusterTenant:
        """Compiles ``model`` once for board kind ``board`` (default: the first
        kind) and deploys ``replicas`` replicas of ``cores`` cores, fewest
        boards touched first (``spread``: each on its own board).
        ``max_pending``: requests it may have outstanding per replica.
        ``max_batch``, ``max_delay_us`` (RNN models) and ``max_inflight`` (CNN
        models) are each replica's, as in Accelerator.deploy: a replica
        batches, or holds in flight, the requests the controller sends it."""
        self._check_open()
        board = board or self.kinds[0]
        if board not in self.spec:
            raise DeployError(f"this cluster has no {board} boards (it has {self.board})")
        for what, v in (("cores", cores), ("replicas", replicas), ("max_pending", max_pending)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DeployError(f"{what} must be a positive integer, not {v!r}")
        name = name or f"tenant{len(self._tenants)}"
        if name in self._tenants or "#" in name:
            raise DeployError(f"a tenant named {name!r} is already deployed" if "#" not in name
                              else f"tenant name {name!r}: '#' is kept for replica names")
        compiled = self.compile(model, board, calibration, input_shape, fallback)
        kind = "rnn" if isinstance(compiled, rnn.CompiledRnn) else "cnn"
        check_throughput_options(kind, overlay.load(board), max_batch, max_delay_us, max_inflight)
        options = {"max_batch": max_batch, "max_delay_us": float(max_delay_us), "max_inflight": max_inflight}
        ref = pool.ray_module().put(compiled)
        state = TenantState(name, kind, board, compiled, ref, cores, replicas, max_pending, spread, options=options)
        self.controller.call(self.controller.deploy(state))
        self._tenants[name] = t = ClusterTenant(self, state)
        return t

    def reallocate(self, allocation: dict) -> ClusterReallocation:
        """Live, per tenant: a core count per replica, or {"cores": k, "replicas": n}.
        A replica whose board lacks the cores is migrated to one that has them."""
        self._check_open()
        t0 = time.perf_counter()
        wanted = {}
        for tenant, v in allocation.items():
            t = self._tenant(tenant)
            if isinstance(v, dict):
                unknown = set(v) - {"cores", "replicas"}
                if unknown:
                    raise DeployError(f"tenant {t.name!r}: unknown keys {sorted(unknown)}; 'cores' and 'replicas'")
                cores, replicas = v.get("cores"), v.get("replicas")
            else:
                cores, replicas = v, None
            for what, x in (("cores", cores), ("replicas", replicas)):
                if x is not None and (not isinstance(x, int) or isinstance(x, bool) or x < 1):
                    raise DeployError(f"tenant {t.name!r}: {what} must be a positive integer, not {x!r}")
            wanted[t.name] = (t, cores, replicas)
        before, after, migrated = {}, {}, {}
        for name, (t, cores, replicas) in wanted.items():
            r = self.controller.call(self.controller.reallocate(t._state, cores, replicas))
            before[name], after[name], migrated[name] = r["before"], r["after"], r["migrated_from"]
        return ClusterReallocation(before, after, migrated, time.perf_counter() - t0)

    def migrate(self, tenant, from_board: int, to_board: int | None = None) -> list[dict]:
        """Moves the tenant's replica on board ``from_board`` to ``to_board``
        (or where placement puts it), live; returns the new placement."""
        self._check_open()
        t = self._tenant(tenant)
        reps = [r for r in t._state.replicas if r.board.index == from_board and r.state == "active"]
        if not reps:
            raise DeployError(f"tenant {t.name!r} has no replica on board {from_board}; it is on "
                              f"{sorted({p['board'] for p in t.placement})}")
        self.controller.call(self.controller.migrate(reps[0], to=to_board))
        return t.placement

    def remove(self, tenant) -> None:
        """Removes a tenant: its queued requests fail with TenantRemoved, those
        in flight finish, its replicas leave their boards."""
        t = self._tenant(tenant)
        self._tenants.pop(t.name, None)
        self.controller.call(self.controller.remove(t._state))

    # ---- figures -------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, ClusterTenantStats]:
        """Per tenant: requests, host latency here, device figures per replica from its board."""
        boards = self.controller.call(self.controller.board_stats())
        out = {}
        for name, t in list(self._tenants.items()):
            s = t._state
            reps = []
            for r in list(s.replicas):
                st = boards.get(r.board.index, {}).get("tenants", {}).get(r.name)
                reps.append(ReplicaStats(r.board.index, list(r.core_list), r.state, r.requests, r.outstanding,
                                         st.latency_ms if st else None, st.utilisation if st else None,
                                         r.batched))
            lat = [r.latency_ms for r in reps if r.latency_ms]
            util = [r.utilisation for r in reps if r.utilisation is not None]
            host = sorted(s.host_latencies)
            host_ms = ({"mean": statistics.fmean(host) * 1e3, "p50": host[len(host) // 2] * 1e3,
                        "p99": host[min(len(host) - 1, int(0.99 * len(host)))] * 1e3} if host else {})
            source = next((b["source"] for b in boards.values()), "modeled")
            out[name] = ClusterTenantStats(name, s.kind, s.board_kind, t.cores, reps, s.wanted, s.ok, s.failed,
                                           s.retried, s.outstanding, source,
                                           statistics.fmean(lat) if lat else None,
                                           sum(1e3 / x for x in lat) if lat else None,
                                           statistics.fmean(util) if util else None, host_ms)
        return out

    def boards(self) -> list[BoardStats]:
        """Per board: up or down, cores free, replicas, requests, its clock."""
        figures = self.controller.call(self.controller.board_stats())
        out = []
        for b in self._boards:
            f = figures.get(b.index)
            reps = list(b.replicas)
            out.append(BoardStats(b.index, b.name, b.kind, b.up, b.mode, b.host, b.pid, dict(b.cores),
                                  {k: b.free(k) for k in b.cores}, [r.name for r in reps],
                                  b.served, sum(r.outstanding for r in reps),
                                  f["seconds"] if f else None, f["source"] if f else None, b.downs, b.rejoins,
                                  b.down_reason))
        return out

    @property
    def failovers(self):
        """Every board found down: when, why, when each tenant served again."""
        return list(self.controller.failovers)

    def board_handle(self, index: int):
        """The Ray actor of board ``index`` (operators' tools find it by name too)."""
        return self._boards[index].handle

    # ---- life cycle ---------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise DeployError("this cluster has been closed")

    def _stop_ray(self) -> None:
        if self._started_ray:
            pool.ray_module().shutdown()

    def close(self) -> None:
        """Removes every tenant, ends the board actors, and stops Ray if it was started here."""
        if self.closed:
            return
        self.closed = True
        try:
            self.controller.close()
        finally:
            pool.stop_boards(self._boards)
            self._stop_ray()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def cluster(boards, address: str | None = None, **kwargs) -> Cluster:
    """``vfpga.cluster(boards={"u200": 3}, address=None)``: see :class:`Cluster`."""
    return Cluster(boards, address, **kwargs)
