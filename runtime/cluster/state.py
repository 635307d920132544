"""What the controller holds: tenants, their replicas, and the requests on
their way (no Ray, no I/O: plain records the controller's loop thread
mutates; the few fields user threads touch are under the tenant's lock).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

LATENCY_WINDOW = 4096  # requests whose host latencies stats() summarises


class Request:
    """One request: its input, the future its caller holds, and its tries."""

    __slots__ = ("tenant", "x", "float_io", "future", "t0", "attempts", "answered", "waiting_since")

    def __init__(self, tenant: TenantState, x, float_io: bool):
        self.tenant = tenant
        self.x = x  # int8 HWC (CNN) or feeds (RNN), checked at submit
        self.float_io = float_io
        self.future: Future = Future()
        self.t0 = time.perf_counter()
        self.attempts = 0  # boards that died under it
        self.answered = False
        self.waiting_since: float | None = None


class Call:
    """One batch call in flight to a board. ``abandoned``: its board went down
    and its requests were sent elsewhere (an answer it still brings is used
    only for requests not answered yet)."""

    __slots__ = ("batch", "abandoned")

    def __init__(self, batch: list[Request]):
        self.batch = batch
        self.abandoned = False


class Replica:
    """One copy of a tenant on one board: a tenant of that board's accelerator."""

    def __init__(self, tenant: TenantState, rid: int, board, cores: int):
        self.tenant = tenant
        self.id = rid
        self.board = board  # pool.BoardState
        self.cores = cores
        self.name = f"{tenant.name}#{rid}"  # its tenant name on the board
        self.state = "deploying"  # -> active -> draining -> gone
        self.core_list: list[int] = []
        self.queue: collections.deque[Request] = collections.deque()  # routed here, not yet sent
        self.calls = 0  # batch calls in flight
        self.inflight = 0  # requests in those calls
        self.sent: set[Call] = set()  # those calls
        self.fault = None  # a TenantFault that stopped it (until reset)
        self.requests = 0  # answered OK
        self.batched = 0  # of those, run in a batch of more than one
        self.idle = None  # asyncio.Event a drain waits on

    @property
    def outstanding(self) -> int:
        return len(self.queue) + self.inflight

    @property
    def routable(self) -> bool:
        return self.state == "active" and self.fault is None and self.board.up

    def describe(self) -> dict:
        return {"board": self.board.index, "cores": list(self.core_list), "state": self.state}


@dataclass(eq=False)
class TenantState:
    """A tenant of the cluster: what it asked for, its compiled model (here and
    in the object store) and its replicas."""

    name: str
    kind: str  # core kind: "cnn" | "rnn"
    board_kind: str
    compiled: object  # static.CompiledModel | rnn.CompiledRnn
    ref: object  # its ObjectRef in Ray's object store: what boards deploy from
    cores: int  # per replica
    wanted: int  # replicas
    max_pending: int  # per replica, at the controller
    spread: bool = False
    options: dict = field(default_factory=dict)  # each replica's deploy options (max_batch, max_inflight, ...)
    replicas: list = field(default_factory=list)
    waiting: collections.deque = field(default_factory=collections.deque)  # no replica to take them yet
    problem: str | None = None  # why it has no replica (capacity short after a failure)
    removed: bool = False
    rr: int = 0  # rotates the tie-break between equally loaded replicas
    outstanding: int = 0  # requests submitted and not answered (under lock)
    ok: int = 0
    failed: int = 0
    retried: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: object = field(default_factory=lambda: itertools.count(1))
    host_latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))

    @property
    def limit(self) -> int:
        """Requests it may have outstanding: max_pending per replica asked for."""
        return self.max_pending * self.wanted

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.routable]

    def stopped_by(self):
        """The fault that stops it, when every replica it has is stopped by one."""
        reps = [r for r in self.replicas if r.state == "active"]
        if reps and all(r.fault is not None for r in reps) and not any(r.state == "deploying" for r in self.replicas):
            return reps[0].fault
        return None

    def placement(self) -> list[dict]:
        return [r.describe() for r in self.replicas if r.state != "gone"]


@dataclass
class Failover:
    """One board found down: when, why, and when each of its tenants was
    serving again (time.monotonic() its replacement replica went active) or why not."""

    board: int
    reason: str
    detected: float
    tenants: dict = field(default_factory=dict)  # name -> float | str
    done: float | None = None
