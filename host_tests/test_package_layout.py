"""The package layout the README promises: one subpackage per concept,
imports one way (top to bottom of the order in vfpga/runtime/__init__.py),
no import cycles between modules, no module a reader cannot hold in mind.

Read from the sources (ast), so lazy imports inside functions count too."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"vfpga.runtime": "runtime", "vfpga.driver": "driver", "vfpga.overlay": "overlay"}
MAX_LINES = 800  # for driver/ and runtime/

# Top to bottom: a module may import its own group and any group below it.
ORDER = [
    "vfpga.runtime.cli",
    "vfpga.runtime.serving",
    "vfpga.runtime.cluster",
    "vfpga.runtime.experiments",
    "vfpga.runtime.backend",
    "vfpga.runtime.tenants",
    "vfpga.runtime.sim",
    "vfpga.runtime.models",
    "vfpga.runtime.errors",
    "vfpga.runtime.compiler",
    "vfpga.runtime.hw",
    "vfpga.driver",
    "vfpga.overlay",
]
# The emulated device stands in for the board beneath pynq; its clock is the
# hardware models' pool timeline (which imports only the driver's ISA bindings).
ALLOWED_UPWARD = {("vfpga.driver.emulated_dispatcher", "vfpga.runtime.hw.timeline")}


def _modules() -> dict[str, str]:
    """dotted name -> file, for every module of the three packages."""
    out = {}
    for pkg, folder in PACKAGES.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, files in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "configs", "tcl")]
            rel = os.path.relpath(dirpath, base)
            prefix = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
            for f in files:
                if f.endswith(".py"):
                    out[prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"] = os.path.join(dirpath, f)
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> set[str]:
    """The vfpga modules ``name`` imports (package __init__s for names that are not modules)."""
    is_pkg = path.endswith("__init__.py")
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts if is_pkg else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # "vfpga.driver.isa.lib" -> the module that defines it
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _group(module: str) -> str | None:
    """The layer group of a module (None for the docstring-only vfpga.runtime package)."""
    return next((g for g in ORDER if module == g or module.startswith(g + ".")), None)


def test_every_module_belongs_to_one_group():
    assert [m for m in MODULES if _group(m) is None] == ["vfpga.runtime"]
    assert not GRAPH["vfpga.runtime"]
    assert {_group(m) for m in MODULES} - {None} == set(ORDER)


def test_imports_go_one_way():
    rank = {g: i for i, g in enumerate(ORDER)}
    wrong = [(a, b) for a, deps in GRAPH.items() for b in deps
             if _group(a) and rank[_group(b)] < rank[_group(a)] and (a, b) not in ALLOWED_UPWARD]
    assert not wrong, "imports that point up the layer order:\n" + "\n".join(f"{a} -> {b}" for a, b in sorted(wrong))


def test_the_allowed_upward_import_still_exists():
    """The exception is real (else it should go from ALLOWED_UPWARD)."""
    for a, b in ALLOWED_UPWARD:
        assert b in GRAPH[a]


def test_no_import_cycles_between_modules():
    # A package's __init__ importing its own modules is how it exports them; a
    # module importing its package's __init__ (for those names) would be a cycle.
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == "open":
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("vfpga.overlay")))
def test_no_module_is_too_long(module):
    with open(MODULES[module]) as f:
        n = sum(1 for _ in f)
    assert n <= MAX_LINES, f"{MODULES[module]} has {n} lines (at most {MAX_LINES}): split it by concern"


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.endswith("__init__.py")
                                           and m.startswith("vfpga.runtime")))
def test_each_subpackage_says_what_it_holds(package):
    doc = ast.get_docstring(ast.parse(open(MODULES[package]).read()))
    assert doc and len(doc.split()) >= 20, f"{package}: its __init__ docstring should say what it holds"


def test_the_order_is_the_one_the_runtime_documents():
    import vfpga.runtime

    listed = [line.split()[0] for line in vfpga.runtime.__doc__.splitlines()
              if line.startswith("    ") and line.split() and line.split()[0].isidentifier()]
    assert ["vfpga.runtime." + n for n in listed] == [g for g in ORDER if g.startswith("vfpga.runtime.")]
