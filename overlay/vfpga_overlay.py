"""The vfpga overlay on a board: a ``pynq.Overlay`` that knows its board config.

``make -C overlay BOARD=<board>`` leaves ``vfpga_<board>.bit`` + ``.hwh``
(Zynq) or ``vfpga_<board>.xclbin`` (Alveo) in this directory. This class
loads one, finds the level-1 dispatcher in it (by the config's VLNV on Zynq,
by the kernel name ``vf_dispatcher_top`` on Alveo, where v++ names compute
units after the kernel), checks the address map against the config and
hands vfpga.runtime what it needs: the PYNQ device, the board config and the
dispatcher's ip_dict entry (``vfpga.runtime.tenants.Accelerator(board, device=ov.device)``).

This module imports pynq; ``vfpga.overlay`` imports it only when
``VfpgaOverlay`` is first used, so board configs and build parameters stay
importable (and cheap) on any host.
"""

from __future__ import annotations

import os
import re

import pynq

from . import config as board_config

HERE = os.path.dirname(os.path.abspath(__file__))
DISPATCHER_KERNEL = "vf_dispatcher_top"
_NAME = re.compile(r"^vfpga_(?P<board>[A-Za-z0-9_]+)\.(bit|xclbin)$")


class OverlayError(RuntimeError):
    """A bitstream that is not a vfpga overlay, or disagrees with its board config."""


def bitstream_path(board: str, directory: str = HERE) -> str:
    """The overlay file ``make -C overlay BOARD=board`` produces."""
    cfg = board_config.load(board)
    ext = "xclbin" if cfg.get("platform") else "bit"
    return os.path.join(directory, f"vfpga_{cfg['name']}.{ext}")


def board_of(path: str) -> str:
    """The board config a bitstream was built from (its file name:
    ``vfpga_<board>.bit`` / ``.xclbin``)."""
    m = _NAME.match(os.path.basename(path))
    if not m or m.group("board") not in board_config.available():
        raise OverlayError(f"{path}: not a vfpga overlay name (vfpga_<board>.bit or .xclbin with <board> one of "
                           f"{', '.join(board_config.available())}); pass board= explicitly")
    return m.group("board")


def find_dispatcher(ip_dict: dict, cfg: dict) -> tuple[str, dict]:
    """(name, description) of the one dispatcher in ``ip_dict``."""
    vlnv = cfg["dispatcher"]["vlnv"]
    found = [(k, v) for k, v in ip_dict.items()
             if v.get("type") == vlnv or DISPATCHER_KERNEL in str(v.get("type", "")) or k.startswith(DISPATCHER_KERNEL)]
    if len(found) != 1:
        raise OverlayError(f"expected one level-1 dispatcher ({vlnv} or kernel {DISPATCHER_KERNEL}), found "
                           f"{[k for k, _ in found] or 'none'} among {sorted(ip_dict)}")
    return found[0]


def check_address_map(description: dict, cfg: dict) -> None:
    """The Zynq block design places the dispatcher at the config's address;
    Alveo shells choose it, so only the window size is checked there."""
    disp = cfg["dispatcher"]
    if not cfg.get("platform") and description.get("phys_addr") != disp["base_address"]:
        raise OverlayError(f"dispatcher at {description.get('phys_addr'):#x}, the {cfg['name']} config says "
                           f"{disp['base_address']:#x}: rebuild the overlay or fix the config")
    if description.get("addr_range", disp["address_range"]) < disp["address_range"]:
        raise OverlayError(f"dispatcher register window {description['addr_range']:#x} is smaller than the "
                           f"config's {disp['address_range']:#x}")


class VfpgaOverlay(pynq.Overlay):
    """pynq.Overlay of a vfpga bitstream (``bitfile``, or this directory's
    one for ``board``) with ``board``, ``config``, ``dispatcher_name`` and
    ``dispatcher_description``. ``vfpga.open(board)`` loads it itself on a
    board; use it directly to inspect the overlay."""

    def __init__(self, bitfile: str | None = None, board: str | None = None, download: bool = True, **kwargs):
        if bitfile is None and board is None:
            raise OverlayError("give the overlay file or the board name")
        board = board or board_of(bitfile)
        bitfile = bitfile or bitstream_path(board)
        if not os.path.exists(bitfile):
            raise OverlayError(f"no overlay at {bitfile}: build it with make -C overlay BOARD={board} "
                               "(needs the Vitis/Vivado tools) or copy it there")
        super().__init__(bitfile, download=download, **kwargs)
        self.board = board
        self.config = board_config.load(board)
        self.dispatcher_name, self.dispatcher_description = find_dispatcher(self.ip_dict, self.config)
        check_address_map(self.dispatcher_description, self.config)


def find_board_overlay(device, directory: str = HERE) -> tuple[str, str] | None:
    """(board, bitfile) of a built overlay this real device can load: an
    .xclbin for an XRT (Alveo) device whose name mentions the card, a .bit
    on an embedded (Zynq) one; None if there is none."""
    name = str(getattr(device, "name", "")).lower()
    candidates = []
    for board in board_config.available():
        path = bitstream_path(board, directory)
        if os.path.exists(path):
            candidates.append((board, path))
    alveo = [(b, p) for b, p in candidates if p.endswith(".xclbin") and b.split("_")[0] in name]
    if alveo:
        return alveo[0]
    zynq = [(b, p) for b, p in candidates if p.endswith(".bit")]
    return zynq[0] if len(zynq) == 1 else None
