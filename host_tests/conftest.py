"""Shared fixtures for the host tests (emulation, no board needed)."""

import pytest
from harness import SMALL_BANK

from vfpga.driver.emulated import EmulatedDevice


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
