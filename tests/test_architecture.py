"""The layers of docs/architecture.md, as import contracts (pyproject.toml [tool.importlinter]) that
`lint-imports` checks: the tree keeps them, and a back-edge injected into a copy of it breaks them."""

from __future__ import annotations

import shutil
import subprocess
import tomllib

import pytest

from harness import PROJECT_ROOT

LINT = shutil.which("lint-imports")
PACKAGES = ("kernels", "baselines", "harness", "reports")
needs_lint = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install import-linter)")


def lint(root) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def contracts() -> dict[str, dict]:
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


@needs_lint
def test_the_tree_keeps_every_contract():
    done = lint(PROJECT_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(contracts())} kept, 0 broken" in done.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


@needs_lint
@pytest.mark.parametrize("module, back_edge, contract", [
    ("harness/measure/stats.py", "import harness.core.results", "layers"),
    ("harness/core/results.py", "import harness.apps.tune", "layers"),
    ("harness/apps/tune/command.py", "import harness.apps.gate.compare", "applications never import each other"),
    ("reports/run.py", "import harness.core.runner", "reports read results only"),
    ("baselines/problem.py", "import harness.measure.stats", "layers"),
])
def test_an_injected_back_edge_breaks_its_contract(tree_copy, module, back_edge, contract):
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{back_edge}  # injected by the test\n")
    try:
        done = lint(tree_copy)
    finally:
        path.write_text(original)
    assert done.returncode != 0
    broken = [line for line in done.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), done.stdout
    assert module.removesuffix(".py").replace("/", ".") in done.stdout


def test_the_reports_contract_forbids_every_core_module_but_the_schema_and_results():
    forbidden = set(contracts()["reports"]["forbidden_modules"])
    core = {f"harness.core.{p.stem}" for p in (PROJECT_ROOT / "harness" / "core").glob("*.py") if p.stem != "__init__"}
    assert core - forbidden == {"harness.core.schema", "harness.core.results"}
    assert {"harness.cli", "harness.apps", "harness.measure", "baselines", "kernels"} <= forbidden


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_says_its_job_in_a_docstring(package):
    import ast

    missing = [str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / package).rglob("*.py")
               if ast.get_docstring(ast.parse(p.read_text())) is None and p.read_text().strip()]
    assert missing == []
