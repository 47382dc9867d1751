"""The package's layering (ARCHITECTURE.md), checked from the source: imports point down, and only ops.py writes a
connection's state (only surgery.py calls the methods that do, from outside ops.py)."""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "hf_penal"

# ARCHITECTURE.md's table, top to bottom: one row per rank. A module may import modules of its own row or of rows
# below it, never above. A name ending in ".*" is a package with all its modules.
LAYERS = [
    ("entry", ["hf_penal", "hf_penal.cli"]),
    ("entry", ["hf_penal.integrations.*"]),
    ("entry", ["hf_penal.trainer"]),
    ("entry", ["hf_penal.calibration", "hf_penal.diagnostics", "hf_penal.plot"]),
    ("door", ["hf_penal.surgery"]),
    ("door", ["hf_penal.persistence"]),
    ("door", ["hf_penal.recompute", "hf_penal.hooks"]),
    ("knowledge", ["hf_penal.discovery.*"]),
    ("knowledge", ["hf_penal.architectures"]),
    ("bottom", ["hf_penal.config"]),
    ("bottom", ["hf_penal.ops"]),
    ("bottom", ["hf_penal.modes"]),
    ("bottom", ["hf_penal.depth", "hf_penal.schedules"]),
]

#: PenalConnection's state-changing methods (ops.py); outside ops.py only surgery.py calls them on a connection
STATE_METHODS = {"set_tau", "set_factor", "set_gain", "recalibrate", "set_calibrated", "finish_calibration",
                 "track_efficiency", "read_stats"}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _rank(module: str) -> int:
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name or (name.endswith(".*") and (module + ".").startswith(name[:-1])):
                return rank
    raise AssertionError(f"{module} is not in the layer table: add it to ARCHITECTURE.md and to LAYERS here")


def _imports(module: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """hf_penal modules that `module` imports (module level or inside functions); ``from . import name`` counts as
    the module `name` when there is one, else as the package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hf_penal"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "hf_penal":
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found - {module}


def test_every_module_imports_only_its_own_layer_row_or_below():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        for dep in _imports(module, path, set(modules)):
            assert dep in modules, f"{module} imports {dep}, which is not a module of the package"
            if _rank(dep) < _rank(module):
                upward.append(f"{module} ({LAYERS[_rank(module)][0]}) imports {dep} ({LAYERS[_rank(dep)][0]})")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_layer_table_matches_architecture_md():
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    for _, names in LAYERS:
        for name in names:
            if name == "hf_penal":
                continue
            short = name.removeprefix("hf_penal.").removesuffix(".*")
            shown = f"`{short}/`" if name.endswith(".*") else f"`{short}.py`"
            assert shown in text, f"{shown} is not in ARCHITECTURE.md's layer table"


def _buffers() -> set[str]:
    """Names of PenalConnection's buffers, read from its `register_buffer` calls in ops.py."""
    tree = ast.parse((PACKAGE / "ops.py").read_text())
    return {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "register_buffer"
            and isinstance(node.args[0], ast.Constant)}


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m != "hf_penal.ops"))
def test_connection_state_is_written_only_in_ops(module):
    """No in-place tensor method (``fill_``, ``copy_``, ``add_``, ...) on, and no assignment into (``[...] =``,
    ``.data =``), an attribute named after a connection buffer outside ops.py; the state-changing methods are called
    on connections only from surgery.py (elsewhere only as ``surgery.<function>``)."""
    buffers = _buffers()
    assert {"tau", "factor", "gain", "stats"} <= buffers
    tree = ast.parse(_modules()[module].read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if node.func.attr.endswith("_") and not node.func.attr.startswith("_") \
                    and isinstance(owner, ast.Attribute) and owner.attr in buffers:
                bad.append(f"line {node.lineno}: .{owner.attr}.{node.func.attr}(...)")
            if node.func.attr in STATE_METHODS and module != "hf_penal.surgery" \
                    and not (isinstance(owner, ast.Name) and owner.id == "surgery"):
                bad.append(f"line {node.lineno}: .{node.func.attr}(...) on a connection")
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for t in targets:  # conn.tau[...] = v, conn.tau.data = v
            inner = t.value if isinstance(t, ast.Subscript) or (isinstance(t, ast.Attribute) and t.attr == "data") \
                else None
            if isinstance(inner, ast.Attribute) and inner.attr in buffers:
                bad.append(f"line {node.lineno}: assignment into .{inner.attr}")
    assert not bad, f"{module} writes a connection's state outside ops.py: {bad}"
