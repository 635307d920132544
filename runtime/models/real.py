"""Real exported models that public Python packages ship, for the scripts
and the slow tests: where to find them (the packages' wheels, fetched with
``pip download`` into a directory, never into the repository) and inputs of
the kind each model expects (synthetic document pages, text lines, audio).

    MODELS["ppocr_cls"]   PaddleOCR text-direction classifier (paddle2onnx, MobileNetV3 style)
    MODELS["ppocr_det"]   PP-OCRv4 text detector (paddle2onnx, DBNet style)
    MODELS["silero_vad"]  Silero voice-activity detector, sequence export (torch.onnx:
                          STFT and Conv1d front end, then an LSTM)
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass

import numpy as np

DEFAULT_DIR = os.environ.get("VFPGA_REAL_MODELS", os.path.join("/tmp", "vfpga-real-models"))
PACKAGES = ("rapidocr-onnxruntime==1.4.4", "silero-vad==6.2.3")


@dataclass(frozen=True)
class RealModel:
    name: str
    wheel: str  # wheel name prefix
    member: str  # path inside the wheel
    input_shape: tuple  # the main input's shape to deploy with
    exporter: str
    kind: str  # "cnn" or "mixed"


MODELS = {
    "ppocr_cls": RealModel("ppocr_cls", "rapidocr_onnxruntime", "rapidocr_onnxruntime/models/"
                           "ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192), "paddle2onnx", "cnn"),
    "ppocr_det": RealModel("ppocr_det", "rapidocr_onnxruntime", "rapidocr_onnxruntime/models/"
                           "ch_PP-OCRv4_det_infer.onnx", (1, 3, 320, 320), "paddle2onnx", "cnn"),
    "silero_vad": RealModel("silero_vad", "silero_vad", "silero_vad/data/silero_vad_16k_sequence.onnx",
                            (16, 576), "torch.onnx", "mixed"),
}


def fetch(directory: str = DEFAULT_DIR, download: bool = False) -> str:
    """The directory holding the packages' wheels; with ``download`` the
    wheels are fetched with ``pip download`` (PyPI) when missing."""
    os.makedirs(directory, exist_ok=True)
    missing = [p for p in PACKAGES if not glob.glob(os.path.join(directory, p.split("==")[0].replace("-", "_")
                                                                 + "-*.whl"))]
    if missing and download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", directory, *missing],
                       check=True)
    return directory


def model_bytes(name: str, directory: str = DEFAULT_DIR) -> bytes | None:
    """The ONNX model ``name`` read from its package's wheel, or None when absent."""
    m = MODELS[name]
    wheels = sorted(glob.glob(os.path.join(directory, f"{m.wheel}-*.whl")))
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as z:
        return z.read(m.member)


def text_page(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A synthetic document page: dark glyph-like strokes in lines on a light,
    noisy background, normalised as PaddleOCR does ((x / 255 - 0.5) / 0.5), NCHW."""
    img = np.full((h, w, 3), 235.0) + rng.normal(0, 6, (h, w, 3))
    y = int(rng.integers(2, 10))
    while y < h - 12:
        lh = int(rng.integers(8, 16)) if h > 64 else h - 2 * y
        x = int(rng.integers(4, 30))
        while x < w - 14:
            ww = int(rng.integers(3, 12))
            img[y:y + lh, x:x + ww] = rng.uniform(10, 60)
            x += ww + int(rng.integers(2, 6)) + (int(rng.integers(10, 30)) if rng.random() < 0.15 else 0)
        y += lh + int(rng.integers(6, 20))
        if h <= 64:
            break
    x = (np.clip(img, 0, 255) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def speech_windows(rng: np.random.Generator, n: int) -> np.ndarray:
    """n windows of 576 samples (64 of context + 512) of 16 kHz audio: a
    modulated tone burst in quiet noise, as the VAD's sequence export takes them."""
    t = np.arange(n * 512 + 64) / 16000
    start = rng.uniform(0.05, 0.15)
    env = ((t > start) & (t < start + rng.uniform(0.15, 0.3))).astype(np.float64)
    f0 = rng.uniform(120, 260)
    a = 0.3 * env * np.sin(2 * np.pi * (f0 + 150 * np.sin(2 * np.pi * 3 * t)) * t) * (1 + 0.5 * np.sin(14 * np.pi * t))
    a = a + 0.01 * rng.standard_normal(t.size)
    return np.stack([a[i * 512:i * 512 + 576] for i in range(n)]).astype(np.float32)


def inputs(name: str, rng: np.random.Generator):
    """One input of the kind model ``name`` expects (an array, or the feeds dict of the VAD)."""
    m = MODELS[name]
    if name == "silero_vad":
        zeros = np.zeros((1, 1, 128), np.float32)
        return {"input": speech_windows(rng, m.input_shape[0]), "h": zeros, "c": zeros.copy()}
    return text_page(rng, m.input_shape[2], m.input_shape[3])
