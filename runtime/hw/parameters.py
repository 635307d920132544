"""The cycle models' numbers: the board config's ``timing`` section
(:class:`Latencies`: primitive latencies and core-control costs, from which
the pipeline depths follow) and the CNN model's fitted parameters -- their
defaults from the board config, and a calibration file that overrides them.

Per instruction class (:data:`CLASSES`) the cycle model charges
``fixed + per_iter * iterations`` for compute instructions and
``fixed + latency + max(per_iter * beats, bytes * load / bytes_per_cycle,
outstanding-burst bound)`` for loads and saves, where

  fixed            cycles outside the pipelined loop: the unit's issue
                   (timing.unit_issue_cycles) and the pipeline fill (depth - 1);
  per_iter         cycles per iteration of the loop: its initiation interval, 1;
  latency          a DDR transfer's first-data latency (ddr.burst_latency_cycles);
  bytes_per_cycle  a bank's bytes per core cycle (bank_gbytes_per_s / clock,
                   times ddr.core_ports).

Without a calibration file these are the board config's numbers
(:func:`vfpga.runtime.hw.cycle_model.default_parameters`), and the model is
exactly the config's. A calibration file (written by
``vfpga calibrate``, :mod:`vfpga.runtime.hw.calibration`) replaces them with
the values fitted to a board's counters. It is found through the
VFPGA_CALIBRATION environment variable (a path), else next to the board
config as ``overlay/configs/<board>.calibration.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass

from vfpga import overlay

# CNN instruction classes: LOAD (LOAD_TILE, LOAD_LINEAR), SAVE, CONV (cin_g > 1), CONV_LANES (cin_g == 1), POOL,
# ADD, LUT, MUL
CLASSES = ("LOAD", "SAVE", "CONV", "CONV_LANES", "POOL", "ADD", "LUT", "MUL")
FORMAT = "vfpga-calibration"
VERSION = 1
ENV = "VFPGA_CALIBRATION"


# ---- latencies: the board config's "timing" section (sources in the cycle model's docstring)
@dataclass(frozen=True)
class Latencies:
    axi_max_burst_beats: int
    axi_outstanding: int
    bram_read_latency: int
    dsp_mac_latency: int
    alu_latency: int  # one 32-bit add, compare or select
    requant_mult_latency: int
    round_shift_latency: int
    clamp_latency: int
    div64_latency: int
    buf_write_latency: int
    axi_register_latency: int
    unit_issue_cycles: int
    token_latency: int
    decode_latency: int
    marker_cycles: int

    @classmethod
    def of(cls, config: dict) -> Latencies:
        return _latencies(config["name"], tuple(sorted(config["timing"].items())))

    @property
    def requant(self) -> int:
        return self.requant_mult_latency + self.round_shift_latency + self.clamp_latency

    @property
    def load_depth(self) -> int:
        return self.axi_register_latency + self.alu_latency + self.buf_write_latency

    @property
    def save_depth(self) -> int:
        return self.bram_read_latency + self.axi_register_latency

    @property
    def pool_depth(self) -> int:
        return self.bram_read_latency + self.alu_latency + self.div64_latency + self.clamp_latency + self.buf_write_latency

    @property
    def add_depth(self) -> int:
        return (self.bram_read_latency + self.dsp_mac_latency + self.alu_latency + self.round_shift_latency
                + self.clamp_latency + self.buf_write_latency)

    @property
    def lut_depth(self) -> int:
        """LUT: operand read, table read, buffer write."""
        return 2 * self.bram_read_latency + self.buf_write_latency

    @property
    def mul_depth(self) -> int:
        """MUL: operand read, zero-point subtraction, product, requantization, buffer write."""
        return (self.bram_read_latency + self.alu_latency + self.dsp_mac_latency + self.requant
                + self.buf_write_latency)

    def conv_depth(self, icp: int, lanes: bool) -> int:
        """CONV pipeline depth; ``lanes``: the cin_g == 1 path (no adder tree)."""
        tree = 0 if lanes else max(0, int(icp - 1).bit_length())
        return (self.bram_read_latency + self.dsp_mac_latency + tree + self.alu_latency + self.requant
                + self.buf_write_latency)


@functools.lru_cache(maxsize=64)
def _latencies(_board: str, items: tuple) -> Latencies:
    return Latencies(**dict(items))





class CalibrationError(ValueError):
    """A calibration file that does not fit the board or is malformed."""


@dataclass(frozen=True)
class Parameters:
    fixed: tuple[float, ...]  # per class of CLASSES
    per_iter: tuple[float, ...]
    latency: float
    bytes_per_cycle: float
    source: str = "board config"

    def of(self, cls: str) -> tuple[float, float]:
        i = CLASSES.index(cls)
        return self.fixed[i], self.per_iter[i]

    def as_vector(self) -> list[float]:
        return [*self.fixed, *self.per_iter, self.latency, self.bytes_per_cycle]

    @classmethod
    def from_vector(cls, v, source: str) -> Parameters:
        n = len(CLASSES)
        v = [float(x) for x in v]
        return cls(tuple(v[:n]), tuple(v[n:2 * n]), v[2 * n], v[2 * n + 1], source)

    def names(self) -> list[str]:
        return ([f"{c}.fixed" for c in CLASSES] + [f"{c}.per_iter" for c in CLASSES]
                + ["ddr.latency", "ddr.bytes_per_cycle"])

    def to_json(self) -> dict:
        return {"classes": {c: {"fixed": f, "per_iter": p} for c, f, p in zip(CLASSES, self.fixed, self.per_iter)},
                "ddr": {"latency": self.latency, "bytes_per_cycle": self.bytes_per_cycle}}


def calibration_path(config: dict) -> str | None:
    """The calibration file in force for ``config``'s board, or None."""
    env = os.environ.get(ENV)
    if env:
        return env
    path = os.path.join(overlay.config.CONFIG_DIR, f"{config['name']}.calibration.json")
    return path if os.path.isfile(path) else None


