"""A request stream for the cluster tests: client threads that keep a few
requests outstanding each, record every answer (result or error) and can
run something in the middle (a kill, a migration) once enough answers came."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future


class Stream:
    """``clients``: {name: (tenant, model)}; each submits ``per_client``
    requests of its model's inputs, ``depth`` outstanding at a time."""

    def __init__(self, clients: dict, per_client: int, depth: int = 4):
        self.clients = clients
        self.per_client = per_client
        self.depth = depth
        self.futures: dict[str, list[Future]] = {n: [] for n in clients}
        self.answered = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.submit_errors: list[BaseException] = []

    def _done(self, _f) -> None:
        with self._cond:
            self.answered += 1
            self._cond.notify_all()

    def _client(self, name: str) -> None:
        tenant, model = self.clients[name]
        slots = threading.Semaphore(self.depth)
        for i in range(self.per_client):
            slots.acquire()
            try:
                f = tenant.submit_quantized(model.inputs[i % len(model.inputs)])
            except Exception as e:  # noqa: BLE001 - a refusal at submit is an answer too
                self.submit_errors.append(e)
                f = Future()
                f.set_exception(e)
            f.add_done_callback(lambda f: slots.release())
            f.add_done_callback(self._done)
            self.futures[name].append(f)

    def run(self, during=None, after: int = 0, timeout: float = 120.0) -> None:
        """Streams every client's requests; calls ``during()`` once ``after``
        answers came; waits (bounded) until every request is answered."""
        threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in self.clients]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        if during is not None:
            with self._cond:
                assert self._cond.wait_for(lambda: self.answered >= after, deadline - time.monotonic()), \
                    f"only {self.answered} answers in {timeout} s"
            during()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        total = self.per_client * len(self.clients)
        with self._cond:
            assert self._cond.wait_for(lambda: self.answered >= total, max(0.0, deadline - time.monotonic())), \
                f"{total - self.answered} of {total} requests got no answer within {timeout} s"

    def outcomes(self, name: str) -> tuple[list, list]:
        """(results with their input index, errors) of client ``name``; every future answered once."""
        results, errors = [], []
        for i, f in enumerate(self.futures[name]):
            assert f.done()
            e = f.exception()
            (errors.append(e) if e is not None else results.append((i, f.result())))
        assert len(results) + len(errors) == self.per_client
        return results, errors

    def check_all_right(self) -> int:
        """Every request of every client answered with the right output; returns how many."""
        n = 0
        for name, (_, model) in self.clients.items():
            results, errors = self.outcomes(name)
            assert not errors, f"{name}: {errors[:3]}"
            for i, (outs, info) in results:
                model.check(outs, i % len(model.inputs))
                assert info.ok
            n += len(results)
        return n
