"""The cluster controller: tenants' placement, request routing, migration
and failover, in one event loop thread of the process that fronts the
cluster (the server, or the Python program that called ``vfpga.cluster``).

* **Placement**: a tenant's replicas go where :func:`.placement.place`
  says (fewest boards touched first). Its compiled model lives once in
  Ray's object store; every board that takes a replica deploys from it
  (the dynamic stage re-targets it to the cores that board gives).
* **Routing**: a request goes to the tenant's replica with the fewest
  requests outstanding. A replica with no call in flight gets one at once;
  behind a call in flight, requests wait at the controller and leave as one
  batch (up to ``MAX_BATCH``) when they are as many as that call carries
  (the board is never idle while they wait) or when it returns; at most
  ``WINDOW`` calls per replica. A busy replica costs one Ray call per batch,
  an idle one adds no wait.
* **Failover**: a board whose call raises ``RayActorError``, whose health
  check fails or times out, or that comes back with a new boot id is down:
  its replicas are gone, their unsent requests go to other replicas at
  once, the requests of its calls in flight when those calls fail (none of
  them was answered: a call answers all its requests or none), and its
  tenants get replacement replicas on the surviving boards. A request is
  answered exactly once: with a result, or with an error that says why
  (after ``MAX_ATTEMPTS`` boards died under it, when no board has room for
  its tenant, or after ``wait_timeout_s`` without a replica). A board that
  answers again (Ray restarted its actor) rejoins empty, and tenants short
  of replicas get them back there.
* **Migration**: a replica that must grow beyond its board, or is moved,
  is deployed on the new board first; routing switches to it, the old one
  drains (its requests in flight finish) and is removed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

from vfpga.runtime.errors import (
    ClusterError,
    DeployError,
    PlacementError,
    QueueFull,
    TenantFault,
    TenantRemoved,
)
from vfpga.runtime.tenants.request import float_outputs

from .board import NotComputed, RemoteError
from .placement import BoardView, place
from .pool import BoardState, ray_module, restarting_actors
from .state import Call, Failover, Replica, Request, TenantState

log = logging.getLogger("vfpga.cluster")

WINDOW = 2  # batch calls in flight per replica
MAX_BATCH = 32  # requests per call
BOARD_PENDING = WINDOW * MAX_BATCH  # a replica's host queue on its board
MAX_ATTEMPTS = 4  # boards that may die under one request before it fails


def _cause(e: BaseException) -> str:
    """The message of an error raised inside an actor (without Ray's traceback)."""
    return str(getattr(e, "cause", None) or e)


class Controller:
    """The placement and routing state of one cluster, driven by its own loop thread."""

    def __init__(self, boards: list[BoardState], *, health_interval_s: float = 1.0, health_timeout_s: float = 10.0,
                 watch_interval_s: float = 0.1, wait_timeout_s: float = 60.0, drain_timeout_s: float = 120.0):
        self.ray = ray_module()
        self.boards = boards
        self.tenants: dict[str, TenantState] = {}
        self.failovers: list[Failover] = []
        self.placement_seconds: collections.deque = collections.deque(maxlen=4096)
        self.duplicates = 0  # tries to answer a request already answered (must stay 0)
        self.late = 0  # answers of abandoned calls that came after the request was answered elsewhere
        self.calls = 0  # batch calls sent to boards
        self.health_interval_s = health_interval_s
        self.health_timeout_s = health_timeout_s
        self.watch_interval_s = watch_interval_s
        self.wait_timeout_s = wait_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.closed = False
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vfpga-cluster", daemon=True)
        self._thread.start()
        for b in boards:
            self._loop.call_soon_threadsafe(self._spawn, self._health(b))
        self._loop.call_soon_threadsafe(self._spawn, self._watch())

    # ---- the loop thread -------------------------------------------------------------------------
    def call(self, coro, timeout: float | None = None):
        """Runs ``coro`` on the loop and waits for it (from any other thread)."""
        if self.closed:
            coro.close()
            raise ClusterError("this cluster has been closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _spawn(self, coro) -> asyncio.Task:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster task failed: %r", task.exception(), exc_info=task.exception())

    # ---- requests (submit from any thread; the rest on the loop) ---------------------------------
    def submit(self, t: TenantState, x, float_io: bool):
        """Queues a checked input of tenant ``t``; returns the Future of its answer."""
        if self.closed:
            raise ClusterError("this cluster has been closed")
        if t.removed:
            raise TenantRemoved(f"tenant {t.name!r} has been removed")
        fault = t.stopped_by()
        if fault is not None:
            raise TenantFault(t.name, f"stopped by an earlier fault ({fault.fault}); call reset()", fault.fault)
        with t.lock:
            if t.outstanding >= t.limit:
                raise QueueFull(f"tenant {t.name!r} has {t.outstanding} requests outstanding (max_pending="
                                f"{t.max_pending} per replica x {t.wanted}); wait for results or raise max_pending")
            t.outstanding += 1
        q = Request(t, x, float_io)
        q.future.set_running_or_notify_cancel()  # it is on its way: no cancelling
        self._loop.call_soon_threadsafe(self._route, q)
        return q.future

    def _route(self, q: Request) -> None:
        t = q.tenant
        if q.answered:
            return
        if t.removed:
            self._answer(q, error=TenantRemoved(f"tenant {t.name!r} was removed before this request ran"))
            return
        live = t.live()
        if not live:
            fault = t.stopped_by()
            if fault is not None:
                self._answer(q, error=TenantFault(t.name, f"not run: stopped by an earlier fault ({fault.fault})",
                                                  fault.fault))
            elif t.problem is not None and not any(r.state == "deploying" for r in t.replicas):
                self._answer(q, error=ClusterError(t.problem))
            else:
                q.waiting_since = q.waiting_since or time.monotonic()
                t.waiting.append(q)
            return
        t.rr = (t.rr + 1) % len(live)
        r = min(live[t.rr:] + live[:t.rr], key=lambda r: r.outstanding)
        r.queue.append(q)
        self._pump(r)

    def _pump(self, r: Replica) -> None:
        while r.calls < WINDOW and r.queue and r.state in ("active", "draining") and r.board.up:
            if r.calls and len(r.queue) < min(MAX_BATCH, r.inflight):
                return  # the board is busy with a call: the next leaves when it is as large, or that call returns
            batch = [q for q in (r.queue.popleft() for _ in range(min(MAX_BATCH, len(r.queue)))) if not q.answered]
            if not batch:
                continue
            call = Call(batch)
            r.sent.add(call)
            r.calls += 1
            self.calls += 1
            r.inflight += len(batch)
            self._spawn(self._call(r, call))

    def _end_call(self, r: Replica, call: Call) -> None:
        r.sent.discard(call)
        r.calls -= 1
        r.inflight -= len(call.batch)
        if r.inflight == 0 and r.idle is not None:
            r.idle.set()

    async def _call(self, r: Replica, call: Call) -> None:
        b, t, batch = r.board, r.tenant, call.batch
        try:
            out = await b.handle.infer_batch.remote(r.name, [q.x for q in batch], t.kind == "cnn")
        except self.ray.exceptions.RayActorError as e:
            self._end_call(r, call)
            self._board_down(b, f"its actor died under a call ({type(e).__name__})")
            if not call.abandoned:  # else its requests were sent elsewhere when the board went down
                for q in batch:
                    self._retry(q, f"board {b.index} died")
            return
        except Exception as e:  # noqa: BLE001 - the board raised: answered to every request of the call
            self._end_call(r, call)
            for q in batch:
                self._answer(q, error=ClusterError(f"tenant {t.name!r} on board {b.index}: {_cause(e)}"))
            self._pump(r)
            return
        self._end_call(r, call)
        for q, (ok, value) in zip(batch, out):
            if q.answered:  # an abandoned call's request, answered elsewhere first
                self.late += 1
            elif ok:
                r.requests += 1
                r.batched += value[1].batch > 1
                b.served += 1
                self._answer(q, self._value(q, value))
            else:
                self._remote_error(r, q, value)
        self._pump(r)

    def _value(self, q: Request, value):
        outs, info = value
        if not q.float_io:
            return outs, info
        if isinstance(outs, NotComputed):
            return outs
        if q.tenant.kind == "cnn":
            return float_outputs(q.tenant.compiled.graph, outs)
        return outs[0] if len(outs) == 1 else outs

    def _remote_error(self, r: Replica, q: Request, err: RemoteError) -> None:
        t, b = r.tenant, r.board
        if err.kind == "NoSuchTenant" and b.up and r.state != "gone":
            self._board_down(b, f"it lost replica {r.name} (restarted between health checks)")
        if err.kind in ("NoSuchTenant", "TenantRemoved") and not t.removed:
            self._retry(q, f"replica {r.name} vanished from board {b.index}")
            return
        e = err.rebuild(t.name, b.index)
        if err.kind == "TenantFault" and err.completion is not None:
            r.fault = e
            log.warning("replica %s on board %d faulted: %s (stopped until reset)", r.name, b.index, err.message)
        self._answer(q, error=e)

    def _retry(self, q: Request, why: str) -> None:
        if q.answered:
            return
        q.attempts += 1
        q.tenant.retried += 1
        if q.attempts >= MAX_ATTEMPTS:
            self._answer(q, error=ClusterError(f"tenant {q.tenant.name!r}: {q.attempts} boards died under this "
                                               f"request (last: {why})"))
        else:
            self._route(q)

    def _answer(self, q: Request, value=None, error: BaseException | None = None) -> None:
        """Answers ``q`` exactly once."""
        if q.answered:
            self.duplicates += 1
            log.error("request of tenant %r answered twice (ignored)", q.tenant.name)
            return
        t = q.tenant
        if error is not None:
            t.failed += 1
            q.future.set_exception(error)
        else:
            t.ok += 1
            t.host_latencies.append(time.perf_counter() - q.t0)
            q.future.set_result(value)
        q.answered = True
        with q.tenant.lock:
            q.tenant.outstanding -= 1

    def _flush(self, t: TenantState) -> None:
        """Routes the requests that waited for a replica (or answers them, when none will come)."""
        waiting, t.waiting = t.waiting, collections.deque()
        for q in waiting:
            self._route(q)

    # ---- placement and replicas ------------------------------------------------------------------
    def views(self) -> list[BoardView]:
        return [BoardView(b.index, b.kind, b.up, dict(b.cores), {k: b.free(k) for k in b.cores},
                          b.contexts - len(b.replicas)) for b in self.boards]

    def _place(self, t: TenantState, cores: int, n: int, exclude, only, partial: bool) -> list[int]:
        """Boards for ``n`` replicas (``partial``: as many as fit, at least one)."""
        t0 = time.perf_counter()
        views = self.views()
        if t.spread:  # not beside a replica it has
            exclude = set(exclude) | {r.board.index for r in t.replicas if r.state != "gone"}

        def attempt(k: int) -> list[int]:
            return place(views, t.board_kind, t.kind, cores, k, spread=t.spread, exclude=exclude, only=only,
                         tenant=f"tenant {t.name!r}")

        try:
            return attempt(n)
        except PlacementError:
            if not partial:
                raise
            for k in range(n - 1, 0, -1):
                try:
                    return attempt(k)
                except PlacementError:
                    pass
            raise
        finally:
            self.placement_seconds.append(time.perf_counter() - t0)

    async def add_replicas(self, t: TenantState, n: int, *, cores: int | None = None, partial: bool = False,
                           exclude=(), only=None) -> list[Replica]:
        """Places and deploys ``n`` more replicas of ``t`` (as many as fit if
        ``partial``); a board that refuses one is left out and the replica
        placed again. Raises PlacementError (with the boards' refusals)."""
        cores = cores or t.cores
        added: list[Replica] = []
        refusals: list[str] = []
        excluded = set(exclude)
        while len(added) < n:
            try:
                where = self._place(t, cores, n - len(added), excluded, only, partial)
            except PlacementError as e:
                if partial and added:
                    break
                raise PlacementError("; ".join([str(e)] + refusals)) from None
            new = [self._replica(t, self.boards[i], cores) for i in where]
            outcomes = await asyncio.gather(*(self._deploy_replica(r) for r in new), return_exceptions=True)
            for r, o in zip(new, outcomes):
                if isinstance(o, BaseException):
                    excluded.add(r.board.index)
                    refusals.append(f"board {r.board.index} refused: {o}")
                else:
                    added.append(r)
            if t.removed:
                raise TenantRemoved(f"tenant {t.name!r} was removed while its replicas were deployed")
        return added

    def _replica(self, t: TenantState, b: BoardState, cores: int) -> Replica:
        r = Replica(t, next(t.ids), b, cores)
        t.replicas.append(r)
        b.replicas.append(r)
        return r

    def _detach(self, r: Replica) -> None:
        r.state = "gone"
        for holder in (r.tenant.replicas, r.board.replicas):
            if r in holder:
                holder.remove(r)
        if r.idle is not None:
            r.idle.set()

    async def _deploy_replica(self, r: Replica) -> Replica:
        b, t = r.board, r.tenant
        try:
            info = await b.handle.deploy.remote(r.name, t.ref, r.cores, BOARD_PENDING, t.options)
        except self.ray.exceptions.RayActorError as e:
            self._board_down(b, f"its actor died during a deploy ({type(e).__name__})")
            self._detach(r)
            raise ClusterError(f"board {b.index} died while replica {r.name} was deployed") from None
        except Exception as e:  # noqa: BLE001 - the board refused (memory, contexts): the caller places elsewhere
            self._detach(r)
            raise DeployError(_cause(e)) from None
        if r.state != "deploying":  # its board went down, or the tenant was removed, meanwhile
            self._detach(r)
            if b.up:
                self._spawn(self._remove_on_board(b, r.name))
            raise ClusterError(f"replica {r.name} on board {b.index} was dropped while it deployed")
        r.state = "active"
        r.core_list = list(info["cores"])
        t.problem = None
        self._flush(t)
        return r

    async def _remove_on_board(self, b: BoardState, name: str) -> None:
        try:
            await b.handle.remove.remote(name)
        except self.ray.exceptions.RayActorError:
            pass  # a dead board holds nothing

    async def retire(self, r: Replica) -> None:
        """Takes ``r`` out of routing, lets its requests in flight finish, removes it."""
        r.state = "draining"
        queued, r.queue = list(r.queue), collections.deque()
        for q in queued:
            self._route(q)
        if r.inflight:
            r.idle = asyncio.Event()
            try:
                await asyncio.wait_for(r.idle.wait(), self.drain_timeout_s)
            except asyncio.TimeoutError:
                log.error("replica %s on board %d still had %d requests in flight after %.0f s; removing it",
                          r.name, r.board.index, r.inflight, self.drain_timeout_s)
        if r.board.up and r.state != "gone":
            await self._remove_on_board(r.board, r.name)
        self._detach(r)

    # ---- failover -----------------------------------------------------------------------------------
    def _board_down(self, b: BoardState, reason: str) -> None:
        """Board ``b`` is gone with its replicas: re-route, re-place."""
        if not b.up:
            return
        b.up = False
        b.downs += 1
        b.down_reason, b.down_at = reason, time.monotonic()
        lost = list(b.replicas)
        log.warning("board %d (%s) is down: %s; %d replica(s) lost: %s", b.index, b.name, reason, len(lost),
                    ", ".join(r.name for r in lost) or "none")
        affected: list[TenantState] = []
        for r in lost:
            queued = list(r.queue)
            r.queue.clear()
            self._detach(r)
            if r.tenant not in affected:
                affected.append(r.tenant)
            for q in queued:
                self._route(q)
            for call in list(r.sent):  # its calls in flight will fail: their requests go elsewhere now
                call.abandoned = True
                for q in call.batch:
                    self._retry(q, f"board {b.index} went down")
        record = Failover(b.index, reason, b.down_at)
        self.failovers.append(record)
        self._spawn(self._replace(affected, record))

    async def _replace(self, affected: list[TenantState], record: Failover) -> None:
        todo = [(t, t.wanted - sum(r.state in ("active", "deploying") for r in t.replicas))
                for t in affected if not t.removed]
        short = [(t, n) for t, n in todo if n > 0]
        outcomes = await asyncio.gather(*(self.add_replicas(t, n, partial=True) for t, n in short),
                                        return_exceptions=True)
        for (t, _), o in zip(short, outcomes):
            if isinstance(o, BaseException):
                if not t.live():
                    t.problem = (f"tenant {t.name!r} has no live replica: board {record.board} went down "
                                 f"({record.reason}) and re-placing it failed: {o}")
                record.tenants[t.name] = str(o)
                log.error("failover of tenant %s from board %d failed: %s", t.name, record.board, o)
            else:
                record.tenants[t.name] = time.monotonic()
                log.info("tenant %s re-placed from board %d onto board(s) %s in %.3f s", t.name, record.board,
                         sorted({r.board.index for r in o}), time.monotonic() - record.detected)
        for t, _ in todo:  # tenants that kept enough replicas elsewhere serve on
            record.tenants.setdefault(t.name, time.monotonic())
            self._flush(t)
        record.done = time.monotonic()

    async def _health(self, b: BoardState) -> None:
        while not self.closed:
            try:
                await self._check(b)
            except Exception as e:  # noqa: BLE001 - a bug must not stop the checks
                log.error("health check of board %d failed: %r", b.index, e)
            await asyncio.sleep(self.health_interval_s)

    async def _watch(self) -> None:
        """Finds boards whose actor died (Ray restarting it) within a watch
        interval, and answers requests that waited too long for a replica."""
        while not self.closed:
            try:
                restarting = await self._loop.run_in_executor(None, restarting_actors)  # a GCS round trip
                for b in self.boards:
                    if b.up and restarting and b.actor_id in restarting:
                        self._board_down(b, "its actor died (Ray is restarting it)")
                self._expire_waiting()
            except Exception as e:  # noqa: BLE001 - a bug must not stop the watch
                log.error("the cluster watch failed: %r", e)
            await asyncio.sleep(self.watch_interval_s)

    async def _check(self, b: BoardState) -> None:
        try:
            info = await asyncio.wait_for(self._ask(b.handle.info.remote()), self.health_timeout_s)
        except asyncio.TimeoutError:
            if b.up:
                self._board_down(b, f"no answer to a health check within {self.health_timeout_s:.0f} s")
                self.ray.kill(b.handle, no_restart=False)  # restart it: it may rejoin
            return
        except self.ray.exceptions.RayActorError as e:
            if b.up:
                self._board_down(b, f"its actor died ({type(e).__name__})")
            return
        if b.up and info["boot"] != b.boot:
            self._board_down(b, "its actor restarted (its replicas were lost)")
        if not b.up and not self.closed:
            await self._rejoin(b, info)

    @staticmethod
    async def _ask(ref):
        return await ref

    async def _rejoin(self, b: BoardState, info: dict) -> None:
        for name in info["tenants"]:  # nothing on a board that was down is the controller's any more
            await self._remove_on_board(b, name)
        b.learn(info)
        b.up = True
        b.rejoins += 1
        log.info("board %d (%s) rejoined the pool (boot %s)", b.index, b.name, b.boot[:8])
        for t in list(self.tenants.values()):
            short = t.wanted - sum(r.state in ("active", "deploying") for r in t.replicas)
            if short > 0 and not t.removed and t.board_kind == b.kind:
                try:
                    await self.add_replicas(t, short, partial=True)
                except (PlacementError, ClusterError, TenantRemoved) as e:
                    log.info("tenant %s still short of %d replica(s): %s", t.name, short, e)
                self._flush(t)

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for t in list(self.tenants.values()):
            if t.waiting and now - t.waiting[0].waiting_since > self.wait_timeout_s:
                keep = collections.deque()
                for q in t.waiting:
                    if now - q.waiting_since > self.wait_timeout_s:
                        self._answer(q, error=ClusterError(
                            f"tenant {t.name!r} had no live replica for {self.wait_timeout_s:.0f} s"
                            f"{': ' + t.problem if t.problem else ''}"))
                    else:
                        keep.append(q)
                t.waiting = keep

    # ---- tenants --------------------------------------------------------------------------------------
    async def deploy(self, t: TenantState) -> TenantState:
        if t.name in self.tenants:
            raise DeployError(f"a tenant named {t.name!r} is already deployed")
        self.tenants[t.name] = t
        try:
            await self.add_replicas(t, t.wanted)
        except BaseException:
            await self.remove(t)
            raise
        log.info("deploy tenant=%s kind=%s boards=%s replicas=%d cores=%d", t.name, t.kind,
                 [r.board.index for r in t.replicas], t.wanted, t.cores)
        return t

    async def remove(self, t: TenantState) -> None:
        """Removes ``t``: its waiting and queued requests fail with TenantRemoved,
        those in flight finish, its replicas leave their boards."""
        t.removed = True
        if self.tenants.get(t.name) is t:
            del self.tenants[t.name]
        gone = TenantRemoved(f"tenant {t.name!r} was removed before this request ran")
        waiting, t.waiting = t.waiting, collections.deque()
        for q in waiting:
            self._answer(q, error=gone)
        replicas = list(t.replicas)
        for r in replicas:
            queued, r.queue = r.queue, collections.deque()
            for q in queued:
                self._answer(q, error=gone)
            r.state = "draining"
        await asyncio.gather(*(self._remove_on_board(r.board, r.name) for r in replicas if r.board.up))
        for r in replicas:
            self._detach(r)
        t.ref = None

    async def reallocate(self, t: TenantState, cores: int | None, replicas: int | None) -> dict:
        """Live: every replica to ``cores`` cores (on its board when it has
        room, else migrated), then ``replicas`` replicas."""
        before = t.placement()
        moved = []
        if cores is not None and cores != t.cores:
            largest = max(b.cores.get(t.kind, 0) for b in self.boards if b.kind == t.board_kind)
            if not isinstance(cores, int) or isinstance(cores, bool) or not 1 <= cores <= largest:
                raise PlacementError(f"tenant {t.name!r}: {cores!r} {t.kind.upper()} cores per replica; a "
                                     f"{t.board_kind} board has {largest}")
            for r in [r for r in t.replicas if r.state == "active"]:
                if r.board.free(t.kind) + r.cores >= cores:
                    old = r.cores
                    r.cores = cores  # reserved while the board re-allocates
                    try:
                        info = await r.board.handle.reallocate.remote(r.name, cores)
                    except Exception as e:  # noqa: BLE001 - the board refused or died
                        r.cores = old
                        if isinstance(e, self.ray.exceptions.RayActorError):
                            self._board_down(r.board, f"its actor died during a re-allocation ({type(e).__name__})")
                            continue
                        raise DeployError(f"board {r.board.index}: {_cause(e)}") from None
                    r.core_list = list(info["cores"])
                else:
                    await self.migrate(r, cores=cores)
                    moved.append(r.board.index)
            t.cores = cores
        if replicas is not None and replicas != t.wanted:
            have = [r for r in t.replicas if r.state in ("active", "deploying")]
            if replicas > len(have):
                t.wanted = replicas
                await self.add_replicas(t, replicas - len(have))
            else:
                t.wanted = replicas
                await asyncio.gather(*(self.retire(r) for r in have[replicas:]))
        return {"before": before, "after": t.placement(), "migrated_from": moved}

    async def migrate(self, r: Replica, *, cores: int | None = None, to: int | None = None) -> Replica:
        """Moves replica ``r`` to another board (``to``, or where placement
        says): deploy there, switch routing, drain, remove."""
        t = r.tenant
        exclude = () if to is not None else (r.board.index,)
        if to == r.board.index:
            raise PlacementError(f"replica {r.name} is already on board {to}")
        (new,) = await self.add_replicas(t, 1, cores=cores or r.cores, exclude=exclude, only=to)
        log.info("migrate %s: board %d -> board %d (%d cores)", t.name, r.board.index, new.board.index, new.cores)
        await self.retire(r)
        return new

    async def reset(self, t: TenantState) -> None:
        for r in [r for r in t.replicas if r.fault is not None]:
            await r.board.handle.reset.remote(r.name)
            r.fault = None
        self._flush(t)

    async def board_stats(self) -> dict[int, dict]:
        """Each live board's own figures (board.stats()), by index."""
        ups = [b for b in self.boards if b.up]
        outs = await asyncio.gather(*(asyncio.wait_for(self._ask(b.handle.stats.remote()), self.health_timeout_s)
                                      for b in ups), return_exceptions=True)
        return {b.index: o for b, o in zip(ups, outs) if not isinstance(o, BaseException)}

    # ---- life cycle ---------------------------------------------------------------------------------------
    async def _close(self) -> None:
        for t in list(self.tenants.values()):
            try:
                await self.remove(t)
            except Exception as e:  # noqa: BLE001 - go on with the others
                log.error("removing tenant %s at close failed: %s", t.name, e)
        self.closed = True
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self, timeout: float = 120.0) -> None:
        if self.closed:
            return
        try:
            self.call(self._close(), timeout)
        finally:
            self.closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
