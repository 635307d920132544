"""Dynamic batching of a CNN tenant's requests on the emulated board (real C-sim).

A batch runs every convolution whose weights fit the core with its weights
loaded once for all items (runtime/compiler/cnn_batch.py); each request of
a batch must give exactly what it gives run alone, host layers
(onnxruntime) included; requests that arrive together run as one batch;
bad input is refused at submit; concurrent submitters through live
re-allocation lose, duplicate or corrupt nothing; a deploy that does not
fit says which batch would.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from harness import bank_bytes_for, emulated_accelerator, submit_through_reallocations
from onnx import helper

from vfpga.runtime import tenants
from vfpga.runtime.compiler import cnn_batch
from vfpga.runtime.compiler.segment import cnn_batch_layout
from vfpga.runtime.errors import DeployError
from vfpga.runtime.models import small

# max_delay_us: requests submitted back to back (inputs made beforehand) meet in one batch well within
# it; a batch short of max_batch waits all of it
WAIT = 3e5


def with_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a Softmax on its output: a layer the CNN cores lack,
    so the host runs it (onnxruntime) between accelerator parts."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    out = m.graph.output[0]
    m.graph.node.append(helper.make_node("Softmax", [out.name], ["probs"], name="softmax", axis=1))
    probs = onnx.ValueInfoProto()
    probs.CopyFrom(out)
    probs.name = "probs"
    del m.graph.output[:]
    m.graph.output.append(probs)
    return m


@pytest.fixture(scope="module")
def models():
    calib = small.calibration_inputs(4, 1)
    ov = tenants.open("u200")
    try:
        return {"small": ov.compile(small.small_cnn(3), calib), "softmax": ov.compile(with_softmax(small.small_cnn(3)),
                                                                                      calib)}
    finally:
        ov.close()


def _x(seed: int) -> np.ndarray:
    return small.calibration_inputs(1, 100 + seed)[0]


@pytest.mark.parametrize("name", ["small", "softmax"])
def test_each_request_of_a_batch_equals_its_unbatched_run(models, name):
    compiled = models[name]
    assert any(p.kind == "cpu" for p in compiled.parts) == (name == "softmax")
    ov = emulated_accelerator("u200", 64 << 20)
    try:
        alone = ov.deploy(compiled, cores=1, name="alone")
        batch = ov.deploy(compiled, cores=4, name="batch", max_batch=4, max_delay_us=WAIT)
        assert batch.batched.sizes == [1, 2, 4] and batch.batched.weight_frames[4] > 0
        seeds = list(range(11))
        want = {s: alone.run(_x(s)) for s in seeds}
        assert len({want[s].tobytes() for s in seeds}) == len(seeds)  # distinct inputs, distinct results
        for group in (seeds[:4], seeds[4:7], seeds[7:8], seeds[8:]):  # 4, 3 (padded to 4), 1, 3
            xs = [_x(s) for s in group]
            futs = [batch.submit_float_with_info(x) for x in xs]
            for s, f in zip(group, futs):
                got, info = f.result(120)
                assert info.batch == len(group) and info.batch_size == batch.batched.size_for(len(group))
                assert 0 < info.input_marshal_s < info.submit_to_doorbell_s  # all the batch's inputs, then its doorbell
                assert np.array_equal(got, want[s]), f"request {s} in a batch of {len(group)} differs from alone"
        assert batch.requests == len(seeds) and batch.failed == 0
    finally:
        ov.close()


def test_bad_input_is_refused_at_submit_and_spares_the_batch(models):
    ov = emulated_accelerator("u200", 64 << 20)
    try:
        alone = ov.deploy(models["small"], cores=1, name="alone")
        t = ov.deploy(models["small"], cores=2, name="batch", max_batch=4, max_delay_us=2e5)
        want = [alone.run(_x(1)), alone.run(_x(2))]
        fut0 = t.submit_float_with_info(_x(1))
        with pytest.raises(ValueError, match="shape"):
            t.submit(np.zeros((1, 3, 16, 16), np.float32))
        fut1 = t.submit_float_with_info(_x(2))
        for f, w in zip((fut0, fut1), want):
            got, info = f.result(120)
            assert info.batch == 2 and np.array_equal(got, w)
        assert t.requests == 2 and t.failed == 0
    finally:
        ov.close()


def test_concurrent_submitters_through_live_reallocation(models):
    """Four threads submit while the tenant's cores change; every request is
    answered once, with its own unbatched result."""
    compiled = models["softmax"]
    ov = emulated_accelerator("u200", 64 << 20)
    try:
        alone = ov.deploy(compiled, cores=1, name="alone")
        t = ov.deploy(compiled, cores=2, name="batch", max_batch=4, max_delay_us=2000)
        seeds = {(i, j): 10 * i + j for i in range(4) for j in range(8)}
        want = {s: alone.run(_x(s)) for s in seeds.values()}
        infos = submit_through_reallocations(
            ov, t, lambda i, j: t.submit_float_with_info(_x(seeds[i, j])), lambda i, j: want[seeds[i, j]],
            np.array_equal, (4, 1, 3, [ov.cores[9], ov.cores[12]], 2))
        assert max(info.batch for info in infos) > 1  # batching did happen
    finally:
        ov.close()


def test_batching_and_requests_in_flight_are_exclusive(models):
    ov = emulated_accelerator("u200", 64 << 20)
    try:
        with pytest.raises(DeployError, match="batches .* or keeps requests in flight"):
            ov.deploy(models["small"], cores=2, max_batch=2, max_inflight=2)
        assert not ov.tenants and ov.free_cores == ov.cores
    finally:
        ov.close()


def test_a_deploy_that_does_not_fit_says_which_batch_would(models):
    c = models["small"]
    two = cnn_batch_layout(cnn_batch.compile_batched(c, 2)).size
    eight = cnn_batch_layout(cnn_batch.compile_batched(c, 8)).size
    assert two < eight
    ov = emulated_accelerator("u200", bank_bytes_for("u200", two) + 4096)
    try:
        with pytest.raises(DeployError, match=r"max_batch=2 would fit"):
            ov.deploy(c, cores=2, max_batch=8)
        assert not ov.tenants
        t = ov.deploy(c, cores=2, max_batch=2, max_delay_us=1e5)
        assert t.run(_x(0)).shape == (1, 10)
    finally:
        ov.close()
