"""The Open Inference Protocol's data, independent of the transport: errors
with their HTTP status and gRPC code, datatypes, tensor specs, and tensors
decoded from JSON ``data``, from the binary tensor data extension's raw
bytes, or from gRPC ``contents``.

Every decoding error names the tensor and what was wrong with it.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

# datatype name -> numpy dtype (little-endian, as the protocol's raw data is)
DATATYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPE_OF = {np.dtype(v).newbyteorder("="): k for k, v in DATATYPES.items()}

# the protocol extensions this server speaks (server metadata)
EXTENSIONS = ["binary_tensor_data", "model_repository", "vfpga_reallocate", "vfpga_reset", "metrics"]

# gRPC status codes by HTTP status (grpc.StatusCode names; the gRPC module maps them)
GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "FAILED_PRECONDITION", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED",
              500: "INTERNAL", 503: "UNAVAILABLE"}


class ServingError(Exception):
    """A request the server answers with an error: ``status`` is the HTTP
    status (the gRPC code follows from it), the message says what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def grpc_code(self) -> str:
        return GRPC_CODES.get(self.status, "UNKNOWN")


def bad_request(message: str) -> ServingError:
    return ServingError(400, message)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of a served model, as its metadata shows it."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def fits(self, shape) -> bool:
        return len(shape) == len(self.shape) and all(w in (-1, g) for w, g in zip(self.shape, shape))


@dataclasses.dataclass
class Tensor:
    """A decoded input tensor of a request."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


def shape_of(name: str, shape) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                       for d in shape):
        raise bad_request(f"input {name!r}: shape must be a list of non-negative integers, not {shape!r}")
    return tuple(shape)


def dtype_of(name: str, datatype) -> np.dtype:
    if datatype == "BYTES":
        raise bad_request(f"input {name!r}: datatype BYTES is not supported (the models take numeric tensors)")
    if datatype not in DATATYPES:
        raise bad_request(f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
    return DATATYPES[datatype]


def from_raw(name: str, datatype: str, shape, raw: bytes | memoryview) -> Tensor:
    """A tensor from its raw little-endian row-major bytes (binary extension, gRPC raw contents)."""
    shape = shape_of(name, shape)
    dt = dtype_of(name, datatype)
    want = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(raw) != want:
        raise bad_request(f"input {name!r}: {len(raw)} bytes of data, a {datatype} tensor of shape {list(shape)} "
                          f"has {want}")
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dt).reshape(shape))


def from_list(name: str, datatype: str, shape, data) -> Tensor:
    """A tensor from the JSON ``data`` (nested or flat, row-major) or gRPC contents."""
    shape = shape_of(name, shape)
    dt = dtype_of(name, datatype)
    try:
        arr = np.asarray(data, dtype=dt)
    except (TypeError, ValueError, OverflowError) as e:
        raise bad_request(f"input {name!r}: data is not a {datatype} tensor: {e}") from None
    n = int(np.prod(shape, dtype=np.int64))
    if arr.size != n:
        raise bad_request(f"input {name!r}: {arr.size} elements of data, shape {list(shape)} has {n}")
    return Tensor(name, datatype, shape, arr.reshape(shape))


# gRPC InferTensorContents field per datatype
CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                  "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents"}


def datatype_of(arr: np.ndarray) -> str:
    return DATATYPE_OF[arr.dtype.newbyteorder("=")]


def little_endian_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


# ---- the binary tensor data extension from a client's side (tests, benchmarks, scripts)


def encode_binary_request(inputs: dict[str, np.ndarray], binary_output: bool = True) -> tuple[bytes, dict]:
    """(body, headers) of an inference request with every input as binary tensor data."""
    head = {"inputs": [{"name": n, "datatype": datatype_of(a), "shape": list(a.shape),
                        "parameters": {"binary_data_size": a.nbytes}} for n, a in inputs.items()]}
    if binary_output:
        head["parameters"] = {"binary_data_output": True}
    text = json.dumps(head).encode()
    return b"".join([text, *(little_endian_bytes(a) for a in inputs.values())]), {
        "Inference-Header-Content-Length": str(len(text)), "Content-Type": "application/octet-stream"}


def decode_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The outputs of an inference reply, JSON or with binary tensor data, by name."""
    n = len(body) if header_length is None else int(header_length)
    doc, at, out = json.loads(body[:n]), n, {}
    for o in doc["outputs"]:
        dt = DATATYPES[o["datatype"]]
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = np.asarray(o["data"], dt).reshape(o["shape"])
        else:
            out[o["name"]] = np.frombuffer(body[at:at + size], dt).reshape(o["shape"])
            at += size
    return out
