"""vfpga: one FPGA shared by many DNN inference tenants.

Installs the single namespace ``vfpga`` (driver/ -> vfpga.driver, runtime/ ->
vfpga.runtime, overlay/ -> vfpga.overlay, notebooks/ -> vfpga.notebooks, found
by `pynq get-notebooks` through the pynq.notebooks entry point) and builds the emulation libraries
from the HLS C++ in hls/ with cffi, per board config a portable one and one for the installing host's
ISA level (VFPGA_PORTABLE=1: the portable ones only; driver/host_isa.py), and the driver's request
marshalling in C (hls/host) the same two ways.
"""

import importlib.util
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


# hls/cffi_build.py: the cffi builders and the build_ext they are built with
_spec = importlib.util.spec_from_file_location("_vfpga_cffi_build", os.path.join(HERE, "hls", "cffi_build.py"))
BUILD = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BUILD)


def _cffi_modules():
    """hls/cffi_build.py's builders: the ISA module, and per board the portable
    emulation library and the one for this host's ISA level (none with
    VFPGA_PORTABLE=1; driver/host_isa.py says which one runs)."""
    return [f"hls/cffi_build.py:{name}" for name in BUILD.module_names()]


# `vfpga serve` (runtime/serving): the Open Inference Protocol over HTTP and gRPC. Its gRPC stack is the
# grpcio and grpcio-tools pynq pins (with protobuf 5): naming them here too, unpinned, would let pip take
# newer ones first and backtrack pynq to releases it cannot install.
SERVE = [
    "fastapi>=0.100",
    "uvicorn>=0.23",
    "httptools>=0.5",
    "uvloop>=0.17; sys_platform != 'win32'",
    "prometheus-client>=0.17",
]

# Many boards as Ray actors (runtime/cluster): `vfpga.cluster`, `vfpga serve --ray`. Ray's core wheel brings its
# own gRPC; it sits beside pynq's protobuf 5 and grpcio pins (the test extra installs both, and the suite runs).
CLUSTER = ["ray>=2.60"]  # the version tested

setup(
    name="vfpga",
    version="0.1.0",
    description="Multi-tenant DNN inference on one FPGA: core pool, two-level dispatch, PYNQ driver",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["vfpga", "vfpga.driver", "vfpga.runtime", "vfpga.overlay", "vfpga.notebooks"]
    + [f"vfpga.runtime.{p}" for p in find_packages("runtime")],
    package_dir={
        "vfpga": "src/vfpga",
        "vfpga.driver": "driver",
        "vfpga.runtime": "runtime",
        "vfpga.overlay": "overlay",
        "vfpga.notebooks": "notebooks",
    },
    package_data={"vfpga.overlay": ["configs/*.json", "tcl/*.tcl", "Makefile", "*.bit", "*.hwh", "*.xclbin"],
                  "vfpga.notebooks": ["*.ipynb"], "vfpga.runtime.serving": ["*.proto"]},
    cffi_modules=_cffi_modules(),
    # the libraries compile side by side, each one's objects apart (hls/cffi_build.py); cffi wraps it to
    # generate its modules' C first
    cmdclass={"build_ext": BUILD.BuildExtApart},
    install_requires=[
        "pynq>=3.1",
        "numpy>=1.23,<2",  # pynq 3.1+ needs numpy 1.x
        "cffi>=1.15",
        "pycparser<3",  # as pynq pins it; without it pip may take pycparser 3 for cffi first and backtrack pynq
        "onnx>=1.14,<1.23",  # 1.23 needs protobuf 6, pynq's grpcio-tools pins protobuf 5
        "onnxruntime>=1.16",
        "matplotlib>=3.5",  # the plots of `vfpga bench`
        "tqdm>=4.60",  # progress bars (also a pynq dependency)
    ],
    extras_require={"serve": SERVE, "cluster": CLUSTER,
                    "test": ["pytest>=8.2", "pytest-xdist>=3.8", "ruff>=0.4", "httpx>=0.24"] + SERVE + CLUSTER},
    entry_points={
        "console_scripts": ["vfpga = vfpga.runtime.cli:main"],
        "pynq.notebooks": ["vfpga = vfpga.notebooks"],
        "pynq.overlays": ["vfpga = vfpga.overlay"],
    },
)
