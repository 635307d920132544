"""The timing-only board: the emulated device with frames timed and never
run. Its requests take exactly the modeled cycles the computing emulation
gives them, it writes no output, and a board actor answers NotComputed.
In-process (no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np
from harness import SMALL_BANK

from vfpga.driver.emulated import EmulatedDevice
from vfpga.runtime.cluster.board import Board, NotComputed, RemoteError
from vfpga.runtime.errors import QueueFull, TenantFault
from vfpga.runtime.tenants import Accelerator


def _run(model, compute: bool):
    accel = Accelerator("u200", device=EmulatedDevice("u200", bank_capacity=SMALL_BANK, compute=compute))
    try:
        t = accel.deploy(model.compiled, cores=3, name="m")
        out = [t.run_quantized(x) for x in model.inputs[:3]]
        frames = accel.device.dispatcher.timeline.frames
        return [o[0][0] for o in out], [o[1] for o in out], frames
    finally:
        accel.close()


def test_same_modeled_time_no_arithmetic(models):
    m = models["conv"]
    ys, infos, frames = _run(m, compute=True)
    ys_t, infos_t, frames_t = _run(m, compute=False)
    for i, y in enumerate(ys):
        m.check([y], i)  # the computing board is right ...
    assert [i.modeled_cycles for i in infos_t] == [i.modeled_cycles for i in infos]  # ... and takes this long
    assert frames_t == frames > 0 and all(i.ok for i in infos_t)
    for y, y_t in zip(ys, ys_t):  # the timing-only board never wrote the output tensor: what is there is not it
        assert y_t.shape == y.shape and not np.array_equal(y_t, y)


def test_the_board_actor_body_answers_not_computed(models):
    m = models["conv"]
    board = Board(7, "u200", "timing", SMALL_BANK)

    async def go():
        await board.deploy("m#1", m.compiled, 2, 8)
        return await board.infer_batch("m#1", m.inputs[:2] + [np.zeros(3, np.int8)], True)

    try:
        out = asyncio.run(go())
        info = board.info()
    finally:
        board.close()
    (ok0, (y0, run0)), (ok1, (y1, _)), (bad, err) = out
    assert ok0 and ok1 and not bad
    assert isinstance(y0, NotComputed) and y0.board == 7 and y0.modeled_cycles == run0.modeled_cycles > 0
    assert isinstance(err, RemoteError) and err.kind == "ValueError" and "int8 HWC input" in err.message
    assert info["mode"] == "timing" and info["tenants"] == {"m#1": [0, 1]} and info["cores"] == {"cnn": 16, "rnn": 8}


def test_remote_errors_cross_back_as_the_runtime_errors():
    e = RemoteError.of(QueueFull("full")).rebuild("vision", 2)
    assert isinstance(e, QueueFull) and "full (board 2)" in str(e)
    f = RemoteError.of(TenantFault("vision#1", "SEGMENT fault at 0x40", "fault-info", None)).rebuild("vision", 1)
    assert isinstance(f, TenantFault) and f.tenant == "vision" and f.fault == "fault-info"
    assert "on board 1" in str(f) and "SEGMENT fault" in str(f)
    other = RemoteError.of(KeyError("x")).rebuild("vision", 0)
    assert "KeyError" in str(other) and "board 0" in str(other)
