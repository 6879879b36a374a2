"""The dependency order of mobile_export, enforced: every import (also the ones inside
functions, relative ones resolved) goes to the same or a lower layer, no two modules import
each other through any chain, and the heavy libraries stay where they belong.

Layers, lowest first (a module may import its own layer and the layers below):
  base      errors, fsutil, manifest, fxgraph (names of torch.fx nodes): no knowledge of models
            or backends.
  models    the family as data, and preprocess: the input contract reads the variant's
            `Preprocess` record from models.registry, so it sits with the models it describes.
  quantize  calibration data and PT2E recipes (PyTorch only).
  targets   the Target interface (targets/base.py) and the registry; the registry names backend
            classes as strings and imports them lazily, so it needs no backend import.
  backends  executorch/, coreml/: one package per backend; a backend may use another (e.g. an
            ExecuTorch program with a Core ML delegate) but never verify or anything above.
  verify    parity: metrics, thresholds, reference, reports, per-layer rows and their writer.
            It reaches backends ONLY through the Target interface (checked below).
  tools     what is built on verified artifacts and is used by nothing but pipeline/cli:
            eval, matrix, gate, bench (latency of an artifact, via the Target interface),
            bundle (copies verified artifacts into the apps), golden (reference-output
            fixtures for the apps, built from models + preprocess), cluster (the Ray runner
            that eval and matrix hand shards to).
  pipeline  build -> export -> verify -> manifest.
  cli       click commands only.

Also checked: Ray is imported by mobile_export.cluster only, and `mobile-export --help` /
`list` stay fast: cli.py and targets/__init__.py do not pull torch, executorch or coremltools
at import time (transitively, module-level imports only)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mobile_export"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "mobile_export",
            "mobile_export.errors",
            "mobile_export.fsutil",
            "mobile_export.manifest",
            "mobile_export.fxgraph",
            "mobile_export.quiet",
        ),
    ),
    ("models", ("mobile_export.models", "mobile_export.preprocess")),
    ("quantize", ("mobile_export.quantize",)),
    ("targets", ("mobile_export.targets",)),
    ("backends", ("mobile_export.executorch", "mobile_export.coreml")),
    ("verify", ("mobile_export.verify",)),
    (
        "tools",
        (
            "mobile_export.eval",
            "mobile_export.matrix",
            "mobile_export.gate",
            "mobile_export.bench",
            "mobile_export.bundle",
            "mobile_export.golden",
            "mobile_export.cluster",
        ),
    ),
    ("pipeline", ("mobile_export.pipeline",)),
    ("cli", ("mobile_export.cli",)),
]
BACKENDS = ("mobile_export.executorch", "mobile_export.coreml")
HEAVY = ("torch", "executorch", "coremltools")
FAST_MODULES = ("mobile_export.cli", "mobile_export.targets")
# Imports that break the rules today and are being removed; this list may only shrink
# (test_known_violations_still_exist fails for an entry that is gone).
KNOWN_VIOLATIONS: set[str] = set()


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a mobile_export module, or a top-level external name)
    file: str
    line: int
    module_level: bool

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest known module prefix of a dotted name (a function imported from a module
    counts as an import of that module); external names as their top-level package."""
    if name.split(".")[0] != PACKAGE:
        return name.split(".")[0]
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or PACKAGE


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _run_at_import(tree: ast.AST) -> set[int]:
    """ids of the nodes that run when the module is imported (not inside a function body)."""
    found: set[int] = set()
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        found.add(id(node))
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def _imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    typing_only = _type_checking_lines(tree)
    top_level = _run_at_import(tree)
    rel = str(path.relative_to(ROOT))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one.
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        for name in dict.fromkeys(names):
            target = _resolve(name, modules)
            if target != module:
                found.append(Import(module, target, rel, node.lineno, id(node) in top_level))
    return found


def _layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (
                (module == prefix or module.startswith(prefix + "."))
                and len(prefix) > best_len
                and (prefix != PACKAGE or module == PACKAGE)
            ):
                best, best_len = index, len(prefix)
    return best


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    modules = _modules()
    imports = [imp for name, path in modules.items() for imp in _imports_of(name, path, modules)]
    return modules, imports


def _internal(imports: list[Import]) -> list[Import]:
    return [
        i
        for i in imports
        if (i.target == PACKAGE or i.target.startswith(PACKAGE + "."))
        and f"{i.source} -> {i.target}" not in KNOWN_VIOLATIONS
    ]