def load(config: dict) -> Parameters | None:
    """The calibration in force for ``config``'s board, or None (the model
    then uses the config's numbers)."""
    path = calibration_path(config)
    if path is None:
        return None
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError as e:
        raise CalibrationError(f"{ENV}={path}: no such calibration file") from e
    return _load(path, stamp, config["name"])


def digest(config: dict) -> str:
    """What the cycle model's numbers depend on beyond the config (for cache keys)."""
    p = load(config)
    return "config" if p is None else hashlib.sha256(json.dumps(p.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def save(params: Parameters, config: dict, path: str, extra: dict | None = None) -> None:
    doc = {"format": FORMAT, "version": VERSION, "board": config["name"], **params.to_json(), **(extra or {})}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")


def read(path: str, config: dict) -> Parameters:
    """The parameters of calibration file ``path`` for ``config``'s board."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"calibration file {path}: {e}") from e
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise CalibrationError(f"calibration file {path} is not a {FORMAT} file of version {VERSION}")
    if doc.get("board") != config["name"]:
        raise CalibrationError(f"calibration file {path} is for board {doc.get('board')!r}, not {config['name']!r}")
    try:
        classes = doc["classes"]
        fixed = tuple(float(classes[c]["fixed"]) for c in CLASSES)
        per_iter = tuple(float(classes[c]["per_iter"]) for c in CLASSES)
        latency, bpc = float(doc["ddr"]["latency"]), float(doc["ddr"]["bytes_per_cycle"])
    except (KeyError, TypeError, ValueError) as e:
        raise CalibrationError(f"calibration file {path}: missing or bad entry {e}") from e
    if min(per_iter) <= 0 or bpc <= 0 or latency < 0 or min(fixed) < 0:
        raise CalibrationError(f"calibration file {path}: parameters must be positive")
    return Parameters(fixed, per_iter, latency, bpc, source=path)


@functools.lru_cache(maxsize=16)
def _load(path: str, _stamp: int, board: str) -> Parameters:
    return read(path, {"name": board})
