"""The tree's layers hold: imports run downward only, Ray stays in the process wrappers, sizes stay small.

Read from the source with `ast` (nothing is imported), so a new upward import, a Ray import in the
method, or a 500-line file fails here with its name, not in a reviewer's head. The layers, bottom up
(docs/architecture.md): the method (common/method), storage and wire formats (common/storage), the
components' plain classes (buffers, learner, actors), evaluation, the runtimes (the Ray wrappers and
deploy/), launch.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("common", "buffers", "learner", "actors", "evaluation", "deploy")
RAY_WRAPPERS = {"buffers/shard.py", "learner/actor.py", "actors/rollout_actor.py", "actors/evaluation_actor.py",
                "actors/names.py"}
SHARED = ("common.errors", "common.device")  # one-line errors and the device policy: every layer may use them


def project_modules() -> dict[str, Path]:
    """'deploy/loop.py' -> its path, for every module of the installed packages and launch.py."""
    found = {str(p.relative_to(REPO)): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {**found, "launch.py": REPO / "launch.py"}


def imports_of(path: Path) -> set[str]:
    """Every module name an import statement in `path` names (at any depth, lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer_of(relative: str) -> str:
    """The layer a module belongs to (see the module docstring)."""
    if relative.startswith("common/method/"):
        return "method"
    if relative.startswith("common/"):
        return "storage"
    if relative in RAY_WRAPPERS or relative.startswith("deploy/") or relative == "launch.py":
        return "runtime"
    if relative.startswith("evaluation/"):
        return "evaluation"
    return "components"


ALLOWED = {  # layer -> the project packages its modules may import
    "method": ("common.method",),
    "storage": ("common.method", "common.storage"),
    "components": ("common", "buffers", "learner", "actors.worker"),
    "evaluation": ("common", "buffers", "learner.builder", "learner.learning", "actors.worker", "evaluation"),
    "runtime": ("common", "buffers", "learner", "actors", "evaluation", "deploy"),
}


def project_imports(path: Path) -> set[str]:
    """The imports of `path` that name one of this project's packages."""
    return {name for name in imports_of(path) if name.split(".")[0] in PACKAGES + ("launch",)}


@pytest.mark.parametrize("relative", sorted(project_modules()))
def test_imports_run_downward_only(relative):
    allowed = ALLOWED[layer_of(relative)] + SHARED
    upward = sorted(name for name in project_imports(project_modules()[relative])
                    if not any(name == a or name.startswith(a + ".") for a in allowed))
    assert not upward, f"{relative} ({layer_of(relative)} layer) imports {upward}, above or beside its layer"


def test_ray_appears_only_where_processes_are_placed_and_wired():
    modules = project_modules()
    with_ray = {rel for rel, path in modules.items() if any(n.split(".")[0] == "ray" for n in imports_of(path))}
    assert with_ray - RAY_WRAPPERS - {rel for rel in with_ray if rel.startswith("deploy/")} == set()
    assert {"buffers/shard.py", "learner/actor.py", "actors/rollout_actor.py"} <= with_ray  # the rule is not vacuous


def test_the_method_layer_reads_and_writes_nothing():
    io_modules = {"os", "io", "gzip", "json", "pickle", "shutil", "pathlib", "msgpack", "torchvision"}
    for relative, path in project_modules().items():
        if layer_of(relative) == "method":
            used = {name.split(".")[0] for name in imports_of(path)} & io_modules
            assert not used, f"{relative} (the method) imports {sorted(used)}"


def test_no_file_over_400_lines_and_no_function_over_60():
    sources = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts]
    assert len(sources) > 50
    for path in sources:
        text = path.read_text()
        assert len(text.splitlines()) <= 400, f"{path.relative_to(REPO)} has {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.relative_to(REPO)}: {node.name} has {length} lines"


def test_the_checker_sees_an_upward_import(tmp_path):
    upward = tmp_path / "mdp.py"
    upward.write_text("import torch\nfrom deploy.loop import run_loop\n\ndef f():\n    import ray\n")
    assert project_imports(upward) == {"deploy.loop"} and "ray" in imports_of(upward)
    assert layer_of("common/method/mdp.py") == "method" and "deploy.loop" not in ALLOWED["method"]
