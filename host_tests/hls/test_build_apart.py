"""setup.py's build_ext (hls/cffi_build.py's BuildExtApart): extensions that
compile one source with different macros, built side by side, each link
their own objects. Three small extensions share one C file; each returns the
value its macros give it."""

from __future__ import annotations

import importlib.util
import os

import pytest
from setuptools import Distribution, Extension

HLS = os.path.join(os.path.dirname(__file__), "..", "..", "hls")

SOURCE = r"""
#include <Python.h>
static PyObject *value(PyObject *self, PyObject *args) { return PyLong_FromLong(VALUE); }
static PyMethodDef methods[] = {{"value", value, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, NAME, NULL, -1, methods};
PyMODINIT_FUNC INIT(void) { return PyModule_Create(&module); }
"""


@pytest.fixture(scope="module")
def build_ext_apart():
    spec = importlib.util.spec_from_file_location("_vfpga_cffi_build_apart", os.path.join(HLS, "cffi_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BuildExtApart


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_libraries_built_side_by_side_link_their_own_objects(build_ext_apart, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # build_ext takes sources relative to the working directory
    (tmp_path / "shared.c").write_text(SOURCE)
    values = {"apart_a": 11, "apart_b": 22, "apart_c": 33}
    extensions = [Extension(name, ["shared.c"], define_macros=[("VALUE", str(v)), ("NAME", f'"{name}"'),
                                                                ("INIT", f"PyInit_{name}")])
                  for name, v in values.items()]
    dist = Distribution({"name": "apart", "ext_modules": extensions, "cmdclass": {"build_ext": build_ext_apart}})
    cmd = dist.get_command_obj("build_ext")
    cmd.build_lib, cmd.build_temp, cmd.parallel = str(tmp_path / "lib"), str(tmp_path / "temp"), 3
    dist.run_command("build_ext")
    for name, value in values.items():
        objects = [f for _, _, files in os.walk(tmp_path / "temp" / name) for f in files if f.endswith(".o")]
        assert objects == ["shared.o"], (name, objects)  # its own object, in its own directory
        assert _load(cmd.get_ext_fullpath(name), name).value() == value
