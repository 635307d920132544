"""Failover on three emulated boards: a board's actor killed (ray.kill) in
the middle of a request stream; every request gets exactly one answer
(here, with enough room left, the right result), none is lost, the tenants
end up on the survivors. A board restarted by Ray rejoins and gets
replicas back. Without room left, requests get a clear error, never a hang."""

from __future__ import annotations

import time

import pytest
from stream import Stream

from vfpga.runtime.errors import ClusterError


@pytest.fixture(scope="module")
def cl(make_cluster):
    c = make_cluster({"u200": 3}, wait_timeout_s=20.0)
    yield c
    c.close()


def _wait(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def test_a_board_killed_mid_stream(cl, models, ray_session):
    a = cl.deploy(models["conv"].compiled, cores=4, name="a")
    b = cl.deploy(models["conv2"].compiled, cores=4, replicas=2, spread=True, name="b")
    c = cl.deploy(models["conv"].compiled, cores=6, name="c")
    assert [p["board"] for p in a.placement] == [0] and [p["board"] for p in c.placement] == [0]
    assert sorted(p["board"] for p in b.placement) == [0, 1]
    s = Stream({"a": (a, models["conv"]), "b": (b, models["conv2"]), "c": (c, models["conv"])}, per_client=40)
    s.run(during=lambda: ray_session.kill(cl.board_handle(0)), after=30)
    assert s.check_all_right() == 120  # none lost, none wrong
    assert cl.controller.duplicates == 0  # none answered twice
    boards = {x.index: x for x in cl.boards()}
    assert not boards[0].up and boards[0].downs == 1 and "died" in boards[0].down_reason
    # the lost replicas are deployed again on the survivors, whether or not the stream outlasted that
    _wait(lambda: all(p["state"] == "active" for t in (a, b, c) for p in t.placement), what="replicas redeployed")
    for t, n in ((a, 1), (b, 2), (c, 1)):
        assert len(t.placement) == n and all(p["board"] in (1, 2) and p["state"] == "active" for p in t.placement)
    assert sorted(p["board"] for p in b.placement) == [1, 2]  # still spread
    (f,) = cl.failovers
    assert f.board == 0 and set(f.tenants) == {"a", "b", "c"} and all(isinstance(v, float) for v in f.tenants.values())
    stats = cl.stats()
    assert sum(stats[n].retried for n in "abc") > 0  # requests in flight on board 0 were sent again
    assert all(stats[n].failed == 0 for n in "abc")


def test_a_restarted_board_rejoins(cl, models, ray_session):
    b = cl.tenants["b"]
    victim = next(p["board"] for p in b.placement if p["board"] != 2)  # b's replica that is not on board 2
    s = Stream({"b": (b, models["conv2"]), "a": (cl.tenants["a"], models["conv"])}, per_client=30)
    s.run(during=lambda: ray_session.kill(cl.board_handle(victim), no_restart=False), after=10)
    assert s.check_all_right() == 60
    _wait(lambda: cl.boards()[victim].up, what=f"rejoin of board {victim}")
    board = cl.boards()[victim]
    assert board.rejoins == 1 and board.downs == 1
    _wait(lambda: len(b.placement) == 2 and all(p["state"] == "active" for p in b.placement),
          what="b's second replica back")
    assert sorted(p["board"] for p in b.placement) == [1, 2]
    for i, x in enumerate(models["conv2"].inputs):
        models["conv2"].check(b.run_quantized(x)[0], i)
    assert cl.controller.duplicates == 0


def test_without_room_requests_get_a_clear_error(cl, models, ray_session):
    for name in list(cl.tenants):
        cl.remove(name)
    x = cl.deploy(models["conv"].compiled, cores=12, name="x")
    y = cl.deploy(models["conv"].compiled, cores=12, name="y")
    (bx,), (by,) = [p["board"] for p in x.placement], [p["board"] for p in y.placement]
    assert {bx, by} == {1, 2}
    s = Stream({"x": (x, models["conv"]), "y": (y, models["conv"])}, per_client=30)
    t0 = time.monotonic()
    s.run(during=lambda: ray_session.kill(cl.board_handle(by)), after=10, timeout=60)
    assert time.monotonic() - t0 < 60  # every request answered: none hangs
    xs, x_errors = s.outcomes("x")
    assert len(xs) == 30 and not x_errors
    ys, y_errors = s.outcomes("y")
    assert y_errors and len(ys) + len(y_errors) == 30
    for e in y_errors:
        assert isinstance(e, ClusterError) and "no live replica" in str(e) and "room for 0" in str(e), e
    with pytest.raises(ClusterError, match=f"board {by} went down"):
        y.run_quantized(models["conv"].inputs[0])
    assert cl.controller.duplicates == 0
