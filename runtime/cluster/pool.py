"""The boards of a cluster in Ray: joining or starting Ray, and one actor per board.

Every board is a Ray actor named ``vfpga-board-<i>`` in the namespace
``vfpga`` (``ray list actors`` and ``ray.get_actor`` find them), pinned by
one unit of the custom resource of its kind (``vfpga_u200``,
``vfpga_zcu104``, ...) that the hosts with the cards declare
(``ray start --resources='{"vfpga_u200": 2}'``). An actor takes no CPU
from Ray's accounting (it is driven by its card) and restarts when it dies
(``max_restarts=-1``); its calls are never retried by Ray
(``max_task_retries=0``): the controller retries requests itself, so that
none is answered twice.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from vfpga import overlay
from vfpga.runtime.errors import ClusterError

from .board import MODES, Board

NAMESPACE = "vfpga"
RESOURCE_PREFIX = "vfpga_"
# Ray binds a single-host cluster to the loopback address when this is "0"
# (read when ray is first imported): a Ray started here serves this host only.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def resource(kind: str) -> str:
    """The custom resource that pins boards of ``kind``."""
    return RESOURCE_PREFIX + kind


def actor_name(index: int) -> str:
    return f"vfpga-board-{index}"


def ray_module(local: bool = False):
    """Ray, imported (``local``: bound to the loopback address if this is its first import)."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError as e:
        raise ClusterError(f"a cluster needs Ray: pip install -e \".[cluster]\" ({e})") from None
    return ray


def parse_boards(spec) -> dict[str, int]:
    """``{"u200": 3}`` or ``"u200:3,zcu104:1"`` -> {kind: count}, checked
    against the board configs."""
    if isinstance(spec, str):
        out: dict[str, int] = {}
        for part in spec.split(","):
            kind, sep, count = part.strip().partition(":")
            if not kind or (sep and not count.strip().isdigit()):
                raise ValueError(f"boards {spec!r}: expected KIND:COUNT[,KIND:COUNT...], e.g. u200:3,zcu104:1")
            if kind in out:
                raise ValueError(f"boards {spec!r}: {kind} given twice")
            out[kind] = int(count) if sep else 1
        spec = out
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"boards must be a non-empty {{kind: count}} or 'KIND:COUNT,...', not {spec!r}")
    known = overlay.available()
    for kind, n in spec.items():
        if kind not in known:
            raise ValueError(f"unknown board kind {kind!r}; known: {', '.join(known)}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"boards: {kind} count must be a positive integer, not {n!r}")
    return dict(spec)


def connect(address: str | None, boards: dict[str, int], *, object_store_mb: int | None = None,
            log_to_driver: bool = True) -> bool:
    """Joins Ray. ``address``: None (the Ray this process is connected to, else
    a new local one that declares ``boards`` as its resources, on the loopback
    address), "auto" (the cluster started on this host with ``ray start``) or
    "HOST:PORT". Returns whether Ray was started here (to stop it at close)."""
    ray = ray_module(local=address is None)
    if ray.is_initialized():
        return False
    if address is None:
        kw = {} if object_store_mb is None else {"object_store_memory": int(object_store_mb) << 20}
        ray.init(address="local", resources={resource(k): n for k, n in boards.items()}, namespace=NAMESPACE,
                 include_dashboard=False, log_to_driver=log_to_driver, **kw)
        return True
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {e}") from None
    return False


def check_resources(boards: dict[str, int]) -> None:
    """Refuses, saying what to declare, a cluster that lacks the boards asked for."""
    ray = ray_module()
    have = ray.cluster_resources()
    short = {k: (n, int(have.get(resource(k), 0))) for k, n in boards.items() if have.get(resource(k), 0) < n}
    if short:
        need = ", ".join(f"{n} {k} board{'s' * (n > 1)} ({resource(k)}: {got} declared)"
                         for k, (n, got) in short.items())
        raise ClusterError(f"the Ray cluster lacks {need}; on each host with cards, declare them: ray start "
                           f"--resources='{{\"{resource(next(iter(short)))}\": <cards on that host>}}'")


@dataclasses.dataclass(eq=False)
class BoardState:
    """A board as the controller sees it."""

    index: int
    kind: str
    handle: object  # the Ray actor handle
    up: bool = False
    boot: str | None = None
    mode: str = ""
    host: str = ""
    pid: int = 0
    actor_id: str | None = None  # Ray's id of its actor (it survives restarts)
    cores: dict = dataclasses.field(default_factory=dict)  # core kind -> count
    contexts: int = 0
    replicas: list = dataclasses.field(default_factory=list)  # the controller's replicas on it
    served: int = 0  # requests its replicas answered OK
    downs: int = 0  # times it was found down
    rejoins: int = 0
    down_reason: str | None = None
    down_at: float | None = None  # time.monotonic() it was found down

    @property
    def name(self) -> str:
        return actor_name(self.index)

    def learn(self, info: dict) -> None:
        """Takes what the board says of itself (its info())."""
        self.boot, self.mode, self.host, self.pid = info["boot"], info["mode"], info["host"], info["pid"]
        self.actor_id = info.get("actor_id")
        self.cores, self.contexts = dict(info["cores"]), int(info["contexts"])

    def free(self, core_kind: str) -> int:
        return self.cores.get(core_kind, 0) - sum(r.cores for r in self.replicas if r.tenant.kind == core_kind)


def start_boards(boards: dict[str, int], mode: str, bank_capacity: int | None,
                 timeout_s: float = 120.0) -> list[BoardState]:
    """One actor per board, numbered in the order given; returns them up
    (each has answered its first health check)."""
    if mode not in MODES:
        raise ValueError(f"board mode {mode!r}: one of {', '.join(MODES)}")
    ray = ray_module()
    actor = ray.remote(Board)
    states = []
    try:
        for kind, n in boards.items():
            for _ in range(n):
                i = len(states)
                try:
                    handle = actor.options(name=actor_name(i), namespace=NAMESPACE, resources={resource(kind): 1},
                                           num_cpus=0, max_restarts=-1, max_task_retries=0,
                                           max_concurrency=1000).remote(i, kind, mode, bank_capacity)
                except ValueError as e:  # the name is taken
                    raise ClusterError(f"cannot create board actor {actor_name(i)} in namespace {NAMESPACE!r}: {e} "
                                       "(another vfpga cluster on this Ray cluster?)") from None
                states.append(BoardState(i, kind, handle))
        refs = [s.handle.info.remote() for s in states]
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if waiting:
            late = [states[refs.index(r)].name for r in waiting]
            raise ClusterError(f"board actors {', '.join(late)} did not start within {timeout_s:.0f} s (are the "
                               f"hosts that declared the {RESOURCE_PREFIX}* resources up?)")
        for s, info in zip(states, ray.get(refs)):
            s.learn(info)
            s.up = True
    except BaseException:
        for s in states:
            ray.kill(s.handle, no_restart=True)
        raise
    return states


def restarting_actors() -> set[str] | None:
    """The ids of the actors Ray is restarting now (their process died): the
    GCS's actor table, which knows within milliseconds, where a caller's calls
    in flight fail only once the restart is under way (a second or two).
    None where this Ray has no such table to read."""
    try:
        from ray._private import state
        return set(state.actors(actor_state_name="RESTARTING"))
    except Exception:  # noqa: BLE001 - another Ray: the health checks and failing calls still find dead boards
        return None


def stop_boards(states: list[BoardState]) -> None:
    """Ends the board actors for good (no restart)."""
    ray = ray_module()
    for s in states:
        try:
            ray.kill(s.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
