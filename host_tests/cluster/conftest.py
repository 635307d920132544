"""Fixtures of the cluster tests: one local Ray for the session (started by
the tests, on the loopback address, with a small object store, in a temp
dir of its own; stopped at the end), clusters of emulated or timing-only
boards on it, and the small models they serve with their golden outputs.

Every cluster a test starts is closed by it (its board actors end); the
Ray session is shut down by the fixture that started it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from vfpga.runtime.cluster.pool import LOOPBACK_ENV

os.environ.setdefault(LOOPBACK_ENV, "0")  # before Ray's first import: the test cluster binds to 127.0.0.1
ray = pytest.importorskip("ray", reason="the cluster tests need Ray: pip install -e \".[test]\" brings it")

from harness import SMALL_BANK, make_model  # noqa: E402

from vfpga.runtime.cluster import Cluster  # noqa: E402
from vfpga.runtime.models import small  # noqa: E402

BOARDS = 6  # vfpga_u200 units the session's Ray declares (a test module's cluster takes up to this)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the cluster tests."""
    tmp = tempfile.mkdtemp(prefix="vfpga-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    ray.init(address="local", num_cpus=1, resources={"vfpga_u200": BOARDS, "vfpga_zcu104": 1},
             object_store_memory=128 << 20, include_dashboard=False, log_to_driver=False, _temp_dir=tmp)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def make_cluster(ray_session):
    """Factory: ``make_cluster({"u200": 3}, mode="emulated", **options)`` -> a
    Cluster on the session's Ray (emulated boards with small banks by default);
    closed at the end of the session if the test did not close it."""
    made = []

    def make(boards, mode="emulated", **kw):
        kw.setdefault("bank_capacity", SMALL_BANK)
        kw.setdefault("health_interval_s", 0.25)
        c = Cluster(boards, mode=mode, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture(scope="session")
def models():
    """Two small compiled CNNs (all on the cores) with inputs and golden outputs."""
    return {"conv": make_model("conv", small.conv_graph(1), n_inputs=6, seed=1),
            "conv2": make_model("conv2", small.conv_graph(2, shape=(8, 8, 8), cout=16), n_inputs=6, seed=2)}
