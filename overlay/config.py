"""Board configurations: the one source of every hardware number.

Each board is a JSON file in ``configs/``. Python code reads it through
:func:`load`; the C-simulation build and the HLS tcl receive the same numbers
as preprocessor macros from :func:`c_macros`, so nothing is repeated by hand.

This module deliberately imports only the standard library: ``setup.py``
loads it by path to compile the emulation libraries before vfpga is
installed.
"""

from __future__ import annotations

import json
import os
import re

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

_HEX = re.compile(r"^0x[0-9a-fA-F]+$")


class BoardConfigError(ValueError):
    """A board name that does not exist or a config file that is malformed."""


def available() -> list[str]:
    """Names of the boards that have a config file."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))


def _ints(node):
    # Addresses and register offsets are written as hex strings for humans.
    if isinstance(node, dict):
        return {k: _ints(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_ints(v) for v in node]
    if isinstance(node, str) and _HEX.match(node):
        return int(node, 16)
    return node


_REQUIRED = {
    "clock_mhz": (),
    "ddr": ("banks", "bank_bytes", "bank_gbytes_per_s", "axi_bytes", "burst_latency_cycles",
            "base_address", "bank_stride"),
    "cnn_core": ("count", "icp", "ocp", "ibuf_bytes", "wbuf_bytes", "acc_words", "obuf_bytes",
                 "param_entries", "banks", "vlnv", "base_address", "address_stride",
                 "address_range", "registers"),
}


def load(board: str) -> dict:
    """Returns the config of ``board`` (a name from :func:`available` or a
    path to a JSON file) with hex strings turned into integers."""
    path = board if board.endswith(".json") else os.path.join(CONFIG_DIR, board + ".json")
    if not os.path.isfile(path):
        raise BoardConfigError(
            f"unknown board {board!r}: no config at {path}; known boards: {', '.join(available())}")
    try:
        with open(path) as f:
            cfg = _ints(json.load(f))
    except json.JSONDecodeError as e:
        raise BoardConfigError(f"board config {path} is not valid JSON: {e}") from e
    for section, keys in _REQUIRED.items():
        if section not in cfg:
            raise BoardConfigError(f"board config {path} lacks {section!r}")
        missing = [k for k in keys if k not in cfg[section]]
        if missing:
            raise BoardConfigError(f"board config {path}: {section} lacks {', '.join(missing)}")
    core = cfg["cnn_core"]
    if len(core["banks"]) != core["count"]:
        raise BoardConfigError(f"board config {path}: cnn_core.banks must name a bank per core")
    if any(not 0 <= b < cfg["ddr"]["banks"] for b in core["banks"]):
        raise BoardConfigError(f"board config {path}: cnn_core.banks names a bank that does not exist")
    return cfg


def c_macros(cfg: dict) -> dict[str, int]:
    """The hardware numbers the C++ sources see, as ``-D`` macros."""
    core = cfg["cnn_core"]
    return {
        "VF_ICP": core["icp"],
        "VF_OCP": core["ocp"],
        "VF_AXI_BYTES": cfg["ddr"]["axi_bytes"],
        "VF_IBUF_BYTES": core["ibuf_bytes"],
        "VF_WBUF_BYTES": core["wbuf_bytes"],
        "VF_ACC_WORDS": core["acc_words"],
        "VF_OBUF_BYTES": core["obuf_bytes"],
        "VF_PARAM_ENTRIES": core["param_entries"],
        **{f"VF_REG_{name.upper()}": off for name, off in core["registers"].items()},
    }


def _main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Print a board config as -D flags for make and HLS tcl.")
    p.add_argument("board")
    a = p.parse_args(argv)
    print(" ".join(f"-D{k}={v}" for k, v in c_macros(load(a.board)).items()))


if __name__ == "__main__":
    _main()
