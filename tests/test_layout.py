"""The shape of the house: which module may import which, no import cycles, no long functions without steps.

Imports are read from the source (every `import` statement, also those inside functions), so a lazy import counts.
"""

import ast
import re
from pathlib import Path

import discadapt

ROOT = Path(discadapt.__file__).parent
MAX_LINES = 80  # a longer function numbers its steps (`# 1.` comments or a numbered list in its docstring)
_STEPS = re.compile(r"^\s*(#\s*)?(\d+)\.\s", re.MULTILINE)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The discadapt modules `name` imports, resolved to modules that exist (a `from x import y` of a submodule y
    counts as importing x.y)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a function or class: its module
                target = target.rpartition(".")[0]
            if target.startswith("discadapt") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_nothing_outside_worlds_imports_a_world():
    leaks = {
        name: sorted(t for t in targets if t.startswith("discadapt.worlds"))
        for name, targets in _graph().items()
        if not name.startswith("discadapt.worlds")
    }
    assert {k: v for k, v in leaks.items() if v} == {}


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is how packages re-export; a cycle needs a real edge back
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    real = [c for c in cycles if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(c, c[1:]))]
    assert real == []


def test_long_functions_number_their_steps():
    long = []
    for name, path in _modules().items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                body = "\n".join(lines[node.lineno - 1 : node.end_lineno])
                if length > MAX_LINES and len(set(_STEPS.findall(body))) < 2:
                    long.append(f"{name}.{node.name} ({length} lines)")
    assert long == []
