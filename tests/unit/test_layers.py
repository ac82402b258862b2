"""Imports point down the layers (STYLE.md, issue 16): the [tool.importlinter] contracts
of pyproject.toml hold over the project's packages, every package is under them, and each
contract breaks on the kind of import it exists to stop (checked on a copy of the code
with one import added; an import may break other contracts too, through the chains it
opens)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import clean_env

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ROOT_PACKAGES = PYPROJECT["tool"]["importlinter"]["root_packages"]
CONTRACTS = {c["id"]: c["name"] for c in PYPROJECT["tool"]["importlinter"]["contracts"]}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the packages under `root` (PYTHONPATH puts them before the
    editable install), with the contracts of `root`'s pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=clean_env({"PYTHONPATH": str(root)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_project_keeps_its_layers() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


def test_every_package_is_under_the_contracts_and_mypy() -> None:
    """A new top-level package must join the layers (and the type check) to be used."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert set(ROOT_PACKAGES) == packages
    assert set(PYPROJECT["tool"]["mypy"]["packages"]) >= packages


@pytest.fixture(scope="module")
def code_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's packages and pyproject.toml, copied; the copy keeps the contracts."""
    root = tmp_path_factory.mktemp("layers")
    for package in ROOT_PACKAGES:
        shutil.copytree(
            ROOT / package,
            root / package,
            ignore=shutil.ignore_patterns("__pycache__", "static", "*.sql"),
        )
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    assert lint_imports(root).returncode == 0
    return root


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        pytest.param(
            "sinks/writer.py",
            "import streams.processors.base",
            "sinks",
            id="sinks importing streams",
        ),
        pytest.param(
            "api/deps.py",
            "import ingest.validate",
            "gateway-api",
            id="api importing ingest",
        ),
        pytest.param(
            "ingest/app.py",
            "import streams.metrics",
            "services-worker",
            id="the gateway importing the worker",
        ),
        pytest.param(
            "streams/app.py",
            "import api.app",
            "worker-services",
            id="the worker importing the API",
        ),
        pytest.param(
            "streams/processors/events.py",
            "import common.settings",
            "processors",
            id="a processor importing Settings",
        ),
        pytest.param(
            "streams/processors/base.py",
            "import sinks.writer",
            "layers",
            id="a processor importing a sink",
        ),
        pytest.param(
            "common/qoe.py",
            "import quip.cli",
            "layers",
            id="the bottom importing the CLI",
        ),
    ],
)
def test_a_contract_breaks_on_an_import_against_it(
    code_copy: Path, module: str, line: str, contract: str
) -> None:
    source = code_copy / module
    original = source.read_text()
    source.write_text(f"{original}\n{line}  # noqa: E402\n")
    try:
        result = lint_imports(code_copy)
    finally:
        source.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{CONTRACTS[contract]} BROKEN" in result.stdout
