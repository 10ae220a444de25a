"""Torch stays in andon.models and andon.training: the serving side installs and runs without it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TORCH_FREE = ["andon.inspect", "andon.evaluation", "andon.datasets", "andon.service", "andon.cli"]
HEAVY = ["torch", "torchvision", "albumentations"]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_importing_torch_free_package_imports_no_torch(module: str) -> None:
    code = (
        "import importlib, json, sys, pkgutil\n"
        f"pkg = importlib.import_module({module!r})\n"
        "for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if '.migrations' not in info.name:  # Alembic scripts run only inside 'alembic upgrade'\n"
        "        importlib.import_module(info.name)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"{module} imported heavy packages"


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys, json\n"
        "from andon.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_import_linter_contracts_hold() -> None:
    lint = subprocess.run([sys.executable, "-m", "importlinter.cli", "--help"], capture_output=True, text=True)
    if lint.returncode != 0:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    out = subprocess.run(["lint-imports"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
    # every contract ran: torch stays out, the packages stay layered (no inspect <-> evaluation cycle), and
    # the shift report reads service domain code, not the review station's web modules
    assert "3 kept" in out.stdout and "packages are layered" in out.stdout
    assert "reports never reach the review station's web modules KEPT" in out.stdout


def test_layers_contract_catches_an_upward_import(tmp_path) -> None:
    """The layers contract is not vacuous: a lower package importing a higher one breaks it."""
    lint = subprocess.run([sys.executable, "-m", "importlinter.cli", "--help"], capture_output=True, text=True)
    if lint.returncode != 0:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "src", tmp_path / "src")
    shutil.copy(repo / "pyproject.toml", tmp_path / "pyproject.toml")
    upward = tmp_path / "src" / "andon" / "inspect" / "decision.py"
    upward.write_text(upward.read_text() + "\nfrom andon.evaluation import metrics  # noqa: E402\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "src")}
    out = subprocess.run(["lint-imports"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode != 0
    assert "2 kept, 1 broken" in out.stdout and "andon.inspect.decision -> andon.evaluation" in out.stdout
