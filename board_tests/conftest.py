"""Board tests: the host scenarios on a real board through the vfpga overlay.

They need a PYNQ device that is not the emulator and a built overlay for it
(``make -C overlay BOARD=<board>``, or VFPGA_OVERLAY=<path to .bit/.xclbin>
with VFPGA_BOARD=<board>). Anywhere else every test is skipped, and the
reason says what is missing.
"""

from __future__ import annotations

import os

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))

def _board_or_reason():
    """(board, bitfile, device) or (None, reason)."""
    try:
        import pynq

        from vfpga.driver.emulated import EmulatedDevice
        from vfpga.overlay.vfpga_overlay import board_of, find_board_overlay
    except Exception as e:  # noqa: BLE001 - any import problem means no board path here
        return None, f"vfpga/pynq not importable: {e}"
    try:
        real = [d for d in pynq.Device.devices if not isinstance(d, EmulatedDevice)]
    except Exception as e:  # noqa: BLE001
        return None, f"PYNQ could not probe devices: {e}"
    if not real:
        return None, "no FPGA board: PYNQ finds no device except the vfpga emulator (board tests run on a board)"
    device = real[0]
    bitfile = os.environ.get("VFPGA_OVERLAY")
    if bitfile:
        board = os.environ.get("VFPGA_BOARD") or board_of(bitfile)
        return (board, bitfile, device), None
    found = find_board_overlay(device)
    if found is None:
        return None, (f"board {getattr(device, 'name', device)!r} found, but no built vfpga overlay for it: "
                      "make -C overlay BOARD=<board>, or set VFPGA_OVERLAY and VFPGA_BOARD")
    return (*found, device), None


_FOUND, _REASON = _board_or_reason()


def pytest_report_header(config):
    return f"vfpga board tests: {'board ' + _FOUND[0] + ' with ' + _FOUND[1] if _FOUND else 'SKIPPED: ' + _REASON}"


def pytest_collection_modifyitems(config, items):
    # the hook sees the whole session's items: mark only this directory's
    if _FOUND is None:
        skip = pytest.mark.skip(reason=_REASON)
        for item in items:
            if os.path.dirname(os.path.abspath(str(item.fspath))).startswith(_HERE):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def board_overlay():
    """The loaded VfpgaOverlay (downloaded once per session)."""
    from vfpga.overlay.vfpga_overlay import VfpgaOverlay

    board, bitfile, device = _FOUND
    return VfpgaOverlay(bitfile, board=board, device=device)


@pytest.fixture
def accel(board_overlay):
    """A fresh Accelerator on the board (every tenant removed at the end)."""
    from vfpga.runtime import tenants

    a = tenants.Accelerator(board_overlay.board, device=board_overlay.device)
    yield a
    a.close()
