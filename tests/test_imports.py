"""The package's import graph: no cycles, and every import points down the layers.

models <- data <- calibration <- synth <- quant <- export <- run <- cli, with the base modules
(errors, device, progress, config, files, modes, amp) below everything. Imports inside functions
count too: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dfq"
LAYERS = {
    "errors": 0,
    "device": 0,
    "progress": 0,
    "config": 0,
    "files": 0,
    "modes": 0,
    "amp": 0,
    "": 1,
    "models": 1,
    "data": 2,
    "evaluate": 2,
    "calibration": 3,
    "synth": 4,
    "quant": 5,
    "export": 6,
    "run": 7,
    "cli": 8,
    "__main__": 9,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["dfq", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The dfq modules `path` imports, anywhere in the file."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dfq")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            if not base.startswith("dfq"):
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_point_down_the_layers():
    wrong = [f"{m} -> {n}" for m, deps in _graph().items() for n in deps if _layer(n) > _layer(m)]
    assert not wrong, "imports against the layering: " + "; ".join(sorted(wrong))


def test_the_graph_sees_in_function_imports(tmp_path):
    """The checker itself: an import inside a function is found."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from dfq.quant import pipeline\n")
    assert _imports(path, "dfq.m", {"dfq.quant": path, "dfq.quant.pipeline": path}) == {
        "dfq.quant",
        "dfq.quant.pipeline",
    }
