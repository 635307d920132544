"""Shared fixtures for the host tests (emulation, no board needed)."""

import os
import subprocess
import sys
import time

import onnx
import pytest
from harness import CLIENT_PACKAGES, CLIENT_VENV, SMALL_BANK, emulated_accelerator

from vfpga.driver.emulated import EmulatedDevice
from vfpga.runtime.models import small

# The files that take longest (pytest --durations=0, summed per file), longest first. pytest-xdist hands
# files to the workers in collection order (pyproject's --no-loadscope-reorder: not re-sorted by test
# count), so these start first and no worker begins a 20-second file while the other sits idle at the
# end of the run. Only the order changes.
RUN_FIRST = (
    "models/test_zoo.py",
    "hls/test_csim_bodies_agree.py",
    "cluster/test_failover.py",
    "cluster/test_serving.py",
    "cluster/test_cluster.py",
    "hls/test_rnn_core.py",
    "tenants/test_multitenant.py",
    "serving/test_http.py",
    "compiler/test_exporter_quirks.py",
    "compiler/test_estimates.py",
    "hls/test_csim_testbench.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {f"host_tests/{f}": i for i, f in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(RUN_FIRST)))  # stable: the rest keep their order


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    """Tests never read or write the user's compile cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VFPGA_CACHE_DIR", str(tmp_path_factory.mktemp("vfpga-cache")))
    yield
    mp.undo()


@pytest.fixture
def make_emulated_device():
    """Factory: ``make_emulated_device(board="u200", **kwargs)`` -> a fresh
    EmulatedDevice with small banks unless ``bank_capacity`` is given."""

    def make(board="u200", **kwargs):
        kwargs.setdefault("bank_capacity", SMALL_BANK)
        return EmulatedDevice(board, **kwargs)

    return make


@pytest.fixture
def emulated_device(make_emulated_device):
    """A fresh emulated u200 with small banks."""
    return make_emulated_device("u200")


@pytest.fixture(scope="module")
def small_cnn_path(tmp_path_factory):
    """The float small_cnn (seed 0) saved as an ONNX file."""
    path = tmp_path_factory.mktemp("models") / "small_cnn.onnx"
    onnx.save(small.small_cnn(seed=0), str(path))
    return path


@pytest.fixture(scope="module")
def accelerators():
    """``accelerators(board)``: one emulated accelerator per board (64 MiB
    banks), shared by the tests of a module and closed after them."""
    made = {}

    def get(board: str):
        if board not in made:
            made[board] = emulated_accelerator(board, 64 << 20)
        return made[board]

    yield get
    for accel in made.values():
        accel.close()


@pytest.fixture(scope="session")
def triton_python():
    """The python of .venv-client with tritonclient[http,grpc] (created on
    first use, about 20 s; skips, saying why, where it cannot)."""
    py = os.path.join(CLIENT_VENV, "bin", "python")
    probe = [py, "-c", "import tritonclient.http, tritonclient.grpc"]
    if os.path.exists(py) and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    t0 = time.monotonic()
    steps = [[sys.executable, "-m", "venv", "--clear", CLIENT_VENV],
             [py, "-m", "pip", "install", "--quiet", *CLIENT_PACKAGES]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"cannot create the tritonclient environment ({' '.join(cmd[:4])}): "
                        f"{(r.stderr or r.stdout)[-500:]}")
    print(f"created {CLIENT_VENV} in {time.monotonic() - t0:.1f} s")
    return py
