"""What a board's pool asks of its FPGA: block RAM, UltraRAM and DSP slices.

The estimate reads the synthesizable top (``hls/dispatcher_top.cpp``, which
holds every core's on-chip memories) as the preprocessor leaves it for the
board, so the sizes and the partition, reshape and storage pragmas are the
ones Vitis HLS would see -- nothing is restated here. Each static integer
array becomes memories by the pragmas' rules:

* ``ARRAY_PARTITION dim=d cyclic|block factor=f``: dimension d splits into f
  separate memories (``complete``: one per element, registers when that
  leaves a single word);
* ``ARRAY_RESHAPE dim=d ... factor=f``: f elements of dimension d become one
  wider word of one memory;
* ``BIND_STORAGE variable=v ... impl=uram|bram|lutram``: where it goes; without
  one, Vitis HLS's default, block RAM.

A memory of ``depth`` words of ``width`` bits costs, in block RAM, the
cheapest of the RAMB36 aspect ratios (32K x 1 ... 512 x 72, simple dual
port) counted in halves (a RAMB18 is half a RAMB36); in UltraRAM,
ceil(width / 72) x ceil(depth / 4096) blocks. Memories of at most
``LUTRAM_BITS`` go to LUTs or registers, as Vitis HLS does with small
arrays, and are not counted.

DSP slices: the MAC arrays' multipliers (the CONV beat's VF_ICP x VF_OCP
products, the RNN MATVEC beat's rows x cols), one DSP48 per int8 multiply,
or VF_MACS_PER_DSP (hls/include/vfpga_mac.h) per slice for a core kind
whose source multiplies through vf_mul2, two products that share an operand
in one 27 x 8 multiply. The requantization and gate multipliers (a few
dozen per core) are left out.

Each core's step memories (hls/include/vfpga_unit_scheduler.h) are not
arrays of the top: the instruction store of ``vf_step_region`` (one per
core, ``frame_insns`` instructions of VF_INSN_BYTES), the three slot queues
and four token FIFOs of ``vf_step_streams_t`` (``frame_insns`` entries of
the element type the header declares). They are counted the same way, as
``step_store``, ``step_queues`` and ``step_tokens`` (``rnn_``: the RNN
cores'), the store in UltraRAM when the config's ``storage.uram`` names it
and the header binds it (VF_URAM_IF). The decoder's token-plan registers
are left out.

The device's capacity comes from the board config's ``device`` section
(the whole part; an Alveo shell keeps part of it).
``python -m vfpga.overlay.resources [BOARD ...]`` prints the table.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from .config import BoardConfigError, available, c_macros, load, uram_arrays

HLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hls")
TOP = "dispatcher_top.cpp"

LUTRAM_BITS = 1024  # arrays this small map to LUTs/registers, not block RAM
_ELEM_BITS = {"int8_t": 8, "uint8_t": 8, "int16_t": 16, "uint16_t": 16, "int32_t": 32, "uint32_t": 32,
              "int64_t": 64, "uint64_t": 64}
# RAMB36 simple-dual-port aspect ratios (depth, width); a RAMB18 is half of one at half the depth
_BRAM36 = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36), (512, 72))
_URAM = (4096, 72)

_ARRAY = re.compile(r"\bstatic\s+(u?int(?:8|16|32|64)_t)\s+(\w+)\s*((?:\[[^\]]+\])+)\s*;")
_PRAGMA = re.compile(r"#pragma\s+HLS\s+(ARRAY_PARTITION|ARRAY_RESHAPE|BIND_STORAGE)\s+(.*)")


class ResourceError(RuntimeError):
    """The top cannot be read (no g++, a preprocessing error) or a pragma is not understood."""


@dataclass
class Array:
    """One static array of the top and the pragmas that shape it."""

    name: str
    elem_bits: int
    dims: list[int]
    impl: str = "bram"
    banks: list[int] = field(init=False)  # per dimension: separate memories
    packs: list[int] = field(init=False)  # per dimension: elements per word

    def __post_init__(self):
        self.banks = [1] * len(self.dims)
        self.packs = [1] * len(self.dims)

    def memories(self) -> tuple[int, int, int]:
        """(count, depth in words, width in bits) of the memories it becomes."""
        count = math.prod(self.banks)
        depth = math.prod(math.ceil(n / (b * p)) for n, b, p in zip(self.dims, self.banks, self.packs))
        width = self.elem_bits * math.prod(self.packs)
        return count, depth, width

    @property
    def bytes(self) -> int:
        return math.prod(self.dims) * self.elem_bits // 8


def _int_expr(text: str) -> int:
    if not re.fullmatch(r"[\d\s()+*/-]+", text):
        raise ResourceError(f"array dimension {text!r} is not a constant expression")
    return int(eval(text, {"__builtins__": {}}, {}))  # digits and operators only (checked above)


def _options(text: str) -> dict[str, str]:
    opts = {}
    for word in text.split():
        key, _, value = word.partition("=")
        opts[key] = value if value else "yes"
    return opts


def preprocess(cfg: dict, source: str = TOP, hls_dir: str = HLS_DIR) -> str:
    """``source`` as g++'s preprocessor leaves it with the board's macros."""
    path = os.path.join(hls_dir, source)
    if not os.path.isfile(path):
        raise ResourceError(f"no HLS source at {path}: the estimate reads the sources of a vfpga checkout")
    gxx = shutil.which("g++")
    if gxx is None:
        raise ResourceError("g++ is needed to read the HLS top (install build-essential)")
    flags = [f"-D{k}={v}" for k, v in c_macros(cfg).items()]
    r = subprocess.run([gxx, "-std=c++14", "-E", "-P", f"-I{os.path.join(hls_dir, 'include')}", *flags,
                        path], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise ResourceError(f"preprocessing {source} failed: {r.stderr[-1000:]}")
    return r.stdout


def arrays(text: str) -> list[Array]:
    """The static integer arrays of a preprocessed source, shaped by its pragmas."""
    found = {}
    for m in _ARRAY.finditer(text):
        dims = [_int_expr(d) for d in re.findall(r"\[([^\]]+)\]", m.group(3))]
        found[m.group(2)] = Array(m.group(2), _ELEM_BITS[m.group(1)], dims)
    for m in _PRAGMA.finditer(text):
        kind, opts = m.group(1), _options(m.group(2))
        a = found.get(opts.get("variable", ""))
        if a is None:
            continue  # a pragma on a non-array variable (or a stream)
        if kind == "BIND_STORAGE":
            a.impl = opts.get("impl", "bram").lower()
            continue
        dim = int(opts.get("dim", "1"))
        if dim == 0:
            raise ResourceError(f"{kind} dim=0 on {a.name}: not estimated (name a dimension)")
        n = a.dims[dim - 1]
        factor = n if "complete" in opts else int(opts.get("factor", "1"))
        if kind == "ARRAY_PARTITION":
            a.banks[dim - 1] = min(n, a.banks[dim - 1] * factor)
        else:
            a.packs[dim - 1] = min(n, a.packs[dim - 1] * factor)
    return list(found.values())


def bram36(depth: int, width: int) -> float:
    """RAMB36 blocks for one memory (a RAMB18 counts 0.5)."""
    as36 = min(math.ceil(width / w) * math.ceil(depth / d) for d, w in _BRAM36)
    as18 = min(math.ceil(width / w) * math.ceil(depth / (d // 2)) for d, w in _BRAM36 if w <= 36)
    return min(float(as36), as18 / 2)


def uram(depth: int, width: int) -> int:
    d, w = _URAM
    return math.ceil(width / w) * math.ceil(depth / d)


@dataclass(frozen=True)
class Row:
    """One array of the top: its memories and what they cost."""

    name: str
    bytes: int
    count: int
    depth: int
    width: int
    impl: str
    bram36: float
    uram: int


@dataclass(frozen=True)
class Estimate:
    board: str
    rows: tuple[Row, ...]
    dsp: int
    device: dict

    @property
    def bram36(self) -> float:
        return sum(r.bram36 for r in self.rows)

    @property
    def uram(self) -> int:
        return sum(r.uram for r in self.rows)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    def over(self) -> list[str]:
        """The resources the estimate exceeds on the device, with both figures."""
        out = []
        for key, used in (("bram36", self.bram36), ("uram", self.uram), ("dsp", self.dsp)):
            have = self.device.get(key, 0)
            if used > have:
                out.append(f"{key} {used:g} > {have}")
        return out


def row(a: Array) -> Row:
    count, depth, width = a.memories()
    bits = depth * width
    if a.impl == "uram":
        return Row(a.name, a.bytes, count, depth, width, "uram", 0.0, count * uram(depth, width))
    if bits <= LUTRAM_BITS or a.impl in ("lutram", "register"):
        return Row(a.name, a.bytes, count, depth, width, "lutram", 0.0, 0)
    return Row(a.name, a.bytes, count, depth, width, "bram", count * bram36(depth, width), 0)


def macs_per_dsp(source: str, hls_dir: str = HLS_DIR) -> int:
    """Int8 multiplies per DSP48 in the MAC beat of ``source`` (cnn_core.cpp,
    rnn_core.cpp): VF_MACS_PER_DSP when it multiplies through vf_mul2, else 1."""
    with open(os.path.join(hls_dir, source)) as f:
        if "vf_mul2(" not in f.read():
            return 1
    with open(os.path.join(hls_dir, "include", "vfpga_mac.h")) as f:
        m = re.search(r"#define\s+VF_MACS_PER_DSP\s+(\d+)", f.read())
    if m is None:
        raise ResourceError("include/vfpga_mac.h does not define VF_MACS_PER_DSP")
    return int(m.group(1))


def mac_dsps(cfg: dict, hls_dir: str = HLS_DIR) -> int:
    """DSP48 slices of the MAC arrays."""
    cnn, rnn = cfg["cnn_core"], cfg.get("rnn_core", {"count": 0, "rows": 0, "cols": 0})
    return (math.ceil(cnn["count"] * cnn["icp"] * cnn["ocp"] / macs_per_dsp("cnn_core.cpp", hls_dir))
            + math.ceil(rnn["count"] * rnn["rows"] * rnn["cols"] / macs_per_dsp("rnn_core.cpp", hls_dir)))


def estimate(board: str | dict, hls_dir: str = HLS_DIR) -> Estimate:
    cfg = load(board) if isinstance(board, str) else board
    if "device" not in cfg:
        raise BoardConfigError(f"board config {cfg.get('name')!r} has no 'device' section (the part's resources)")
    rows = tuple(row(a) for a in arrays(preprocess(cfg, TOP, hls_dir))) + step_channels(cfg, hls_dir)
    return Estimate(cfg["name"], rows, mac_dsps(cfg, hls_dir), dict(cfg["device"]))


def _header_bits(text: str, pattern: str, what: str) -> int:
    m = re.search(pattern, text)
    if m is None or m.group(1) not in _ELEM_BITS:
        raise ResourceError(f"include/vfpga_unit_scheduler.h: no {what} of a fixed-width integer type "
                            "(the estimate reads its declaration)")
    return _ELEM_BITS[m.group(1)]


def step_channels(cfg: dict, hls_dir: str = HLS_DIR) -> tuple[Row, ...]:
    """The step's instruction store, slot queues and token FIFOs of every core (see the module docstring)."""
    with open(os.path.join(hls_dir, "include", "vfpga_isa.h")) as f:
        m = re.search(r"#define\s+VF_INSN_BYTES\s+(\d+)", f.read())
    if m is None:
        raise ResourceError("include/vfpga_isa.h does not define VF_INSN_BYTES")
    insn_bits = 8 * int(m.group(1))
    with open(os.path.join(hls_dir, "include", "vfpga_unit_scheduler.h")) as f:
        sched = f.read()
    if not re.search(r"typename K::insn_t store\[K::FRAME_INSNS\];", sched):
        raise ResourceError("include/vfpga_unit_scheduler.h: no step instruction store "
                            "(typename K::insn_t store[K::FRAME_INSNS])")
    slot_bits = _header_bits(sched, r"vf_stream<(\w+), K::FRAME_INSNS> queue\[3\];", "slot queues (queue[3])")
    token_bits = _header_bits(sched, r"vf_stream<(\w+), K::FRAME_INSNS> l2c, c2l, c2s, s2c;", "token streams")
    store_bound = "VF_URAM_IF(VF_STEP_STORE_URAM, store)" in sched
    rows = []
    for section, prefix in (("cnn_core", ""), ("rnn_core", "rnn_")):
        core = cfg.get(section)
        if not core or "frame_insns" not in core:
            continue
        depth = int(core["frame_insns"])
        store = Array(prefix + "step_store", insn_bits, [core["count"], depth])
        store.banks[0] = core["count"]
        if store_bound and store.name in uram_arrays(cfg):
            store.impl = "uram"
        rows.append(row(store))
        for name, bits, n in (("step_queues", slot_bits, 3), ("step_tokens", token_bits, 4)):
            a = Array(prefix + name, bits, [core["count"], n, depth])
            a.banks[:2] = [core["count"], n]
            rows.append(row(a))
    return tuple(rows)


def table(e: Estimate) -> str:
    lines = [f"{e.board}: on-chip memories of {TOP} (per array, all cores)",
             f"  {'array':<16} {'KiB':>8} {'memories':>9} {'depth x width':>15} {'impl':>6} {'RAMB36':>8} {'URAM':>6}"]
    for r in e.rows:
        lines.append(f"  {r.name:<16} {r.bytes / 1024:>8.0f} {r.count:>9} {f'{r.depth} x {r.width}':>15} "
                     f"{r.impl:>6} {r.bram36:>8g} {r.uram:>6}")
    dev = e.device
    lines.append(f"  total: {e.bytes / 2**20:.2f} MiB in {e.bram36:g} of {dev['bram36']} RAMB36 "
                 f"({100 * e.bram36 / max(dev['bram36'], 1):.0f}%) and {e.uram} of {dev['uram']} URAM; "
                 f"MAC-array DSP48 {e.dsp} of {dev['dsp']} ({100 * e.dsp / max(dev['dsp'], 1):.0f}%)")
    over = e.over()
    lines.append("  exceeds the device: " + "; ".join(over) if over else "  fits the device")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    boards = (argv if argv is not None else sys.argv[1:]) or available()
    for b in boards:
        print(table(estimate(b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
