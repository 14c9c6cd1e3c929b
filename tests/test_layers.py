"""The packages import one way only, and the light ones do not load torch.

Layers, lowest first (a package may import only the packages listed for it)::

    fastrm_common                  the torch-free leaf: errors, tokens, prompts, images, VQA records/accuracy, presets
    policies      -> fastrm_common
    fastrm_core   -> fastrm_common                                   (torch: adapters, relevancy, proxy, capture, distill)
    calibration   -> fastrm_common, fastrm_core
    guardrail     -> fastrm_common, fastrm_core, calibration, policies
    shapesvqa     -> fastrm_common, fastrm_core                      (registers the "reference" preset; nobody imports it)

The graph is read from the modules' own source (every ``import``, including those inside
functions and ``TYPE_CHECKING`` blocks), so it stays true as the code changes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "fastrm_common": set(),
    "policies": {"fastrm_common"},
    "fastrm_core": {"fastrm_common"},
    "calibration": {"fastrm_common", "fastrm_core"},
    "guardrail": {"fastrm_common", "fastrm_core", "calibration", "policies"},
    "shapesvqa": {"fastrm_common", "fastrm_core"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports: ``from a import b`` counts as ``a.b`` when that is a module."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` where a.b.c is an attribute
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in ALLOWED:
                found.add(target)
    return found


@cache  # one parse of the tree for the three checks below
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) - {name} for name, path in modules.items()}


def test_packages_import_only_lower_layers():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0] and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    )
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_module_imports_shapesvqa_from_outside():
    outside = sorted(m for m, ts in _graph().items() if not m.startswith("shapesvqa")
                     and any(t.startswith("shapesvqa") for t in ts))
    assert not outside, f"the reference preset is registered by an entry point; these import shapesvqa: {outside}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules():
    cycles = _cycles(_graph())
    assert not cycles, "modules that import each other (directly or in a circle): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_cycle_check_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


LIGHT = ["fastrm_common", "policies", "calibration", "guardrail.cli", "fastrm_core.cli"]


def test_light_imports_do_not_load_torch():
    """``import policies`` (and the others) in a fresh interpreter, one after the other: after
    each, neither torch, transformers nor scipy (seconds each) is loaded (so the first that loads one is named)."""
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = [m for m in ('torch', 'transformers', 'scipy') if m in sys.modules]\n"
        "    if heavy:\n"
        "        print(f'import {name} loaded {heavy}')\n"
        "        break\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""


@pytest.mark.slow  # imports every submodule in a fresh interpreter
def test_public_names_survive_importing_every_submodule():
    """A lazily loaded name must not be shadowed by a submodule of the same name (Python binds
    ``package.sub`` on import, so ``from fastrm_core import capture`` would give the module)."""
    code = (
        "import importlib, pkgutil, types\n"
        "bad = []\n"
        "for package in ('fastrm_core', 'guardrail', 'calibration', 'policies'):\n"
        "    pkg = importlib.import_module(package)\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, package + '.'):\n"
        "        if '.serve' in info.name or info.name.endswith('__main__'):\n"
        "            continue  # an optional extra; a command line\n"
        "        importlib.import_module(info.name)\n"
        "    bad += [f'{package}.{n}' for n in pkg.__all__ if isinstance(getattr(pkg, n), types.ModuleType)]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"public names that resolve to a submodule: {out.stdout.strip()}"


# ---------------------------------------------------------------- inside guardrail (issue 25)


def test_answers_and_telemetry_import_neither_cli_nor_traces():
    wrong = sorted(f"{m} imports {t}" for m, ts in _graph().items()
                   if m.startswith(("guardrail.answers", "guardrail.telemetry"))
                   for t in ts if t.startswith(("guardrail.cli", "guardrail.traces")))
    assert not wrong, "the call's stages must not depend on the command line or on reading traces back:\n" + "\n".join(wrong)


def test_the_guarded_call_path_imports_neither_rich_nor_the_trace_readers():
    """guard.py and what it imports inside guardrail (inputs, generation, answers, telemetry) draw
    nothing: no rich, no traces/ (the terminal viewer, the HTML report) and no cli/."""
    graph = _graph()
    seen, todo = set(), ["guardrail.guard"]
    while todo:
        m = todo.pop()
        if m in seen or not m.startswith("guardrail"):
            continue
        seen.add(m)
        todo += graph.get(m, ())
    assert not [m for m in seen if m.startswith(("guardrail.traces", "guardrail.cli"))], sorted(seen)
    rich = [m for m in seen if "rich" in _third_party(m)]
    assert not rich, f"these modules of the call path import rich: {rich}"


def _third_party(module: str) -> set[str]:
    path = _modules()[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_private_names_imported_across_modules():
    """``from x import _y`` between two modules of the project (production code and benchmarks):
    what another module needs is public and documented, or it moves."""
    roots = list(ALLOWED) + ["benchmarks"]
    wrong = []
    for package in roots:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    module = ("." * node.level) + (node.module or "")
                    top = module.lstrip(".").split(".")[0]
                    if node.level == 0 and top not in roots:
                        continue  # a third-party package's private name is its business
                    wrong += [f"{path.relative_to(ROOT)}: from {module} import {a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not wrong, "private names imported across modules:\n" + "\n".join(wrong)


def test_guardrail_root_is_small_and_guard_py_short():
    root_modules = sorted(p.name for p in (ROOT / "guardrail").glob("*.py"))
    assert len(root_modules) <= 12, root_modules
    assert len((ROOT / "guardrail" / "guard.py").read_text(encoding="utf-8").splitlines()) < 400
