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
import operator
import os
import re

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

_HEX = re.compile(r"^0x[0-9a-fA-F]+$")


class BoardConfigError(ValueError):
    """A board name that does not exist or a config file that is malformed."""


def available() -> list[str]:
    """Names of the boards that have a config file."""
    # (<board>.calibration.json beside a config is the cycle model's calibration, no board)
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json") and "." not in f[:-5])


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
    "timing": ("axi_max_burst_beats", "axi_outstanding", "bram_read_latency", "dsp_mac_latency", "alu_latency",
               "requant_mult_latency", "round_shift_latency", "clamp_latency", "div64_latency", "buf_write_latency",
               "axi_register_latency", "unit_issue_cycles", "token_latency", "decode_latency", "marker_cycles"),
    "ddr": ("banks", "bank_bytes", "bank_gbytes_per_s", "axi_bytes", "burst_latency_cycles",
            "base_address", "bank_stride"),
    "cnn_core": ("count", "icp", "ocp", "ibuf_bytes", "wbuf_bytes", "acc_words", "obuf_bytes",
                 "param_entries", "frame_insns", "banks", "vlnv", "base_address", "address_stride",
                 "address_range", "registers"),
    "dispatcher": ("tenants", "ring_max_entries", "walk_budget", "inflight_max", "issue_cycles", "barrier_cycles",
                   "completion_cycles", "scrub_bytes_per_cycle", "vlnv", "base_address", "address_range",
                   "registers", "file_registers", "tenant_base", "tenant_stride", "tenant_registers"),
    "rnn_core": ("count", "rows", "cols", "lanes", "wbuf_bytes", "vbuf_bytes", "acc_words", "param_entries",
                 "state_words", "act_words", "act_segments", "act_step_log2", "frame_insns", "banks", "vlnv", "base_address",
                 "address_stride", "address_range", "registers"),
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
    # The level-1 dispatcher: a core mask is one 32-bit register, the interrupt
    # status keeps a completion bit and a fault bit per tenant in one word.
    disp = cfg["dispatcher"]
    if not 1 <= core["count"] <= 32:
        raise BoardConfigError(f"board config {path}: the dispatcher drives 1..32 CNN cores, not {core['count']}")
    if not 8 <= disp["tenants"] <= 16:
        raise BoardConfigError(f"board config {path}: dispatcher.tenants must be 8..16, not {disp['tenants']}")
    ring = disp["ring_max_entries"]
    if ring < 1 or ring & (ring - 1) or ring > 1 << 20:
        raise BoardConfigError(f"board config {path}: dispatcher.ring_max_entries must be a power of two <= 2^20")
    if disp["walk_budget"] < 1:
        raise BoardConfigError(f"board config {path}: dispatcher.walk_budget must be >= 1")
    if not 1 <= disp["inflight_max"] <= 16:
        raise BoardConfigError(f"board config {path}: dispatcher.inflight_max must be 1..16")
    ports = cfg["ddr"].get("core_ports", 1)
    if not 1 <= ports <= cfg["ddr"]["banks"]:
        raise BoardConfigError(f"board config {path}: ddr.core_ports must be 1..banks, not {ports}")
    parts = segment_banks(cfg)
    if not 1 <= parts <= cfg["ddr"]["banks"] or (ports > 1 and parts != ports):
        raise BoardConfigError(f"board config {path}: ddr.segment_banks must be 1..banks, and equal to core_ports "
                               f"when a core has several ports (a beat is one word of each part), not {parts}")
    # the MAC beats pack their lanes in pairs, two int8 products per DSP slice (hls/include/vfpga_mac.h)
    for section, key in (("cnn_core", "ocp"), ("rnn_core", "rows")):
        if cfg[section][key] % 2:
            raise BoardConfigError(f"board config {path}: {section}.{key} must be even (the MAC beat packs its "
                                   f"lanes in pairs, two int8 products per DSP slice), not {cfg[section][key]}")
    _check_bank_ports(cfg, path)
    _check_rnn_core(cfg, path)
    device = cfg.get("device")  # the part's resources (overlay/resources.py); optional
    if device is not None and (not isinstance(device, dict) or sorted(device) != ["bram36", "dsp", "lut", "uram"]
                               or any(not isinstance(v, int) or v < 0 for v in device.values())):
        raise BoardConfigError(f"board config {path}: device must give the part's lut, bram36, uram and dsp "
                               f"as counts >= 0, not {device!r}")
    _check_storage(cfg, path)
    # a step's body must fit the core's on-chip instruction queues (hls/include/vfpga_unit_scheduler.h)
    for section in ("cnn_core", "rnn_core"):
        if not 1 <= cfg[section]["frame_insns"] <= 65536:
            raise BoardConfigError(f"board config {path}: {section}.frame_insns must be 1..65536, "
                                   f"not {cfg[section]['frame_insns']}")
    return cfg


