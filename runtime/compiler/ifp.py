"""Instruction frame package (IFP) files: a compiled model on disk.

An IFP holds everything a deploy needs -- program, constants, segment
layout, tensor placements, frame index, layer table and the quantized layer
graph itself (so results can be checked against the golden model) -- for one
board config. Loading it never recompiles.

Container: a zip archive (no pickle anywhere: IFP files come from users'
disks and loading one must not execute anything).

    mimetype            first member, stored: "application/vnd.vfpga.ifp"
    manifest.json       format name and version, compiler version (vfpga,
                        ISA, build fingerprint), board name and config hash,
                        where the model came from, a segment-layout summary,
                        the member table (size + SHA-256 of every data
                        member) and the compiled model as a JSON tree
    data/<path>.npy     every numpy array of the tree (allow_pickle=False)
    data/<path>.bin     every bytes value (constants, CPU-subgraph ONNX models)

The JSON tree encodes the CompiledModel dataclass and everything inside it
generically: dataclasses of vfpga.runtime.compiler.ir and vfpga.runtime.compiler as
{"__dc__": "ir.Conv", "fields": {...}}, tuples, dicts, numpy scalars (with
their dtype), arrays and bytes (as references to members). Only classes of
those two modules can be named, so a file cannot make the loader build
anything else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import time
import uuid
import zipfile

import numpy as np

import vfpga
from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.compiler import input_fold, ir, static

FORMAT_NAME = "vfpga-ifp"
FORMAT_VERSION = 3  # 2: frames carry DDR bytes and cycles at shared bank loads; 3: cycles alone only
MIMETYPE = "application/vnd.vfpga.ifp"
MANIFEST = "manifest.json"
ZIP_MAGIC = b"PK\x03\x04"


class IfpError(ValueError):
    """An IFP file that cannot be used here."""


class IfpFormatError(IfpError):
    """Not an IFP file, or a damaged one."""


class IfpVersionError(IfpError):
    """Written with another IFP format version or ISA version."""


class IfpBoardError(IfpError):
    """Compiled for another board, or for a board config that has changed since."""


# ---------------------------------------------------------------- versions and hashes


def compiler_version() -> str:
    """The version that names what produced a program: vfpga and the ISA."""
    return f"vfpga {vfpga.__version__}, ISA {isa.ISA_VERSION}"


# Sections of a board config no program depends on: the part's resources and the prose.
_NOT_HASHED = ("device", "description")


def config_hash(cfg: dict) -> str:
    """SHA-256 of a board config's content (canonical JSON of the parsed
    config, so formatting of the file does not matter), less the sections
    no compiled program depends on (_NOT_HASHED)."""
    text = json.dumps({k: v for k, v in cfg.items() if k not in _NOT_HASHED}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _config_of(board) -> dict:
    return board if isinstance(board, dict) else overlay.load(board)


# ---------------------------------------------------------------- the tree encoding


def _registry() -> dict[str, type]:
    out = {}
    for prefix, module in (("ir", ir), ("compiler", static), ("compiler", input_fold)):
        for name, obj in vars(module).items():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__:
                out[f"{prefix}.{name}"] = obj
    return out


_CLASSES = _registry()
_NAMES = {cls: name for name, cls in _CLASSES.items()}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class _Writer:
    """Encodes a value tree to JSON-able data, collecting arrays and bytes
    as zip members."""

    def __init__(self):
        self.members: dict[str, bytes] = {}

    def _member(self, path: str, ext: str, data: bytes) -> str:
        base = "data/" + (_SAFE.sub("_", path).strip("_.") or "value")[:120]
        name, n = f"{base}.{ext}", 1
        while name in self.members:
            n += 1
            name = f"{base}~{n}.{ext}"
        self.members[name] = data
        return name

    def encode(self, value, path: str):
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)) and type(value) in (int, float):
            return value
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise IfpError(f"cannot store {path}: object arrays are not allowed in an IFP")
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
            return {"__nd__": self._member(path, "npy", buf.getvalue())}
        if isinstance(value, np.generic):
            return {"__np__": value.dtype.str, "v": value.item()}
        if isinstance(value, (bytes, bytearray, memoryview)):
            return {"__bytes__": self._member(path, "bin", bytes(value))}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise IfpError(f"cannot store {path}: dict keys must be strings")
            return {"__dict__": [[k, self.encode(v, f"{path}.{k}")] for k, v in value.items()]}
        if dataclasses.is_dataclass(value) and type(value) in _NAMES:
            fields = {f.name: self.encode(getattr(value, f.name), f"{path}.{f.name}")
                      for f in dataclasses.fields(value) if f.init}
            return {"__dc__": _NAMES[type(value)], "fields": fields}
        raise IfpError(f"cannot store {path}: values of type {type(value).__name__} have no IFP encoding")


class _Reader:
    """Decodes the JSON tree, reading members from the zip and checking
    them against the manifest's member table."""

    def __init__(self, zf: zipfile.ZipFile, table: dict, path: str):
        self.zf, self.table, self.path = zf, table, path

    def _read(self, name) -> bytes:
        if not isinstance(name, str) or name not in self.table:
            raise IfpFormatError(f"{self.path}: the manifest refers to a member {name!r} it does not list")
        try:
            data = self.zf.read(name)
        except KeyError:
            raise IfpFormatError(f"{self.path}: member {name} is missing (truncated or damaged file)") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise IfpFormatError(f"{self.path}: member {name} is damaged: {e}") from e
        entry = self.table[name]
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise IfpFormatError(f"{self.path}: member {name} does not match its checksum (damaged file)")
        return data

    def decode(self, value):
        if value is None or isinstance(value, (bool, str, int, float)):
            return value
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict) or len(value) not in (1, 2):
            raise IfpFormatError(f"{self.path}: unexpected value {str(value)[:80]!r} in the manifest")
        if "__nd__" in value:
            try:
                return np.load(io.BytesIO(self._read(value["__nd__"])), allow_pickle=False)
            except ValueError as e:
                raise IfpFormatError(f"{self.path}: array {value['__nd__']} cannot be read: {e}") from e
        if "__bytes__" in value:
            return self._read(value["__bytes__"])
        if "__np__" in value:
            try:
                return np.dtype(value["__np__"]).type(value["v"])
            except (TypeError, ValueError, KeyError) as e:
                raise IfpFormatError(f"{self.path}: bad numpy scalar {value!r}: {e}") from e
        if "__tuple__" in value:
            return tuple(self.decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: self.decode(v) for k, v in value["__dict__"]}
        if "__dc__" in value:
            cls = _CLASSES.get(value["__dc__"])
            if cls is None:
                raise IfpVersionError(
                    f"{self.path} holds a {value['__dc__']!r}, which this vfpga ({vfpga.__version__}) does not "
                    "know; it was written by a newer vfpga")
            known = {f.name for f in dataclasses.fields(cls) if f.init}
            fields = value.get("fields", {})
            extra = sorted(set(fields) - known)
            if extra:
                raise IfpVersionError(f"{self.path}: {value['__dc__']} has fields {extra} this vfpga does not know")
            try:
                return cls(**{k: self.decode(v) for k, v in fields.items()})
            except TypeError as e:
                raise IfpFormatError(f"{self.path}: cannot rebuild {value['__dc__']}: {e}") from e
        raise IfpFormatError(f"{self.path}: unexpected value {str(value)[:80]!r} in the manifest")


