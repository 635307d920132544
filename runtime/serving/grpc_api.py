"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``
(health, metadata, ModelInfer, the repository extension) on grpcio, over
the same :class:`Repository` as the HTTP endpoint.

The message classes come from ``oip.proto`` (beside this module), compiled
with grpcio-tools' protoc on first use and cached by the proto's hash; the
service is registered through grpcio's generic handlers, so no generated
service stubs are needed. The tenant token travels as ``authorization:
Bearer <token>`` metadata; a load whose config gives no token returns the
generated one in the ``vfpga-token`` trailing metadata.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from concurrent import futures

import grpc
import numpy as np

import vfpga

from . import auth
from .protocol import (
    CONTENTS_FIELD,
    EXTENSIONS,
    ServingError,
    Tensor,
    from_list,
    from_raw,
    little_endian_bytes,
)
from .repository import Repository

SERVICE = "inference.GRPCInferenceService"
PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oip.proto")
_lock = threading.Lock()
_pb2 = None


def _cache_root() -> str:
    base = os.environ.get("VFPGA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vfpga")
    return os.path.join(base, "grpc")


def messages():
    """The module of the protocol's message classes (generated once per proto and protobuf version)."""
    global _pb2
    with _lock:
        if _pb2 is not None:
            return _pb2
        import google.protobuf
        from grpc_tools import protoc

        with open(PROTO, "rb") as f:
            text = f.read()
        key = hashlib.sha256(text + google.protobuf.__version__.encode()).hexdigest()[:16]
        for root in (_cache_root(), os.path.join(tempfile.gettempdir(), f"vfpga-grpc-{os.getuid()}")):
            target = os.path.join(root, key, "oip_pb2.py")
            if not os.path.exists(target):
                try:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as tmp:
                        rc = protoc.main(["protoc", f"-I{os.path.dirname(PROTO)}", f"--python_out={tmp}",
                                          os.path.basename(PROTO)])
                        if rc != 0:
                            raise RuntimeError(f"protoc failed on {PROTO} (exit {rc})")
                        os.replace(os.path.join(tmp, "oip_pb2.py"), target)
                except OSError:
                    continue  # an unwritable cache: the next place
            spec = importlib.util.spec_from_file_location("vfpga_oip_pb2", target)
            module = importlib.util.module_from_spec(spec)
            sys.modules["vfpga_oip_pb2"] = module
            spec.loader.exec_module(module)
            _pb2 = module
            return module
        raise RuntimeError("no writable place for the generated gRPC messages (set VFPGA_CACHE_DIR)")


def _token(context) -> str | None:
    for key, value in context.invocation_metadata():
        if key == "authorization":
            return auth.bearer(value)
    return None


def _tensor(t, raw) -> Tensor:
    if raw is not None:
        return from_raw(t.name, t.datatype, list(t.shape), raw)
    field = CONTENTS_FIELD.get(t.datatype)
    if field is None:
        return from_list(t.name, t.datatype, list(t.shape), [])  # names the unsupported datatype
    return from_list(t.name, t.datatype, list(t.shape), np.asarray(getattr(t.contents, field)))