MAX_BANKS = 4  # m_axi bank ports the dispatcher top declares (hls/dispatcher_top.cpp)

# The on-chip memories a config may bind to UltraRAM (its "storage": {"uram": [...]} list): the per-core
# arrays of hls/dispatcher_top.cpp and each core kind's step instruction store
# (hls/include/vfpga_unit_scheduler.h). Each becomes a VF_URAM_<NAME> macro, 1 or 0.
STORAGE_ARRAYS = ("ibuf", "wbuf", "acc", "obuf", "param", "step_store",
                  "rnn_wbuf", "rnn_vbuf", "rnn_acc", "rnn_param", "rnn_state", "rnn_act", "rnn_step_store")


def uram_arrays(cfg: dict) -> list[str]:
    """The memories the config binds to UltraRAM (none without a ``storage`` section)."""
    return list(cfg.get("storage", {}).get("uram", []))


def _check_storage(cfg: dict, path: str) -> None:
    storage = cfg.get("storage", {})
    if not isinstance(storage, dict) or sorted(storage) not in ([], ["uram"]) or \
            not isinstance(storage.get("uram", []), list):
        raise BoardConfigError(f"board config {path}: storage must be {{\"uram\": [memory names]}}, not {storage!r}")
    uram = uram_arrays(cfg)
    unknown = sorted(set(uram) - set(STORAGE_ARRAYS))
    if unknown:
        raise BoardConfigError(f"board config {path}: storage.uram names unknown memories {', '.join(unknown)} "
                               f"(known: {', '.join(STORAGE_ARRAYS)})")
    if uram and cfg.get("device", {}).get("uram", 0) == 0:
        raise BoardConfigError(f"board config {path}: storage.uram binds {', '.join(uram)} to UltraRAM, but the "
                               f"part has none (device.uram is 0 or missing)")


def bank_port_registers(cfg: dict) -> list[str]:
    """Names of the dispatcher's bank-port base registers, bank 0 first:
    ``mem`` (bank 0's m_axi port) and ``mem1`` .. ``mem<banks-1>``. Each
    holds the DDR window's base (``ddr.base_address``); port b only ever
    carries addresses of bank b."""
    return ["mem"] + [f"mem{b}" for b in range(1, int(cfg["ddr"]["banks"]))]


def _check_bank_ports(cfg: dict, path: str) -> None:
    """One m_axi port per DDR bank on the dispatcher top, each with its base
    register in the config's register map, and nothing more."""
    ddr, regs = cfg["ddr"], cfg["dispatcher"]["registers"]
    if not 1 <= ddr["banks"] <= MAX_BANKS:
        raise BoardConfigError(f"board config {path}: ddr.banks must be 1..{MAX_BANKS}, not {ddr['banks']}")
    if ddr["banks"] > 1 and ddr["bank_stride"] < ddr["bank_bytes"]:
        raise BoardConfigError(f"board config {path}: ddr.bank_stride is smaller than ddr.bank_bytes")
    want = set(bank_port_registers(cfg))
    have = {k for k in regs if re.fullmatch(r"mem\d*", k)}
    if have != want:
        raise BoardConfigError(f"board config {path}: dispatcher.registers must name one bank port per DDR bank "
                               f"({', '.join(sorted(want))}), not {', '.join(sorted(have))}")
    for key in ("axi_max_burst_beats", "axi_outstanding"):
        if not 1 <= cfg["timing"][key] <= 256:
            raise BoardConfigError(f"board config {path}: timing.{key} must be 1..256 (an m_axi pragma value)")


