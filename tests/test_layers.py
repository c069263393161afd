"""The package's layers import only downwards: defaults, rows -> data -> models -> parallel ->
losses -> mining -> methods -> training -> callbacks -> eval -> export -> pretrain -> cli
(the binaries). Every ``import`` statement counts, including the ones inside functions:
an import deferred to call time is still a dependency (and a hidden circle). Within a
layer, no two modules import each other, directly or through others."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tf_instcls"

# Lowest first.
LAYERS = (
    ("defaults", "rows"),
    ("data",),
    ("models",),
    ("parallel",),
    ("losses",),
    ("mining",),  # W's rows normalised by the loss's own op
    ("methods",),
    ("training",),
    ("callbacks",),
    ("eval",),
    ("export",),
    ("pretrain",),
    ("cli",),
)
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _unit(path: pathlib.Path) -> str:
    """The layer a module belongs to: its subpackage, or a top-level module's name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported_units(tree: ast.AST):
    """(line, layer name) for every tf_instcls import in a module's syntax tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "tf_instcls":
                continue
            if len(parts) > 1:
                yield node.lineno, parts[1]
            else:  # from tf_instcls import data, models
                for alias in node.names:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "tf_instcls" and len(parts) > 1:
                    yield node.lineno, parts[1]


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
                  or p.parent != PACKAGE)


def test_every_module_belongs_to_a_layer():
    units = {_unit(p) for p in _modules()}
    assert units <= set(LEVEL), f"modules outside the layer list: {units - set(LEVEL)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_its_own_layer_or_below(path):
    own = _unit(path)
    wrong = [(line, unit) for line, unit in _imported_units(ast.parse(path.read_text()))
             if unit in LEVEL and unit != own and LEVEL[unit] >= LEVEL[own]]
    assert not wrong, (f"{path.relative_to(PACKAGE)} ({own}, layer {LEVEL[own]}) imports "
                       + ", ".join(f"{u} (layer {LEVEL[u]}) at line {ln}" for ln, u in wrong))


def test_the_check_finds_an_upward_import(tmp_path):
    """The check can fail: an upward import inside a function is found."""
    tree = ast.parse("def f():\n    from tf_instcls.eval import knn\n")
    assert [(2, "eval")] == list(_imported_units(tree))
    assert LEVEL["eval"] > LEVEL["callbacks"]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict:
    """{module: the tf_instcls modules it imports} (``from tf_instcls.x import y`` counts
    as x.y when x/y.py exists, else as x)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("tf_instcls"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
        # a package's __init__ re-exports its modules; importing the package is not a
        # dependency of those modules on each other
        graph[name] = {e for e in edges if e != name and e in modules
                       and not (path.name == "__init__.py" and e.startswith(name + "."))}
    return graph


def _cycle(graph: dict) -> list | None:
    """One import cycle among modules that are not packages' __init__, or None."""
    packages = {n for n in graph if (PACKAGE.parent / n.replace(".", "/") / "__init__.py")
                .exists()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in packages:
                continue
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(set(graph) - packages):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_two_modules_import_each_other():
    cycle = _cycle(_module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == [
        "a.x", "a.y", "a.z", "a.x"]
    assert _cycle({"a.x": {"a.y"}, "a.y": set()}) is None
