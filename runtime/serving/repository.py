"""The served models: one tenant of the board each, with its token, quota
and wire interface; model control (load, unload, re-allocate, reset) and
inference, the same for HTTP and gRPC.

A model is loaded from the files of a repository-extension load request:
an ONNX model (float or QDQ: float32 tensors on the wire, in the ONNX
layout; LSTM/GRU models run on the RNN cores) or an IFP file from
``vfpga compile`` (its quantized int8 HWC tensors on the wire). The load's
``config`` parameter is a JSON object:

    {"cores": 2, "token": "...", "max_pending": 16, "calibration": "calib.npz", "input_shape": [1, 3, 32, 32]}

Models may ask for dynamic batching: ``"max_batch"`` and
``"max_delay_us"``; CNN models, instead, for several requests in flight:
``"max_inflight"`` (see :meth:`Accelerator.deploy`).

In front of a cluster (``vfpga serve --ray``) it may also give ``"replicas"``
(copies of the model, each on ``cores`` cores of some board; requests go to
the least loaded) and ``"board"`` (the board kind, default the first one).

Every state change (load, unload, re-allocation, fault, reset) is one log
line on the ``vfpga.serving`` logger.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future

import numpy as np
import onnx

from vfpga import overlay
from vfpga.runtime.compiler import ifp
from vfpga.runtime.errors import (
    ClusterError,
    CompileError,
    ContextError,
    DeployError,
    FrontendError,
    IfpError,
    MaskRejected,
    QueueFull,
    RnnCompileError,
    TenantFault,
    TenantRemoved,
)
from vfpga.runtime.tenants import Accelerator, Tenant

from .auth import Tokens, new_token, not_yours
from .config import ServerConfig
from .protocol import ServingError, Tensor, TensorSpec, bad_request, datatype_of

log = logging.getLogger("vfpga.serving")

CONFIG_KEYS = {"cores", "token", "max_pending", "calibration", "input_shape", "replicas", "board", "max_batch",
               "max_delay_us", "max_inflight"}
ONNX_DATATYPES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.DOUBLE: "FP64", onnx.TensorProto.FLOAT16: "FP16",
                  onnx.TensorProto.INT8: "INT8", onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.INT32: "INT32",
                  onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL"}
MODEL_ERRORS = (FrontendError, CompileError, IfpError, RnnCompileError, onnx.checker.ValidationError, ValueError,
                TypeError, KeyError, IndexError, NotImplementedError)


@dataclasses.dataclass
class Served:
    """A loaded model: its tenant (of the board, or of the cluster) and what it looks like on the wire."""

    name: str
    tenant: Tenant  # or a vfpga.runtime.cluster.ClusterTenant
    platform: str  # "onnx" | "vfpga_ifp"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_request_bytes: int
    fault_logged: bool = False

    def metadata(self) -> dict:
        return {"name": self.name, "versions": ["1"], "platform": self.platform,
                "inputs": [s.metadata() for s in self.inputs], "outputs": [s.metadata() for s in self.outputs]}

    def describe_inputs(self) -> str:
        return ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in self.inputs)


@dataclasses.dataclass
class Job:
    """One inference in flight: its model, the outputs asked for, and the future of their arrays."""

    served: Served
    outputs: list[TensorSpec]
    future: Future  # of [(spec, array)]
    t0: float


def _calibration(files: dict[str, bytes], name) -> list | None:
    """Calibration samples from the file ``name`` of the load (.npy: N stacked samples; .npz: its arrays)."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise bad_request(f"config.calibration must name a file of the load, not {name!r}")
    key = name if name.startswith("file:") else f"file:{name}"
    if key not in files:
        raise bad_request(f"config.calibration names {name!r}, which is not among the load's files "
                          f"{sorted(files) or '(none)'}")
    try:
        data = np.load(io.BytesIO(files[key]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise bad_request(f"calibration file {name!r} is not a numpy .npy/.npz file: {e}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            arrays = [data[k] for k in sorted(data.files)]
    else:
        arrays = [data]
    samples = []
    for a in arrays:
        if not np.issubdtype(a.dtype, np.floating):
            raise bad_request(f"calibration file {name!r}: arrays must be float32 in the model's layout, not {a.dtype}")
        samples.extend(a[i:i + 1] for i in range(a.shape[0])) if a.ndim == 4 and a.shape[0] > 1 else samples.append(a)
    if not samples:
        raise bad_request(f"calibration file {name!r} holds no arrays")
    return samples


def _int(config: dict, key: str, default, lo: int = 1):
    v = config.get(key, default)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise bad_request(f"config.{key} must be an integer >= {lo}, not {v!r}")
    return v


def parse_config(raw) -> dict:
    """The load's ``config`` parameter (a JSON string, as the clients send it, or an object)."""
    if raw is None:
        return {}
    if isinstance(raw, (bytes, str)):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request(f"config is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise bad_request(f"config must be a JSON object, not {type(raw).__name__}")
    unknown = set(raw) - CONFIG_KEYS
    if unknown:
        raise bad_request(f"config has unknown keys {sorted(unknown)}; known: {', '.join(sorted(CONFIG_KEYS))}")
    return raw


def _onnx_specs(values, init_names=()) -> list[TensorSpec]:
    out = []
    for v in values:
        if v.name in init_names:
            continue
        t = v.type.tensor_type
        datatype = ONNX_DATATYPES.get(t.elem_type)
        if datatype is None:
            raise bad_request(f"tensor {v.name!r}: ONNX element type {t.elem_type} is not served")
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim) if t.HasField("shape") \
            else ()
        out.append(TensorSpec(v.name, datatype, shape))
    return out


class Repository:
    """The models served from one accelerator, or from a cluster of boards
    (a vfpga.runtime.cluster.Cluster: the same deploy, remove, reallocate and stats)."""

    def __init__(self, accel: Accelerator, config: ServerConfig, metrics=None):
        self.accel = accel
        self.config = config
        self.metrics = metrics
        self.tokens = Tokens(config.resolved_admin_token())
        self.models: dict[str, Served] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()
        self.draining = False

    # ---- lookup ---------------------------------------------------------------------------------------
    def served(self, name: str, token: str | None) -> Served:
        """The model ``name`` if ``token`` opens it (the admin's, or the model's own)."""
        self.tokens.check(name, token)
        s = self.models.get(name)
        if s is None:
            if self.tokens.is_admin(token):
                raise ServingError(404, f"model {name!r} not found; loaded: {sorted(self.models) or 'none'}")
            raise not_yours(name)
        return s

    def _admin_model(self, name: str, token: str | None) -> Served:
        self.tokens.require_admin(token)
        s = self.models.get(name)
        if s is None:
            raise ServingError(404, f"model {name!r} not found; loaded: {sorted(self.models) or 'none'}")
        return s

    def index(self, token: str | None, ready_only: bool = False) -> list[dict]:
        self.tokens.require_admin(token)
        out = []
        for name, s in sorted(self.models.items()):
            fault = s.tenant.fault
            entry = {"name": name, "version": "1", "state": "UNAVAILABLE" if fault else "READY"}
            if fault:
                entry["reason"] = f"stopped by a fault: {fault}"
            out.append(entry)
        if not ready_only:
            out += [{"name": n, "version": "1", "state": "LOADING"} for n in sorted(self._loading)]
        return [e for e in out if not ready_only or e["state"] == "READY"]

    # ---- model control ------------------------------------------------------------------------------
    def load(self, name: str, token: str | None, config_raw, files: dict[str, bytes]) -> dict:
        """Deploys the model in ``files`` as tenant ``name`` (blocking: compiles it).
        Returns {"name", "token", "cores", "inputs", "outputs"}."""
        self.tokens.require_admin(token)
        if self.draining:
            raise ServingError(503, "the server is shutting down")
        if not name or "/" in name or len(name) > 128:
            raise bad_request(f"model name {name!r}: 1 to 128 characters, no '/'")
        config = parse_config(config_raw)
        quota = self.config.quota_for(name)
        cores = _int(config, "cores", 1)
        if quota.max_cores is not None and cores > quota.max_cores:
            raise ServingError(403, f"config.cores {cores} exceeds the quota of {quota.max_cores} cores per tenant")
        max_pending = _int(config, "max_pending", quota.max_pending)
        if max_pending > quota.max_pending:
            raise ServingError(403, f"config.max_pending {max_pending} exceeds the quota of {quota.max_pending}")
        placement = self._placement(config)
        placement.update(self._batching(config))
        tenant_token = config.get("token") or new_token()
        if not isinstance(tenant_token, str):
            raise bad_request("config.token must be a string")
        input_shape = config.get("input_shape")
        calibration = _calibration(files, config.get("calibration"))
        model_key = self._model_file(files, config.get("calibration"))
        with self._lock:
            if name in self.models or name in self._loading:
                raise ServingError(409, f"model {name!r} is already loaded; unload it first")
            self._loading.add(name)
        try:
            self.tokens.add(name, tenant_token)
            try:
                served = self._deploy(name, files[model_key], model_key, cores, calibration, input_shape,
                                      max_pending, quota.max_request_bytes, placement)
            except BaseException:
                self.tokens.remove(name)
                raise
            with self._lock:
                self.models[name] = served
        finally:
            with self._lock:
                self._loading.discard(name)
        t = served.tenant
        log.info("load model=%s kind=%s platform=%s cores=%s max_pending=%d token=%s", name, t.kind, served.platform,
                 t.cores, max_pending, "given" if config.get("token") else "generated")
        if self.metrics is not None:
            self.metrics.loaded(name)
        reply = {"name": name, "token": tenant_token, "cores": list(t.cores), **served.metadata()}
        if self.config.cluster:
            reply["replicas"] = t.placement
        return reply

    def _placement(self, config: dict) -> dict:
        """The cluster's load options (replicas, board kind), refused on one board."""
        replicas, board = _int(config, "replicas", 1), config.get("board")
        if not self.config.cluster:
            if replicas != 1 or board is not None:
                raise bad_request("config.replicas and config.board need a cluster of boards "
                                  "(vfpga serve --ray ... --boards KIND:COUNT)")
            return {}
        if board is not None and board not in self.accel.kinds:
            raise bad_request(f"config.board {board!r}: this cluster has {self.accel.board}")
        return {"replicas": replicas, "board": board}

    def _batching(self, config: dict) -> dict:
        """Throughput options: deploy's max_batch and max_delay_us (dynamic
        batching) and max_inflight (CNN models), when asked for; in front of
        a cluster, each replica's."""
        max_batch, max_inflight = _int(config, "max_batch", 1), _int(config, "max_inflight", 1)
        delay = config.get("max_delay_us", 0)
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay < 0:
            raise bad_request(f"config.max_delay_us must be a number >= 0, not {delay!r}")
        out = {}
        if max_batch > 1:
            out.update(max_batch=max_batch, max_delay_us=float(delay))
        if max_inflight > 1:
            out["max_inflight"] = max_inflight
        return out

    @staticmethod
    def _model_file(files: dict[str, bytes], calibration) -> str:
        cal = None if calibration is None else (calibration if calibration.startswith("file:") else f"file:{calibration}")
        models = [k for k in files if k != cal]
        if len(models) > 1:
            models = [k for k in models if k.endswith((".onnx", ".ifp"))]
        if len(models) != 1:
            raise bad_request("a load needs exactly one model file: a 'file:<path>' parameter with the ONNX model's "
                              f"(or IFP file's) bytes, base64 in JSON; got {sorted(files) or 'none'}")
        return models[0]

    def _deploy(self, name, blob: bytes, path: str, cores, calibration, input_shape, max_pending,
                max_request_bytes, placement: dict) -> Served:
        if blob[:4] == ifp.ZIP_MAGIC:
            return self._deploy_ifp(name, blob, path, cores, max_pending, max_request_bytes, placement)
        try:
            proto = onnx.load_from_string(blob)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise bad_request(f"{path[5:]}: not an ONNX model ({type(e).__name__}: {e})") from None
        if not proto.graph.node:
            raise bad_request(f"{path[5:]}: not an ONNX model (no graph nodes)")
        try:  # fills the outputs' shapes where the graph leaves them out (the metadata shows them)
            typed = onnx.shape_inference.infer_shapes(proto)
        except Exception:  # noqa: BLE001 - the compiler names what is wrong with the model
            typed = proto
        inits = {i.name for i in proto.graph.initializer}
        inputs = _onnx_specs(typed.graph.input, inits)
        outputs = _onnx_specs(typed.graph.output)
        tenant = self._call_deploy(path, blob, cores=cores, name=name, calibration=calibration,
                                   input_shape=input_shape, max_pending=max_pending, **placement)
        if tenant.kind != "rnn" and len(inputs) == 1:  # the compiled input's exact shape
            shape = tenant.graph.tensors[tenant.graph.inputs[0]].onnx_shape
            if shape is not None:
                inputs = [dataclasses.replace(inputs[0], shape=tuple(shape))]
        return Served(name, tenant, "onnx", inputs, outputs, max_request_bytes)

    def _deploy_ifp(self, name, blob, path, cores, max_pending, max_request_bytes, placement: dict) -> Served:
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "model.ifp")
            with open(f, "wb") as fh:
                fh.write(blob)
            try:
                compiled = ifp.load(f, overlay.load(placement["board"]) if placement.get("board")
                                    else self.accel.config)
            except IfpError as e:
                raise bad_request(f"{path[5:]}: {e}") from None
        g = compiled.graph
        inputs = [TensorSpec(n, "INT8", tuple(g.tensors[n].shape)) for n in g.inputs]
        outputs = [TensorSpec(n, "INT8", tuple(g.tensors[n].shape)) for n in g.outputs]
        tenant = self._call_deploy(path, compiled, cores=cores, name=name, max_pending=max_pending, **placement)
        return Served(name, tenant, "vfpga_ifp", inputs, outputs, max_request_bytes)

    def _call_deploy(self, path, model, **kw) -> Tenant:
        try:
            return self.accel.deploy(model, **kw)
        except DeployError as e:
            raise ServingError(409, str(e)) from None
        except ClusterError as e:
            raise ServingError(503, str(e)) from None
        except MODEL_ERRORS as e:
            raise bad_request(f"{path[5:]}: unsupported model: {e}") from None

    def unload(self, name: str, token: str | None) -> None:
        self._admin_model(name, token)
        with self._lock:
            self.models.pop(name, None)
        self.tokens.remove(name)
        try:
            self.accel.remove(name)
        finally:
            if self.metrics is not None:
                self.metrics.unloaded(name)
            log.info("unload model=%s (its queued requests were refused, the one in flight finished)", name)

    def reallocate(self, name: str, token: str | None, cores, replicas=None) -> dict:
        self._admin_model(name, token)
        if self.config.cluster:
            return self._reallocate_cluster(name, cores, replicas)
        if replicas is not None:
            raise bad_request("replicas need a cluster of boards (vfpga serve --ray ... --boards KIND:COUNT)")
        if isinstance(cores, list):
            if not cores or not all(isinstance(c, int) and not isinstance(c, bool) for c in cores):
                raise bad_request(f"cores must be a count or a non-empty list of core indices, not {cores!r}")
            n = len(cores)
        elif isinstance(cores, int) and not isinstance(cores, bool) and cores >= 1:
            n = cores
        else:
            raise bad_request(f"cores must be a count >= 1 or a list of core indices, not {cores!r}")
        quota = self.config.quota_for(name)
        if quota.max_cores is not None and n > quota.max_cores:
            raise ServingError(403, f"{n} cores exceed the quota of {quota.max_cores} cores per tenant")
        try:
            r = self.accel.reallocate({name: cores})
        except (DeployError, MaskRejected) as e:
            raise ServingError(409, str(e)) from None
        except ContextError as e:
            raise ServingError(500, str(e)) from None
        log.info("reallocate model=%s cores %s -> %s (%s)", name, r.before[name], r.after[name], r.describe())
        return {"name": name, "cores": r.after[name], "before": r.before[name], "total_ms": r.total_s * 1e3}

    def _reallocate_cluster(self, name: str, cores, replicas) -> dict:
        for what, v in (("cores", cores), ("replicas", replicas)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise bad_request(f"{what} must be a count >= 1 in front of a cluster, not {v!r}")
        if cores is None and replicas is None:
            raise bad_request('the reallocate request needs "cores" (per replica) and/or "replicas"')
        quota = self.config.quota_for(name)
        if cores is not None and quota.max_cores is not None and cores > quota.max_cores:
            raise ServingError(403, f"{cores} cores exceed the quota of {quota.max_cores} cores per tenant")
        try:
            r = self.accel.reallocate({name: {"cores": cores, "replicas": replicas}})
        except DeployError as e:
            raise ServingError(409, str(e)) from None
        except ClusterError as e:
            raise ServingError(503, str(e)) from None
        log.info("reallocate model=%s (%s)", name, r.describe())
        return {"name": name, "replicas": r.after[name], "before": r.before[name], "total_ms": r.total_s * 1e3}

    def reset(self, name: str, token: str | None) -> dict:
        s = self._admin_model(name, token)
        was = s.tenant.fault
        try:
            s.tenant.reset()
        except (ContextError, TenantRemoved) as e:
            raise ServingError(409, str(e)) from None
        s.fault_logged = False
        log.info("reset model=%s (was %s)", name, f"stopped by a fault: {was.fault}" if was else "running")
        return {"name": name, "cores": list(s.tenant.cores)}

    # ---- inference ----------------------------------------------------------------------------------
    def submit(self, name: str, token: str | None, tensors: list[Tensor], outputs: list[str] | None = None) -> Job:
        """Checks the request against the model and queues it on its tenant."""
        if self.draining:
            raise ServingError(503, "the server is shutting down")
        t0 = time.perf_counter()
        s = self.served(name, token)
        try:
            feed = self._feed(s, tensors)
            wanted = self._outputs(s, outputs)
        except ServingError:
            self._count(s, "rejected", t0)
            raise
        try:
            if s.platform == "vfpga_ifp":
                inner = s.tenant.submit_quantized(feed)
            else:
                inner = s.tenant.submit(feed)
        except QueueFull as e:
            self._count(s, "rejected", t0)
            raise ServingError(429, str(e)) from None
        except (TenantFault, TenantRemoved, ClusterError) as e:
            self._count(s, "failed", t0)
            raise self._refusal(s, e) from None
        except ValueError as e:
            self._count(s, "rejected", t0)
            raise bad_request(str(e)) from None
        job = Job(s, wanted, Future(), t0)
        inner.add_done_callback(lambda f: self._done(job, f))
        return job

    def _feed(self, s: Served, tensors: list[Tensor]):
        by_name = {}
        specs = {x.name: x for x in s.inputs}
        for t in tensors:
            if t.name in by_name:
                raise bad_request(f"input {t.name!r} given twice")
            spec = specs.get(t.name)
            if spec is None:
                raise bad_request(f"model {s.name!r} has no input {t.name!r}; its inputs: {s.describe_inputs()}")
            if t.datatype != spec.datatype:
                raise bad_request(f"input {t.name!r}: datatype {t.datatype}, the model takes {spec.datatype}")
            if not spec.fits(t.shape):
                raise bad_request(f"input {t.name!r}: shape {list(t.shape)}, the model takes {list(spec.shape)}")
            by_name[t.name] = t.array
        if s.tenant.kind == "rnn":
            first = s.inputs[0].name
            if first not in by_name:
                raise bad_request(f"model {s.name!r} needs input {first!r}; its inputs: {s.describe_inputs()}")
            return by_name
        missing = [x.name for x in s.inputs if x.name not in by_name]
        if missing:
            raise bad_request(f"model {s.name!r}: missing input(s) {missing}; its inputs: {s.describe_inputs()}")
        return by_name[s.inputs[0].name]

    @staticmethod
    def _outputs(s: Served, names: list[str] | None) -> list[TensorSpec]:
        if not names:
            return list(s.outputs)
        specs = {o.name: o for o in s.outputs}
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise bad_request(f"model {s.name!r} has no output(s) {unknown}; its outputs: "
                              f"{', '.join(specs)}")
        return [specs[n] for n in names]

    def _refusal(self, s: Served, e: Exception) -> ServingError:
        if isinstance(e, TenantRemoved):
            return ServingError(503, f"model {s.name!r} was unloaded before this request ran")
        if isinstance(e, TenantFault) and e.completion is not None:
            if not s.fault_logged:
                s.fault_logged = True
                log.warning("fault model=%s: %s (stopped until reset)", s.name, e)
            return ServingError(500, f"{e}; the model is stopped until the admin resets it")
        if isinstance(e, TenantFault):
            return ServingError(409, f"{e}; the admin resets it (POST /v2/repository/models/{s.name}/reset)")
        if isinstance(e, ClusterError):
            return ServingError(503, f"model {s.name!r}: {e}")
        if isinstance(e, ServingError):
            return e
        log.error("model=%s: request failed: %s: %s", s.name, type(e).__name__, e)
        return ServingError(500, f"model {s.name!r}: {type(e).__name__}: {e}")

    def _done(self, job: Job, inner: Future) -> None:
        """On the thread that answered the tenant's future (its request thread, or the completion thread
        on the direct path): the tenant's result -> the job's (spec, array) pairs."""
        s = job.served
        try:
            e = inner.exception()
            if e is not None:
                raise self._refusal(s, e)
            result = inner.result()
            if s.platform == "vfpga_ifp":
                result = result[0]
            arrays = list(result) if isinstance(result, (list, tuple)) else [result]
            if len(arrays) != len(s.outputs):
                raise ServingError(500, f"model {s.name!r} gave {len(arrays)} outputs, its metadata lists "
                                        f"{len(s.outputs)}")
            by_name = {spec.name: np.asarray(a) for spec, a in zip(s.outputs, arrays)}
            out = [(dataclasses.replace(spec, datatype=datatype_of(by_name[spec.name])), by_name[spec.name])
                   for spec in job.outputs]
        except ServingError as err:
            self._count(s, "failed", job.t0)
            job.future.set_exception(err)
            return
        except Exception as err:  # noqa: BLE001 - handed to the client as a 500
            self._count(s, "failed", job.t0)
            job.future.set_exception(self._refusal(s, err))
            return
        self._count(s, "ok", job.t0)
        job.future.set_result(out)

    def _count(self, s: Served, outcome: str, t0: float) -> None:
        if self.metrics is not None:
            self.metrics.request(s.name, outcome, time.perf_counter() - t0)

    # ---- life cycle --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Unloads every model (queued requests are refused, the ones in flight finish) and releases the board."""
        self.draining = True
        for name in list(self.models):
            self.models.pop(name, None)
            self.tokens.remove(name)
            try:
                self.accel.remove(name)
            except Exception as e:  # noqa: BLE001 - go on releasing the others
                log.error("unload model=%s at shutdown failed: %s", name, e)
            log.info("unload model=%s (shutdown)", name)
        self.accel.close()