def _check_rnn_core(cfg: dict, path: str) -> None:
    """The RNN core pool: a bank per core, an activation table that fits ACT
    (hls/include/vfpga_isa.h, RNN section), sizes the C++ static_asserts take."""
    rnn = cfg["rnn_core"]
    if not 1 <= rnn["count"] <= 32:
        raise BoardConfigError(f"board config {path}: rnn_core.count must be 1..32, not {rnn['count']}")
    if cfg["cnn_core"]["count"] + rnn["count"] > 32:
        raise BoardConfigError(f"board config {path}: {cfg['cnn_core']['count']} CNN + {rnn['count']} RNN cores do "
                               "not fit the dispatcher's 32-bit core masks")
    if len(rnn["banks"]) != rnn["count"]:
        raise BoardConfigError(f"board config {path}: rnn_core.banks must name a bank per core")
    if any(not 0 <= b < cfg["ddr"]["banks"] for b in rnn["banks"]):
        raise BoardConfigError(f"board config {path}: rnn_core.banks names a bank that does not exist")
    for key in ("rows", "cols", "lanes"):
        if not 1 <= rnn[key] <= 256:
            raise BoardConfigError(f"board config {path}: rnn_core.{key} must be 1..256, not {rnn[key]}")
    if not 1 <= rnn["act_step_log2"] <= 20 or not 2 <= rnn["act_segments"] <= 1 << 16:
        raise BoardConfigError(f"board config {path}: rnn_core activation table: act_step_log2 must be 1..20 "
                               f"and act_segments 2..65536")
    if not rnn["act_segments"] + 1 <= rnn["act_words"] <= 1 << 16:
        raise BoardConfigError(f"board config {path}: rnn_core.act_words must hold one table "
                               f"(act_segments + 1 = {rnn['act_segments'] + 1} words) and be <= 65536")
    if rnn["wbuf_bytes"] % (rnn["rows"] * rnn["cols"]):
        raise BoardConfigError(f"board config {path}: rnn_core.wbuf_bytes must be whole MATVEC tiles of rows x cols "
                               f"= {rnn['rows'] * rnn['cols']} bytes")


def core_bus_bytes(cfg: dict) -> int:
    """Bytes a core moves per cycle on its memory path: ``ddr.core_ports``
    m_axi ports (default 1) of ``ddr.axi_bytes`` each, its data
    word-interleaved over that many banks."""
    return int(cfg["ddr"]["axi_bytes"]) * int(cfg["ddr"].get("core_ports", 1))


