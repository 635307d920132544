"""The light model-zoo CNNs shipped inside the onnx wheel, with random weights.

onnx/backend/test/data/light/light_<name>.onnx hold the real architectures
(ResNet-50, VGG-19, SqueezeNet, Inception v1/v2, DenseNet-121, ShuffleNet,
AlexNet, ZFNet-512) with every weight produced by a ConstantOfShape node (one
constant value) and a few leftover initializers. :func:`load` replaces every
float parameter by random values (fixed seed) scaled per layer so that
activations keep their magnitude through the network:

- Conv / Gemm / MatMul weights: He-normal, std sqrt(2 / fan_in) (fan_in =
  input channels per group x kernel area, or K); biases N(0, 0.05^2).
- BatchNormalization: gamma ~ N(1, 0.1^2), beta ~ N(0, 0.05^2), running mean
  ~ N(0, 0.05^2), running variance ~ 1 + |N(0, 0.1^2)|. A BN that ends a
  residual branch (its output reaches an Add/Sum whose other operand is an
  activation, through nothing but per-channel affine ops) gets gamma scaled by
  1/2, so the residual sums grow by about 1.25x in variance per block instead
  of 2x (ResNet-50's 16 blocks: ~6x in std, not 256x).
- Per-channel affine constants (Unsqueeze -> Mul / Add after a BN, as the
  Caffe2 exports of DenseNet and Inception v2 have): multiplier ~ N(1, 0.1^2),
  addend ~ N(0, 0.05^2).

Constant subgraphs feeding parameters (ConstantOfShape, Reshape/Unsqueeze of
constants) are folded into initializers first; integer tensors (shapes) are
kept as they are. The result is a float opset-9 model the front end
quantizes like any other.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

NAMES = (
    "resnet50",
    "vgg19",
    "squeezenet",
    "inception_v1",
    "inception_v2",
    "densenet121",
    "shufflenet",
    "alexnet",
    "zfnet512",
)
_FILES = {"alexnet": "light_bvlc_alexnet.onnx"}

# Ops folded when all their inputs are constants (parameter plumbing only).
_FOLDABLE = frozenset({"ConstantOfShape", "Reshape", "Unsqueeze", "Squeeze", "Constant", "Identity", "Cast"})


class ZooError(ValueError):
    pass


def data_dir() -> str:
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def path(name: str) -> str:
    if name not in NAMES:
        raise ZooError(f"unknown zoo model {name!r}; known: {', '.join(NAMES)}")
    p = os.path.join(data_dir(), _FILES.get(name, f"light_{name}.onnx"))
    if not os.path.isfile(p):
        raise ZooError(f"{p} is missing from the installed onnx package")
    return p


def load_original(name: str) -> onnx.ModelProto:
    """The model as shipped (constant weights)."""
    return onnx.load(path(name))


def _eval_const(node: onnx.NodeProto, inputs: list, opset: int) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" for k in range(len(inputs))]
    n = helper.make_node(node.op_type, names[: len(node.input)], ["o"], domain=node.domain)
    n.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [n],
        "fold",
        [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for nm, v in zip(names, inputs)],
        [helper.make_tensor_value_info("o", onnx.TensorProto.UNDEFINED, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return np.asarray(ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))[0])


def fold_parameter_subgraphs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace nodes of _FOLDABLE kinds whose inputs are all constants by
    initializers (in place; returns the model)."""
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    keep = []
    for node in g.node:
        if node.op_type in _FOLDABLE and len(node.output) == 1 and all(not i or i in consts for i in node.input):
            if node.op_type == "Constant":
                consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "ConstantOfShape":
                fill = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), None)
                fill = np.zeros(1, np.float32) if fill is None else fill.reshape(-1)
                shape = [int(d) for d in np.asarray(consts[node.input[0]]).reshape(-1)]
                consts[node.output[0]] = np.full(shape, fill[0], dtype=fill.dtype)
            else:
                consts[node.output[0]] = _eval_const(node, [consts[i] for i in node.input if i], opset)
            continue
        keep.append(node)
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in consts.items() if k in used)
    real = [i for i in g.input if i.name not in consts]
    del g.input[:]
    g.input.extend(real)
    model.ir_version = max(model.ir_version, 4)  # initializers need not be graph inputs
    return model