def test_known_violations_still_exist(graph):
    _, imports = graph
    present = {f"{i.source} -> {i.target}" for i in imports}
    gone = sorted(KNOWN_VIOLATIONS - present)
    assert not gone, f"remove from KNOWN_VIOLATIONS (fixed): {gone}"


def test_every_module_has_a_layer(graph):
    modules, _ = graph
    unplaced = [m for m in modules if _layer_of(m) is None]
    assert not unplaced, f"assign these modules to a layer in tests/test_layers.py LAYERS: {unplaced}"


def test_no_upward_import(graph):
    """Function-level imports included: an import inside a function is still a dependency."""
    _, imports = graph
    upward = []
    for imp in _internal(imports):
        src, dst = _layer_of(imp.source), _layer_of(imp.target)
        if src is not None and dst is not None and dst > src:
            upward.append(
                f"{imp.where()}: {imp.source} ({LAYERS[src][0]}) imports {imp.target} ({LAYERS[dst][0]})"
            )
    assert not upward, "upward imports:\n  " + "\n  ".join(upward)


def test_backends_only_through_the_target_interface(graph):
    """verify, bench, the pipeline and the CLI know a backend only as a `Target` from the
    registry; only another backend may import a backend package directly."""
    _, imports = graph
    direct = [
        f"{i.where()}: {i.source} imports {i.target}"
        for i in _internal(imports)
        if i.target.startswith(BACKENDS) and not i.source.startswith(BACKENDS)
    ]
    assert not direct, (
        "backend modules imported outside the backends (use the Target interface):\n  " + "\n  ".join(direct)
    )


def _cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    edges: dict[str, set[str]] = {}
    for imp in _internal(imports):
        edges.setdefault(imp.source, set()).add(imp.target)
        edges.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def test_no_import_cycle(graph):
    _, imports = graph
    problems = []
    for component in _cycles(imports):
        members = set(component)
        lines = [
            f"{i.where()}: {i.source} -> {i.target}"
            for i in _internal(imports)
            if i.source in members and i.target in members
        ]
        problems.append("cycle between " + ", ".join(component) + ":\n    " + "\n    ".join(lines))
    assert not problems, "\n  ".join(problems)


def test_cycle_detector_sees_a_cycle_through_a_function_import():
    """The checker itself: a two-module cycle hidden in a function body is found."""
    imports = [
        Import("mobile_export.a", "mobile_export.b", "a.py", 1, True),
        Import("mobile_export.b", "mobile_export.a", "b.py", 9, False),
        Import("mobile_export.b", "mobile_export.c", "b.py", 2, True),
    ]
    assert _cycles(imports) == [["mobile_export.a", "mobile_export.b"]]


def test_ray_only_in_cluster(graph):
    _, imports = graph
    bad = [
        f"{i.where()}: {i.source}"
        for i in imports
        if i.target == "ray" and i.source != "mobile_export.cluster"
    ]
    assert not bad, "only mobile_export.cluster may import ray:\n  " + "\n  ".join(bad)


def test_fast_modules_import_no_heavy_library_at_module_level(graph):
    """Follow module-level imports from cli.py and targets/__init__.py through the package;
    none may reach torch, executorch or coremltools."""
    _, imports = graph
    by_source: dict[str, list[Import]] = {}
    for imp in imports:
        if imp.module_level:
            by_source.setdefault(imp.source, []).append(imp)
    problems = []
    for start in FAST_MODULES:
        seen, todo, via = {start}, [start], {start: []}
        while todo:
            current = todo.pop()
            for imp in by_source.get(current, []):
                if imp.target in HEAVY:
                    chain = " -> ".join([*via[current], imp.where()])
                    problems.append(f"{start} imports {imp.target} at startup: {chain}")
                elif imp.target not in seen and imp.target.startswith(PACKAGE):
                    seen.add(imp.target)
                    via[imp.target] = [*via[current], imp.where()]
                    todo.append(imp.target)
                    # importing a.b.c runs a/__init__ and a/b/__init__ first
                    parts = imp.target.split(".")
                    for k in range(2, len(parts)):
                        parent = ".".join(parts[:k])
                        if parent not in seen:
                            seen.add(parent)
                            via[parent] = via[imp.target]
                            todo.append(parent)
    assert not problems, "\n  ".join(problems)


def test_cli_startup_loads_no_heavy_library():
    """The same, measured: importing the CLI and the registry loads none of them."""
    code = (
        "import sys, mobile_export.cli, mobile_export.targets; "
        "print(','.join(m for m in ('torch', 'executorch', 'coremltools', 'ray') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"loaded at CLI startup: {out.stdout.strip()}"
