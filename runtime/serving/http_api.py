"""The Open Inference Protocol over HTTP/REST, as a FastAPI app (served by
uvicorn): health, metadata, inference (JSON tensors and the binary tensor
data extension), the model repository extension, re-allocation and reset,
and ``/metrics``.

Errors are ``{"error": "<message>"}`` with a 4xx/5xx status, as Triton's
clients expect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import zlib

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import vfpga

from . import auth
from .protocol import EXTENSIONS, ServingError, Tensor, bad_request, from_list, from_raw, little_endian_bytes
from .repository import Repository

HEADER_LENGTH = "inference-header-content-length"


def _json(obj, status: int = 200, headers=None) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status, headers, media_type="application/json")


def _error(e: ServingError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return _json({"error": e.message}, e.status, headers)


def _token(request: Request) -> str | None:
    return auth.bearer(request.headers.get("authorization"))


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (also once decompressed)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise bad_request(f"Content-Length {length!r} is not a byte count")
        if int(length) > limit:
            raise ServingError(413, f"{what}: the body has {int(length)} bytes, more than the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServingError(413, f"{what}: the body passes the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            body = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise bad_request(f"{what}: the {encoding} body does not decompress: {e}") from None
        if len(body) > limit or d.unconsumed_tail:
            raise ServingError(413, f"{what}: the decompressed body passes the limit of {limit} bytes")
    elif encoding != "identity":
        raise ServingError(415, f"{what}: Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    return body


def _parse_json(raw: bytes | memoryview, what: str):
    try:
        doc = json.loads(bytes(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise bad_request(f"{what} must be a JSON object, not {type(doc).__name__}")
    return doc


def parse_infer(body: bytes, header_length: str | None) -> tuple[dict, list[Tensor]]:
    """An inference request body (JSON, or JSON + binary tensor data) -> (the JSON, the input tensors)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise bad_request(f"Inference-Header-Content-Length {header_length!r} does not fit the "
                              f"{len(body)}-byte body")
        n = int(header_length)
        view = memoryview(body)
        doc, binary = _parse_json(view[:n], "the inference request header"), view[n:]
    else:
        doc, binary = _parse_json(body, "the inference request"), memoryview(b"")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad_request("the inference request needs a non-empty 'inputs' list")
    tensors, at = [], 0
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise bad_request(f"inputs[{i}] must be an object with a 'name'")
        name = t["name"]
        for key in ("datatype", "shape"):
            if key not in t:
                raise bad_request(f"input {name!r} has no {key!r}")
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or at + size > len(binary):
                raise bad_request(f"input {name!r}: binary_data_size {size!r} does not fit the "
                                  f"{len(binary) - at} bytes of binary data left")
            tensors.append(from_raw(name, t["datatype"], t["shape"], binary[at:at + size]))
            at += size
        elif "data" in t:
            tensors.append(from_list(name, t["datatype"], t["shape"], t["data"]))
        else:
            raise bad_request(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    if at != len(binary):
        raise bad_request(f"{len(binary) - at} bytes of binary data after the last input")
    return doc, tensors


def _wants_binary(doc: dict) -> tuple[list[str] | None, set[str]]:
    """(output names asked for or None, names to send as binary data)."""
    default = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    outputs = doc.get("outputs")
    if outputs is None:
        return None, {"*"} if default else set()
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise bad_request("'outputs' must be a list of objects with a 'name'")
    binary = {o["name"] for o in outputs if (o.get("parameters") or {}).get("binary_data", default)}
    return [o["name"] for o in outputs], binary


def infer_response(name: str, doc: dict, results, binary: set[str]) -> Response:
    outs, blobs = [], []
    for spec, arr in results:
        entry = {"name": spec.name, "datatype": spec.datatype, "shape": list(arr.shape)}
        if "*" in binary or spec.name in binary:
            raw = little_endian_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = np.asarray(arr).ravel().tolist()
        outs.append(entry)
    head = {"model_name": name, "model_version": "1", "outputs": outs}
    if "id" in doc:
        head["id"] = doc["id"]
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, 200, media_type="application/json")
    return Response(b"".join([text, *blobs]), 200, {"Inference-Header-Content-Length": str(len(text))},
                    media_type="application/octet-stream")


def _check_version(version: str | None) -> None:
    if version not in (None, "", "1"):
        raise ServingError(404, f"version {version!r} not found: models are served as version 1")