def _roles(model: onnx.ModelProto) -> dict[str, tuple]:
    """float initializer -> (role, fan_in or None)."""
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for k, i in enumerate(n.input):
            consumers.setdefault(i, []).append((n, k))
    roles = {}

    def branch_end(value: str) -> bool:
        """value reaches an Add/Sum with an activation on the other side
        through per-channel affine ops only."""
        seen = 0
        frontier = [value]
        while frontier and seen < 8:
            seen += 1
            v = frontier.pop()
            for n, k in consumers.get(v, []):
                if n.op_type in ("Sum", "Add"):
                    others = [x for j, x in enumerate(n.input) if j != k]
                    if others and all(x not in inits for x in others):
                        # Add of a per-channel constant is the affine chain, not a residual.
                        return True
                    frontier.append(n.output[0])
                elif n.op_type == "Mul" and any(x in inits for x in n.input):
                    frontier.append(n.output[0])
        return False

    for n in g.node:
        for k, name in enumerate(n.input):
            if name not in inits or inits[name].dtype != np.float32:
                continue
            w = inits[name]
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            if n.op_type == "Conv":
                role = ("weight", int(np.prod(w.shape[1:]))) if k == 1 else ("bias", None)
            elif n.op_type == "Gemm":
                if k == 1:
                    role = ("weight", int(w.shape[1] if a.get("transB", 0) else w.shape[0]))
                elif k == 2:
                    role = ("bias", None)
                else:
                    continue
            elif n.op_type == "MatMul" and k == 1:
                role = ("weight", int(w.shape[0]))
            elif n.op_type == "BatchNormalization" and k >= 1:
                role = (("bn_scale", "bn_bias", "bn_mean", "bn_var")[k - 1], branch_end(n.output[0]))
            elif n.op_type == "Mul":
                role = ("affine_mul", None)
            elif n.op_type in ("Add", "Sum"):
                role = ("affine_add", None)
            else:
                continue
            roles.setdefault(name, role)
    return roles


def randomize(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of a float CNN with every float parameter replaced (see the
    module doc). Deterministic in (model, seed)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    fold_parameter_subgraphs(m)
    roles = _roles(m)
    rng = np.random.default_rng(seed)
    new = []
    for t in m.graph.initializer:
        old = numpy_helper.to_array(t)
        role = roles.get(t.name)
        if role is None:
            new.append(t)
            continue
        kind, extra = role
        shape = old.shape
        if kind == "weight":
            v = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / max(extra, 1)))
        elif kind == "bias" or kind in ("bn_bias", "bn_mean", "affine_add"):
            v = rng.normal(0.0, 0.05, shape)
        elif kind == "bn_scale":
            v = np.clip(rng.normal(1.0, 0.1, shape), 0.5, 1.5) * (0.5 if extra else 1.0)
        elif kind == "bn_var":
            v = 1.0 + np.abs(rng.normal(0.0, 0.1, shape))
        elif kind == "affine_mul":
            v = np.clip(rng.normal(1.0, 0.1, shape), 0.5, 1.5)
        else:  # pragma: no cover - _roles only yields the kinds above
            raise AssertionError(kind)
        new.append(numpy_helper.from_array(np.asarray(v, dtype=np.float32), t.name))
    del m.graph.initializer[:]
    m.graph.initializer.extend(new)
    return m


@functools.cache
def _load_cached(name: str, seed: int) -> onnx.ModelProto:
    return randomize(load_original(name), seed)


def load(name: str, seed: int = 0) -> onnx.ModelProto:
    """The zoo model `name` with random weights (a fresh copy each call;
    the randomization itself is cached per process)."""
    m = onnx.ModelProto()
    m.CopyFrom(_load_cached(name, seed))
    return m


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    return tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)


def substitution_report(original: onnx.ModelProto, randomized: onnx.ModelProto) -> dict:
    """Proof that the weights were substituted: of the float parameters the
    compute nodes of `randomized` read (Conv/Gemm/MatMul/BN/affine), how many
    differ from what the original model computes for them, and how many
    distinct values they hold (the originals are constant fills)."""
    ref = onnx.ModelProto()
    ref.CopyFrom(original)
    fold_parameter_subgraphs(ref)
    before = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in randomized.graph.initializer}
    params = sorted(_roles(randomized))
    changed = [n for n in params if n not in before or not np.array_equal(before[n], after[n])]
    distinct_before = max((np.unique(before[n]).size for n in params if n in before), default=0)
    return {
        "parameters": len(params),
        "changed": len(changed),
        "fraction_changed": len(changed) / max(len(params), 1),
        "values": int(sum(after[n].size for n in params)),
        "min_distinct_after": min((np.unique(after[n]).size for n in params if after[n].size > 1), default=0),
        "max_distinct_before": int(distinct_before),
    }


def random_inputs(model: onnx.ModelProto, n: int, seed: int = 0) -> list[np.ndarray]:
    """n float32 inputs of the model's input shape: standard normal, smoothed
    a little so neighbouring pixels correlate as in normalized images."""
    from vfpga.runtime.models.small import calibration_inputs

    return calibration_inputs(n, seed=seed, shape=input_shape(model))