class Stripe(tuple):
    """How a striped segment lies in DDR: ``ports`` equal parts, one per bank
    (banks 0 .. ports-1, the same offset in each, ``bank_stride`` apart),
    interleaved by ``word`` bytes (one bus word of a bank port). Segment
    offset a is in part (a // word) % ports at part offset
    (a // (word * ports)) * word + a % word: the mapping of
    hls/include/vfpga_ddr.h (vf_seg_window), which the tests check this
    against."""

    __slots__ = ()

    def __new__(cls, ports: int, word: int, bank_stride: int):
        return super().__new__(cls, (int(ports), int(word), int(bank_stride)))

    # (itemgetter: C-level reads, a segment's sync looks these up on every request)
    ports = property(operator.itemgetter(0))
    word = property(operator.itemgetter(1))
    bank_stride = property(operator.itemgetter(2))

    def part_bytes(self, size: int) -> int:
        """Bytes of each part of a ``size``-byte segment (whole words; the
        first part holds the most)."""
        row = self.word * self.ports
        return -(-int(size) // row) * self.word

    def place(self, offset: int) -> tuple[int, int]:
        """(part, offset in the part) of segment offset ``offset``."""
        w = int(offset) // self.word
        return w % self.ports, (w // self.ports) * self.word + int(offset) % self.word

    def offset_of(self, part: int, part_offset: int) -> int:
        """The segment offset at ``part_offset`` of part ``part`` (place's inverse)."""
        if not 0 <= part < self.ports:
            raise ValueError(f"a striped segment has parts 0..{self.ports - 1}, not {part}")
        i = int(part_offset) // self.word
        return (i * self.ports + part) * self.word + int(part_offset) % self.word


def segment_runs(stripe: Stripe | None, seg_win: int, offset: int, nbytes: int) -> list[tuple[int, int, int]]:
    """[(window offset, segment offset, bytes)] of the pieces of segment
    bytes [offset, offset + nbytes) of a segment at window offset
    ``seg_win``: one piece when contiguous (``stripe`` None), else one per
    bus word (each in its part's bank)."""
    if stripe is None:
        return [(seg_win + offset, offset, nbytes)] if nbytes > 0 else []
    runs, a, end = [], int(offset), int(offset) + int(nbytes)
    while a < end:
        m = min(stripe.word - a % stripe.word, end - a)
        part, at = stripe.place(a)
        runs.append((part * stripe.bank_stride + seg_win + at, a, m))
        a += m
    return runs


def segment_banks(cfg: dict) -> int:
    """The banks every tenant segment is word-interleaved over:
    ``ddr.segment_banks`` (u200: all four, so a tenant on cores of every bank
    gets every bank's bandwidth), else ``ddr.core_ports`` (u200_bigcore: one
    word of each part per beat); 1: a segment is one contiguous range in one
    bank."""
    ddr = cfg["ddr"]
    return int(ddr.get("segment_banks", ddr.get("core_ports", 1)))


def segment_stripe(cfg: dict) -> Stripe | None:
    """The board's striped segment layout (:func:`segment_banks` parts of one
    bus word each), or None when segments are contiguous."""
    ddr, parts = cfg["ddr"], segment_banks(cfg)
    return Stripe(parts, int(ddr["axi_bytes"]), int(ddr["bank_stride"])) if parts > 1 else None


def _bank_bytes_per_cycle(cfg: dict) -> float:
    return float(cfg["ddr"]["bank_gbytes_per_s"]) * 1e9 / (float(cfg["clock_mhz"]) * 1e6)


def core_bytes_per_cycle(cfg: dict) -> float:
    """DDR bandwidth one core reaches with its banks to itself, in bytes per
    core clock cycle: ``core_ports`` banks of ``bank_gbytes_per_s`` each."""
    return _bank_bytes_per_cycle(cfg) * int(cfg["ddr"].get("core_ports", 1))


def segment_bytes_per_cycle(cfg: dict, striped: bool = True) -> float:
    """DDR bandwidth the frames of every tenant whose segment lies on the same
    banks share, in bytes per core clock cycle: :func:`segment_banks` banks
    of ``bank_gbytes_per_s`` each (a striped segment spreads each frame's
    words evenly over its banks); one bank's when ``striped`` is False (a
    runtime that keeps each segment in one bank)."""
    return _bank_bytes_per_cycle(cfg) * (segment_banks(cfg) if striped else 1)


def port_depth(cfg: dict) -> int:
    """The m_axi ``depth`` of a bank port: the DDR window's bytes, capped at
    the largest count the pragma takes (it sizes only the C/RTL
    co-simulation's memory model)."""
    ddr = cfg["ddr"]
    return min((int(ddr["banks"]) - 1) * int(ddr["bank_stride"]) + int(ddr["bank_bytes"]), (1 << 31) - 1)


def c_macros(cfg: dict) -> dict[str, int]:
    """The hardware numbers the C++ sources see, as ``-D`` macros."""
    core, ddr, timing = cfg["cnn_core"], cfg["ddr"], cfg["timing"]
    return {
        "VF_ICP": core["icp"],
        "VF_OCP": core["ocp"],
        "VF_CONV_WORD": core["icp"] * core["ocp"],  # one MAC beat's weights (the WBUF partition factor)
        "VF_AXI_BYTES": core_bus_bytes(cfg),  # a core's memory path: its ports together
        "VF_CORE_PORTS": ddr.get("core_ports", 1),
        "VF_SEG_PARTS": segment_banks(cfg),  # a striped segment's parts, one per bank (1: contiguous)
        # the m_axi bank ports of the dispatcher top (the cycle model's DDR numbers, one source)
        "VF_DDR_BANKS": ddr["banks"],
        "VF_DDR_BANK_STRIDE": ddr["bank_stride"],
        "VF_DDR_PORT_BITS": 8 * ddr["axi_bytes"],
        "VF_DDR_PORT_DEPTH": port_depth(cfg),
        "VF_AXI_MAX_BURST_BEATS": timing["axi_max_burst_beats"],
        "VF_AXI_OUTSTANDING": timing["axi_outstanding"],
        "VF_DDR_LATENCY": ddr["burst_latency_cycles"],
        "VF_IBUF_BYTES": core["ibuf_bytes"],
        "VF_WBUF_BYTES": core["wbuf_bytes"],
        "VF_ACC_WORDS": core["acc_words"],
        "VF_OBUF_BYTES": core["obuf_bytes"],
        "VF_PARAM_ENTRIES": core["param_entries"],
        "VF_FRAME_INSNS": core["frame_insns"],
        **{f"VF_REG_{name.upper()}": off for name, off in core["registers"].items()},
        # where each on-chip memory goes: 1 = UltraRAM (a BIND_STORAGE pragma of the top), 0 = block RAM
        **{f"VF_URAM_{name.upper()}": int(name in uram_arrays(cfg)) for name in STORAGE_ARRAYS},
        **_dispatcher_macros(cfg),
        **_rnn_macros(cfg),
    }


def _rnn_macros(cfg: dict) -> dict[str, int]:
    """The RNN core pool's numbers (VF_RNN_*) and its register map (VF_RREG_*,
    byte offsets of the s_axilite registers of hls/rnn_core_top.cpp)."""
    rnn = cfg["rnn_core"]
    return {
        "VF_RNN_CORES": rnn["count"],
        "VF_RNN_ROWS": rnn["rows"],
        "VF_RNN_COLS": rnn["cols"],
        "VF_RNN_LANES": rnn["lanes"],
        "VF_RNN_TILE_BYTES": rnn["rows"] * rnn["cols"],  # one MATVEC beat's weights, a WBUF word
        "VF_RNN_WBUF_BYTES": rnn["wbuf_bytes"],
        "VF_RNN_VBUF_BYTES": rnn["vbuf_bytes"],
        "VF_RNN_ACC_WORDS": rnn["acc_words"],
        "VF_RNN_PARAM_ENTRIES": rnn["param_entries"],
        "VF_RNN_STATE_WORDS": rnn["state_words"],
        "VF_RNN_ACT_WORDS": rnn["act_words"],
        "VF_RNN_ACT_SEGMENTS": rnn["act_segments"],
        "VF_RNN_ACT_STEP_LOG2": rnn["act_step_log2"],
        "VF_RNN_FRAME_INSNS": rnn["frame_insns"],
        **{f"VF_RREG_{name.upper()}": off for name, off in rnn["registers"].items()},
    }


def _dispatcher_macros(cfg: dict) -> dict[str, int]:
    """The level-1 dispatcher's numbers: pool size, tenant contexts, ring and
    walk limits, requests in flight per tenant, modeled latencies, and its register map (VF_DREG_* top-level
    s_axilite registers, VF_DREG_G_* global and VF_DREG_T_* per-tenant
    registers of the register file; byte offsets)."""
    disp = cfg["dispatcher"]
    return {
        "VF_CNN_CORES": cfg["cnn_core"]["count"],
        "VF_DISP_TENANTS": disp["tenants"],
        "VF_DISP_RING_MAX": disp["ring_max_entries"],
        "VF_DISP_WALK_BUDGET": disp["walk_budget"],
        "VF_DISP_INFLIGHT": disp["inflight_max"],
        "VF_DISP_ISSUE_CYCLES": disp["issue_cycles"],
        "VF_DISP_BARRIER_CYCLES": disp["barrier_cycles"],
        "VF_DISP_COMPLETION_CYCLES": disp["completion_cycles"],
        "VF_DISP_SCRUB_BYTES_PER_CYCLE": disp["scrub_bytes_per_cycle"],
        **{f"VF_DREG_{name.upper()}": off for name, off in disp["registers"].items()},
        "VF_DREG_TENANT_BASE": disp["tenant_base"],
        "VF_DREG_TENANT_STRIDE": disp["tenant_stride"],
        **{f"VF_DREG_G_{name.upper()}": off for name, off in disp["file_registers"].items()},
        **{f"VF_DREG_T_{name.upper()}": off for name, off in disp["tenant_registers"].items()},
    }


def _main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Print a board config as -D flags for make and HLS tcl.")
    p.add_argument("board")
    a = p.parse_args(argv)
    print(" ".join(f"-D{k}={v}" for k, v in c_macros(load(a.board)).items()))


if __name__ == "__main__":
    _main()
