"""The house rules of the package, checked: rooms of a readable size, dependencies that
point down, and a library that leaves the process policy to the process."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "layerwise"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(("layerwise", *p.relative_to(PACKAGE).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = p
    return out


def _imports() -> dict[str, set[str]]:
    """module -> the layerwise modules it imports (at the top or inside a function); a
    package's own submodules (its re-exports) do not count as its dependencies."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                # `from layerwise import _devices` needs the module, not the package's face
                deps |= subs if subs and node.module == "layerwise" else {node.module} | subs
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name and not d.startswith(name + ".")}
    return graph


def test_no_module_is_over_400_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules().values()}
    assert max(sizes.values()) <= 400, {k: v for k, v in sizes.items() if v > 400}


# The floors, from the ground up: what each part of the package may import. A part is
# a top-level module or a subpackage; "layerwise" is the public face (lazy re-exports of
# everything) and "__main__" the command's entry point, both above all.
BELOW = {
    "_checks": set(),
    "_devices": set(),
    "_version": set(),
    "_files": {"_checks"},
    "recipe_rules": set(),
    "config": {"_checks", "recipe_rules"},
    "runtime": {"_checks"},
    "units": {"_checks", "_devices"},
    "stack": {"_checks", "_devices", "units"},
    "data": {"_checks", "_devices", "_files"},
    "reporting": {"_checks", "data"},
    "training": {"_checks", "_devices", "config", "runtime", "units", "stack", "data", "reporting"},
    "storage": {"_checks", "_files", "_version", "config", "units", "stack", "data", "reporting"},
    "advice": {"_checks", "_files", "config", "data"},
    "use": {"_checks", "_files", "units", "stack", "data", "reporting"},
    "export": {"_checks", "_files", "units", "stack", "storage"},
}
LIBRARY = set(BELOW) | {"jobs"}
BELOW["jobs"] = set(BELOW) - {"jobs"}
BELOW["lab"] = set(LIBRARY)  # the lab's cells run over the library (the averaging cells over the jobs)
BELOW["sklearn"] = LIBRARY - {"jobs"}
BELOW["api"] = set(LIBRARY)  # the public face's functions: over the library and the jobs
BELOW["cli"] = LIBRARY | {"api", "lab", "sklearn", "layerwise"}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "layerwise"


def test_dependencies_point_down():
    graph = _imports()
    assert len(graph) > 20 and graph["layerwise.jobs.training"], graph  # the walk saw the package
    # no cycles: every module can be placed below all it imports
    placed, pending = set(), dict(graph)
    while pending:
        ready = [m for m, deps in pending.items() if deps <= placed]
        assert ready, f"import cycle among {sorted(pending)}"
        placed |= set(ready)
        for m in ready:
            del pending[m]
    assert [m for m, deps in graph.items() if "layerwise.cli" in deps] == ["layerwise.__main__"]
    parts = {_part(m) for m in graph} - {"layerwise", "__main__"}
    assert parts == set(BELOW), f"parts without a floor in BELOW: {parts ^ set(BELOW)}"
    crossed = {
        m: sorted(d for d in deps if _part(d) != _part(m) and _part(d) not in BELOW[_part(m)])
        for m, deps in graph.items()
        if _part(m) in BELOW
    }
    assert not {m: d for m, d in crossed.items() if d}, {m: d for m, d in crossed.items() if d}


def test_units_know_nothing_of_recipes():
    """A unit is built from plain arguments: no recipe field name reaches units/."""
    recipe = {"cfg.", "RunConfig", "PretrainConfig", "FinetuneConfig", "GuardConfig"}
    users = {
        str(p.relative_to(PACKAGE)): sorted(w for w in recipe if w in p.read_text())
        for p in (PACKAGE / "units").glob("*.py")
    }
    assert not {k: v for k, v in users.items() if v}, users


@pytest.mark.parametrize("call", ["set_num_threads", "set_num_interop_threads", "putenv"])
def test_only_the_runtime_policy_sets_threads_or_the_environment(call):
    users = sorted(
        str(p.relative_to(PACKAGE))
        for p in _modules().values()
        if f"{call}(" in p.read_text().replace("``torch.set_num_threads``", "")
    )
    assert users == (["runtime.py"] if call == "set_num_threads" else []), users


def test_importing_the_package_and_the_command_changes_no_environment_variable():
    code = (
        "import os, torch; before = dict(os.environ); import layerwise, layerwise.cli, layerwise.jobs; "
        "print(sorted(set(os.environ.items()) ^ set(before.items())))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
