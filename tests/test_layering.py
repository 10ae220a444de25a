"""Torch stays in andon.models and andon.training: the serving side installs and runs without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert "4 kept" in out.stdout and "packages are layered" in out.stdout
    assert "the inspection path and the service run without OpenCV and matplotlib KEPT" in out.stdout
    assert "reports never reach the review station's web modules KEPT" in out.stdout


def test_layers_contract_catches_an_upward_import(tmp_path) -> None:
    """The layers contract is not vacuous: a lower package importing a higher one breaks it."""
    lint = subprocess.run([sys.executable, "-m", "importlinter.cli", "--help"], capture_output=True, text=True)
    if lint.returncode != 0:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    import shutil

    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "src", tmp_path / "src")
    shutil.copy(repo / "pyproject.toml", tmp_path / "pyproject.toml")
    upward = tmp_path / "src" / "andon" / "inspect" / "decision.py"
    upward.write_text(upward.read_text() + "\nfrom andon.evaluation import metrics  # noqa: E402\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    out = subprocess.run(["lint-imports"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode != 0
    assert "3 kept, 1 broken" in out.stdout and "andon.inspect.decision -> andon.evaluation" in out.stdout


#: what the [serve] extra leaves out (pyproject.toml): OpenCV and matplotlib come with [data]
NOT_IN_SERVE = ["cv2", "matplotlib", *HEAVY]

_BLOCK = (
    "import sys\n"
    "class _Blocked:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.split('.')[0] in {NOT_IN_SERVE!r}:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, _Blocked())\n"
)


def test_the_service_runs_without_opencv_and_matplotlib(tmp_path) -> None:
    """What the service image installs ([serve]) is enough: every module of the inspection path and the service
    imports, and a frame goes through the API (decode, resize, infer, store, heatmap overlay, the review
    station's heat layer and dashboard charts) with OpenCV, matplotlib and torch unimportable."""
    code = _BLOCK + (
        "import importlib, io, json, pkgutil\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "for name in ('andon.inspect', 'andon.service', 'andon.reports'):\n"
        "    pkg = importlib.import_module(name)\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, name + '.'):\n"
        "        # Alembic scripts run inside 'alembic upgrade'; the review export groups frames with andon.datasets\n"
        "        if '.migrations' not in info.name and info.name != 'andon.service.review.export':\n"
        "            importlib.import_module(info.name)\n"
        "from fastapi.testclient import TestClient\n"
        "from tiny_onnx import write_tiny_model\n"
        "from andon.service.app import create_app\n"
        "from andon.service.settings import Settings\n"
        f"root = {str(tmp_path)!r}\n"
        "model = write_tiny_model(root + '/tiny.onnx')\n"
        "settings = Settings.load(data_dir=root + '/data', model=model, min_free_disk_mb=0, pass_sample_rate=0.0)\n"
        "frame = np.full((48, 64, 3), 60, np.uint8)\n"
        "buf = io.BytesIO(); Image.fromarray(frame).save(buf, format='JPEG', quality=90)\n"
        "with TestClient(create_app(settings), raise_server_exceptions=True) as c:\n"
        "    r = c.post('/v1/inspections', content=buf.getvalue(), params={'camera_id': 'cam1', 'line_id': 'L1'},\n"
        "               headers={'content-type': 'image/jpeg'})\n"
        "    assert r.status_code == 201, r.text\n"
        "    body = r.json()\n"
        "    overlay = c.get(f\"/v1/inspections/{body['id']}/heatmap\")\n"
        "    assert overlay.status_code == 200, overlay.text\n"
        "    picture = Image.open(io.BytesIO(overlay.content))\n"
        f"    loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({NOT_IN_SERVE!r}))\n"
        "    print(json.dumps({'decision': body['decision'], 'stored': body['image_stored'],\n"
        "                      'overlay': [picture.format, picture.size[0], picture.size[1]], 'loaded': loaded}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # tests/tiny_onnx.py
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["decision"] in ("reject", "review") and result["stored"]  # a dark frame: the tiny model flags it
    assert result["overlay"] == ["PNG", 64, 48]  # drawn over the frame, at its size
    assert result["loaded"] == []


def test_a_command_whose_extra_is_missing_says_which_to_install(tmp_path) -> None:
    """andon data synth draws with OpenCV ([data]); without it: one line naming the extra, exit 2."""
    code = _BLOCK + (f"from andon.cli import main\nmain(['data', 'synth', {str(tmp_path / 'sample')!r}])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: this command needs cv2, which is not installed: pip install 'andon[data]'"
    ]
    assert "Traceback" not in out.stderr
