"""Shared fixtures for the host tests (emulation, no board needed)."""

import onnx
import pytest
from harness import SMALL_BANK, emulated_accelerator

from vfpga.driver.emulated import EmulatedDevice
from vfpga.runtime.models import small


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