# ---------------------------------------------------------------- save


def save(compiled: static.CompiledModel, path, *, config: dict | None = None,
         source: dict | None = None) -> None:
    """Write ``compiled`` to ``path`` as an IFP file (atomically: a reader
    never sees a half-written file). ``config``: the board config it was
    compiled with (default: the named board's config file). ``source``: a
    JSON-able description of where the model came from (model file, its hash,
    calibration), kept for `vfpga info`."""
    if not isinstance(compiled, static.CompiledModel):
        raise TypeError(f"expected a CompiledModel, got {type(compiled).__name__}")
    cfg = _config_of(config if config is not None else compiled.board)
    if cfg["name"] != compiled.board:
        raise IfpBoardError(f"the model was compiled for {compiled.board}, the config given is {cfg['name']}")
    w = _Writer()
    tree = w.encode(compiled, "model")
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "compiler": {"vfpga": vfpga.__version__, "isa_version": isa.ISA_VERSION,
                     "version": compiler_version()},
        "board": {"name": compiled.board, "config_sha256": config_hash(cfg)},
        "source": source or {},
        "segment": {
            "segment_size": compiled.segment_size,
            "activation_bytes": compiled.activation_bytes,
            "const_offset": compiled.const_offset,
            "const_bytes": len(compiled.consts),
            "program_offset": compiled.program_offset,
            "program_bytes": int(compiled.program.nbytes),
            "instructions": compiled.n_insns,
            "frames": len(compiled.frames),
            "layers": len(compiled.layers),
        },
        "members": {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                    for name, data in w.members.items()},
        "model": tree,
    }
    path = os.fspath(path)
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"  # unique per writer; renamed into place when complete
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(zipfile.ZipInfo("mimetype", (1980, 1, 1, 0, 0, 0)), MIMETYPE,
                        compress_type=zipfile.ZIP_STORED)
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1), compress_type=zipfile.ZIP_DEFLATED)
            for name, data in w.members.items():
                # int8 weights and instructions barely compress; storing keeps loading fast.
                zf.writestr(name, data, compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------- load


def is_ifp(path) -> bool:
    """Whether ``path`` is a file that starts like an IFP (a zip archive)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == ZIP_MAGIC
    except (OSError, TypeError):
        return False


def _open(path) -> tuple[zipfile.ZipFile, dict]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such IFP file: {path}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise IfpFormatError(f"{path} is not an IFP file (not a zip container: {e})") from e
    try:
        names = zf.namelist()
        if not names or names[0] != "mimetype" or zf.read("mimetype") != MIMETYPE.encode():
            raise IfpFormatError(f"{path} is a zip archive but not an IFP file (no {MIMETYPE} mimetype)")
        try:
            manifest = json.loads(zf.read(MANIFEST))
        except KeyError:
            raise IfpFormatError(f"{path} has no {MANIFEST} (damaged IFP file)") from None
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise IfpFormatError(f"{path}: {MANIFEST} is damaged: {e}") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise IfpFormatError(f"{path} is not an IFP file (manifest format {manifest.get('format')!r})"
                                 if isinstance(manifest, dict) else f"{path}: the manifest is not an object")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise IfpVersionError(
                f"{path} is IFP format version {version}; this vfpga ({vfpga.__version__}) reads version "
                f"{FORMAT_VERSION}: recompile the model with `vfpga compile`")
        for key in ("compiler", "board", "members", "model"):
            if not isinstance(manifest.get(key), dict):
                raise IfpFormatError(f"{path}: the manifest lacks {key!r} (damaged IFP file)")
    except BaseException:
        zf.close()
        raise
    return zf, manifest


@dataclasses.dataclass
class IfpInfo:
    """An IFP's manifest, without its arrays."""

    path: str
    format_version: int
    created: str
    vfpga_version: str
    isa_version: int
    board: str
    config_sha256: str
    source: dict
    segment: dict
    size_bytes: int


def read_info(path) -> IfpInfo:
    """The manifest of an IFP file (no version or board checks)."""
    zf, m = _open(path)
    zf.close()
    return IfpInfo(os.fspath(path), m["format_version"], m.get("created", "?"), m["compiler"].get("vfpga", "?"),
                   m["compiler"].get("isa_version"), m["board"].get("name"), m["board"].get("config_sha256"),
                   m.get("source", {}), m.get("segment", {}), os.path.getsize(path))


def _check(compiled, path: str) -> None:
    """Consistency of the numbers a deploy relies on."""
    def bad(why):
        raise IfpFormatError(f"{path}: inconsistent package ({why}); the file is damaged")

    if not isinstance(compiled, static.CompiledModel):
        bad("the model is not a compiled model")
    prog = compiled.program
    if not isinstance(prog, np.ndarray) or prog.dtype != np.uint8 or prog.ndim != 1 or prog.size % isa.INSN_BYTES:
        bad("the program is not a whole number of instructions")
    if not isinstance(compiled.frames, np.ndarray) or compiled.frames.dtype != static.FRAME_DTYPE:
        raise IfpVersionError(f"{path}: its frame index has another layout than this vfpga's "
                              f"({getattr(compiled.frames, 'dtype', None)}); recompile the model")
    if not (0 <= compiled.activation_bytes <= compiled.const_offset
            and compiled.const_offset + len(compiled.consts) <= compiled.program_offset
            and compiled.program_offset + prog.size <= compiled.segment_size):
        bad("segment regions overlap or exceed the segment")
    end = compiled.program_offset + prog.size
    for p in compiled.parts:
        if p.kind == "accel" and not (compiled.program_offset <= p.insn_offset
                                      and p.insn_offset + p.n_insns * isa.INSN_BYTES <= end):
            bad("a program part lies outside the program")
        if p.kind == "cpu" and not (0 <= p.layer < len(compiled.graph.layers)
                                    and compiled.graph.layers[p.layer].kind == "cpu"):
            bad("a CPU part names no CPU layer")
    f = compiled.frames
    if len(f) and (f["offset"].min() < compiled.program_offset
                   or (f["offset"] + f["n_insns"].astype(np.int64) * isa.INSN_BYTES).max() > end):
        bad("a frame lies outside the program")
    for name in list(compiled.graph.inputs) + list(compiled.graph.outputs):
        if name not in compiled.tensors:
            bad(f"no placement for tensor {name}")


def check_compatible(path, board=None) -> None:
    """Raises IfpVersionError or IfpBoardError if the IFP at ``path`` cannot
    be deployed here (see :func:`load`)."""
    zf, m = _open(path)
    with zf:
        _verify(os.fspath(path), m, board)


def _verify(path: str, m: dict, board) -> None:
    isa_version = m["compiler"].get("isa_version")
    if isa_version != isa.ISA_VERSION:
        raise IfpVersionError(
            f"{path} was compiled for ISA version {isa_version} (by {m['compiler'].get('version', '?')}); "
            f"this vfpga's hardware speaks ISA version {isa.ISA_VERSION}: recompile the model")
    name = m["board"].get("name")
    if board is not None:
        cfg = _config_of(board)
        if cfg["name"] != name:
            raise IfpBoardError(f"{path} was compiled for board {name}, not {cfg['name']}: "
                                f"recompile with `vfpga compile ... --board {cfg['name']}`")
    else:
        try:
            cfg = overlay.load(name)
        except overlay.BoardConfigError as e:
            raise IfpBoardError(f"{path} was compiled for board {name!r}, which has no config here: {e}") from e
    if config_hash(cfg) != m["board"].get("config_sha256"):
        raise IfpBoardError(
            f"{path} was compiled for a {name} board config that has changed since (config hash "
            f"{str(m['board'].get('config_sha256'))[:12]}, now {config_hash(cfg)[:12]}): recompile the model")


def load(path, board=None, *, verify: bool = True) -> static.CompiledModel:
    """Read an IFP file; never recompiles. ``board`` (a name or a config
    dict): the board it must have been compiled for. The ISA version and the
    board config it names must be those of this vfpga (the config hashing
    as it did at compile time); verify=False skips those two checks (to
    inspect a file, not to deploy it). Raises IfpFormatError,
    IfpVersionError or IfpBoardError (all IfpError, a ValueError), or
    FileNotFoundError."""
    path = os.fspath(path)
    zf, m = _open(path)
    with zf:
        if verify:
            _verify(path, m, board)
        try:
            compiled = _Reader(zf, m["members"], path).decode(m["model"])
        except IfpError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IfpFormatError(f"{path}: the model tree is damaged: {type(e).__name__}: {e}") from e
    try:
        _check(compiled, path)
    except IfpError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise IfpFormatError(f"{path}: inconsistent package ({type(e).__name__}: {e})") from e
    return compiled