def create_app(repo: Repository, metrics=None) -> FastAPI:
    app = FastAPI(title="vfpga", version=vfpga.__version__,
                  docs_url=None, redoc_url=None, openapi_url=None)
    timeout = repo.config.request_timeout_s

    @app.exception_handler(ServingError)
    async def _serving_error(request, e: ServingError):
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        return _json({"error": f"{request.method} {request.url.path}: {e.detail}"}, e.status_code)

    @app.get("/v2/health/live")
    async def live():
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready():
        ok = not repo.draining
        return _json({"ready": ok}, 200 if ok else 503)

    @app.get("/v2")
    async def server_metadata():
        return _json({"name": "vfpga", "version": app.version, "extensions": EXTENSIONS,
                      "board": repo.accel.board, "mode": repo.accel.mode})

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str | None = None):
        _check_version(version)
        return _json(repo.served(name, _token(request)).metadata())

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, request: Request, version: str | None = None):
        _check_version(version)
        s = repo.served(name, _token(request))
        ok = s.tenant.fault is None and not repo.draining
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    async def infer(request: Request):
        """A plain Starlette endpoint (no FastAPI parameter handling: the hot path)."""
        name = request.path_params["name"]
        _check_version(request.path_params.get("version"))
        token = _token(request)
        limit = repo.served(name, token).max_request_bytes
        body = await read_body(request, limit, f"model {name!r} inference")
        doc, tensors = parse_infer(body, request.headers.get(HEADER_LENGTH))
        names, binary = _wants_binary(doc)
        job = repo.submit(name, token, tensors, names)
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(job.future), timeout)
        except asyncio.TimeoutError:
            raise ServingError(503, f"model {name!r}: no result within {timeout} s") from None
        return infer_response(name, doc, results, binary)

    app.router.add_route("/v2/models/{name}/infer", infer, methods=["POST"])
    app.router.add_route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"])

    @app.post("/v2/repository/index")
    async def index(request: Request):
        body = await read_body(request, 1 << 16, "repository index")
        doc = _parse_json(body, "the index request") if body.strip() else {}
        return _json(repo.index(_token(request), bool(doc.get("ready", False))))

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str, request: Request):
        token = _token(request)
        repo.tokens.require_admin(token)
        body = await read_body(request, repo.config.max_model_bytes, f"load of {name!r}")
        params = (_parse_json(body, "the load request") if body.strip() else {}).get("parameters") or {}
        if not isinstance(params, dict):
            raise bad_request("the load request's 'parameters' must be an object")
        files = {k: _b64(k, v) for k, v in params.items() if k.startswith("file:")}
        other = set(params) - set(files) - {"config"}
        if other:
            raise bad_request(f"the load request has unknown parameters {sorted(other)}: 'config' and 'file:<path>'")
        return _json(await run_in_threadpool(repo.load, name, token, params.get("config"), files))

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(name: str, request: Request):
        await read_body(request, 1 << 16, f"unload of {name!r}")
        await run_in_threadpool(repo.unload, name, _token(request))
        return _json({})

    @app.post("/v2/repository/models/{name}/reallocate")
    async def reallocate(name: str, request: Request):
        token = _token(request)
        repo.tokens.require_admin(token)
        doc = _parse_json(await read_body(request, 1 << 16, f"reallocation of {name!r}"), "the reallocate request")
        if "cores" not in doc and "replicas" not in doc:
            raise bad_request('the reallocate request needs "cores": a count or a list of core indices (and, in '
                              'front of a cluster, or instead, "replicas")')
        return _json(await run_in_threadpool(repo.reallocate, name, token, doc.get("cores"), doc.get("replicas")))

    @app.post("/v2/repository/models/{name}/reset")
    async def reset(name: str, request: Request):
        return _json(await run_in_threadpool(repo.reset, name, _token(request)))

    @app.get("/metrics")
    async def prometheus(request: Request):
        repo.tokens.require_admin(_token(request))
        if metrics is None:
            raise ServingError(404, "this server keeps no metrics")
        data, ctype = metrics.exposition()
        return Response(data, 200, media_type=ctype)

    return app


def _b64(key: str, value) -> bytes:
    if not isinstance(value, str):
        raise bad_request(f"parameter {key!r} must be the file's bytes in base64, not {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"parameter {key!r} is not valid base64: {e}") from None
