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
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name and not d.startswith(name + ".")}
    return graph


def test_no_module_is_over_400_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules().values()}
    assert max(sizes.values()) <= 400, {k: v for k, v in sizes.items() if v > 400}


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
    jobs = {m for m in graph if m.startswith("layerwise.jobs")}
    above = {m for m in graph if m.startswith("layerwise.cli")} | {"layerwise.__main__"}  # the command
    below = {m: deps & jobs for m, deps in graph.items() if m not in jobs | above}
    assert not {m: d for m, d in below.items() if d}, below
    assert "layerwise.jobs" not in str(_imports()["layerwise.probe"])


@pytest.mark.parametrize("call", ["set_num_threads", "set_num_interop_threads", "putenv"])
def test_only_the_runtime_policy_sets_threads_or_the_environment(call):
    users = sorted(str(p.relative_to(PACKAGE)) for p in _modules().values()
                   if f"{call}(" in p.read_text().replace("``torch.set_num_threads``", ""))
    assert users == (["runtime.py"] if call == "set_num_threads" else []), users


def test_importing_the_package_and_the_command_changes_no_environment_variable():
    code = ("import os, torch; before = dict(os.environ); import layerwise, layerwise.cli, layerwise.jobs; "
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