class Servicer:
    """The RPCs, each a plain function of (request, context)."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.pb = messages()

    def _run(self, fn):
        def handler(request, context):
            try:
                return fn(request, context)
            except ServingError as e:
                context.abort(getattr(grpc.StatusCode, e.grpc_code), e.message)
        return handler

    def handlers(self) -> grpc.GenericRpcHandler:
        pb = self.pb
        rpcs = {
            "ServerLive": (pb.ServerLiveRequest, lambda r, c: pb.ServerLiveResponse(live=True)),
            "ServerReady": (pb.ServerReadyRequest, lambda r, c: pb.ServerReadyResponse(ready=not self.repo.draining)),
            "ModelReady": (pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, self.model_metadata),
            "ModelInfer": (pb.ModelInferRequest, self.infer),
            "RepositoryIndex": (pb.RepositoryIndexRequest, self.index),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, self.load),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, self.unload),
        }
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(self._run(fn), request_deserializer=req.FromString,
                                                      response_serializer=lambda m: m.SerializeToString())
            for name, (req, fn) in rpcs.items()})

    def model_ready(self, r, context):
        s = self.repo.served(r.name, _token(context))
        return self.pb.ModelReadyResponse(ready=s.tenant.fault is None and not self.repo.draining)

    def server_metadata(self, r, context):
        return self.pb.ServerMetadataResponse(name="vfpga", version=vfpga.__version__, extensions=EXTENSIONS)

    def model_metadata(self, r, context):
        m = self.repo.served(r.name, _token(context)).metadata()
        T = self.pb.ModelMetadataResponse.TensorMetadata
        return self.pb.ModelMetadataResponse(name=m["name"], versions=m["versions"], platform=m["platform"],
                                             inputs=[T(**t) for t in m["inputs"]],
                                             outputs=[T(**t) for t in m["outputs"]])

    def infer(self, r, context):
        token = _token(context)
        s = self.repo.served(r.model_name, token)
        if r.model_version not in ("", "1"):
            raise ServingError(404, f"version {r.model_version!r} not found: models are served as version 1")
        size = r.ByteSize()
        if size > s.max_request_bytes:
            raise ServingError(413, f"model {r.model_name!r} inference: {size} bytes, more than the limit of "
                                    f"{s.max_request_bytes}")
        raw = list(r.raw_input_contents)
        if raw and len(raw) != len(r.inputs):
            raise ServingError(400, f"{len(raw)} raw_input_contents for {len(r.inputs)} inputs")
        tensors = [_tensor(t, raw[i] if raw else None) for i, t in enumerate(r.inputs)]
        job = self.repo.submit(r.model_name, token, tensors, [o.name for o in r.outputs] or None)
        try:
            results = job.future.result(self.repo.config.request_timeout_s)
        except futures.TimeoutError:
            raise ServingError(503, f"model {r.model_name!r}: no result within "
                                    f"{self.repo.config.request_timeout_s} s") from None
        out = self.pb.ModelInferResponse(model_name=r.model_name, model_version="1", id=r.id)
        for spec, arr in results:
            out.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(arr.shape))
            out.raw_output_contents.append(little_endian_bytes(arr))
        return out

    def index(self, r, context):
        out = self.pb.RepositoryIndexResponse()
        for e in self.repo.index(_token(context), r.ready):
            out.models.add(**e)
        return out

    def load(self, r, context):
        files, config = {}, None
        for key, p in r.parameters.items():
            which = p.WhichOneof("parameter_choice")
            if key.startswith("file:"):
                if which != "bytes_param":
                    raise ServingError(400, f"parameter {key!r} must carry the file's bytes (bytes_param)")
                files[key] = p.bytes_param
            elif key == "config":
                config = p.string_param if which == "string_param" else p.bytes_param
            else:
                raise ServingError(400, f"the load request has an unknown parameter {key!r}: 'config' and "
                                        "'file:<path>'")
        result = self.repo.load(r.model_name, _token(context), config, files)
        context.set_trailing_metadata((("vfpga-token", result["token"]),))
        return self.pb.RepositoryModelLoadResponse()

    def unload(self, r, context):
        self.repo.unload(r.model_name, _token(context))
        return self.pb.RepositoryModelUnloadResponse()


def create_server(repo: Repository, host: str, port: int, workers: int = 16) -> tuple[grpc.Server, int]:
    """A started-ready (not yet started) gRPC server on host:port; returns it and the bound port."""
    limit = max([repo.config.quota.max_request_bytes, repo.config.max_model_bytes]
                + [q.max_request_bytes for q in repo.config.model_quotas.values()]) + (1 << 16)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vfpga-grpc"),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit),
                                  ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Servicer(repo).handlers(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server, bound
