"""Shared fixtures. Add fixtures; do not rewrite others'."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: the real data sets are research-only and not part of the repo."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"{path} is absent: real-data tests need the shared research data sets beside the checkout")
    return path


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    """A valid andon .onnx file (classes ok/defect, 32x32 input): dark blobs are defects."""
    from tiny_onnx import write_tiny_model

    return write_tiny_model(tmp_path / "tiny.onnx")


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (tests/pg_server.py); ``.new_database()`` gives a URL.

    Skips only when no server binary exists (Debian: apt-get install postgresql; 'make system-deps' does).
    """
    from pg_server import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg driver is not installed: pip install -e '.[serve]'")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample data set from ``andon data synth`` (read-only: do not modify it).

    120 RGB images of 64x64: ``ok`` (60) and ``scratch``, ``crack``, ``spot``, ``stain``, ``dent`` (12 each),
    with a mask per defect image in ``.masks/<class>/<name>.png``. Generate your own with
    ``andon.datasets.synth.generate(out, count=..., size=...)`` when you need other settings.
    """
    from andon.datasets.synth import generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, count=120, size=64, seed=0)
    return out


def make_shapes_data(out: Path, per_class: int = 100, size: int = 64, seed: int = 0) -> Path:
    """A small data set a network learns from scratch in seconds: ``ok`` (noisy texture), ``scratch`` (a dark
    line) and ``spot`` (a dark disc), on backgrounds of varying brightness; every third image is a JPEG.

    The project's own synthetic set (``andon.datasets.synth``) is realistic: small defects on busy
    textures, which a pretrained backbone learns in a few epochs (tests/test_training_synth.py) but a
    network from scratch does not in the seconds a fixture may spend. This one checks that the training
    pipeline learns, not how well a backbone sees defects.
    """
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    for label in ("ok", "scratch", "spot"):
        (out / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey = rng.normal(rng.uniform(100, 170), 12, (size, size)).clip(0, 255).astype(np.uint8)
            if label == "scratch":
                a, b = rng.integers(size // 8, size - size // 8, (2, 2))
                cv2.line(grey, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), int(rng.uniform(20, 60)), 2)
            elif label == "spot":
                centre = rng.integers(size // 4, size - size // 4, 2)
                cv2.circle(
                    grey,
                    (int(centre[0]), int(centre[1])),
                    int(rng.integers(size // 16, size // 8)),
                    int(rng.uniform(20, 60)),
                    -1,
                )
            ext = "jpg" if i % 3 == 0 else "png"
            cv2.imwrite(str(out / label / f"{label}_{i:03d}.{ext}"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    return out


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make_shapes_data``: ok / scratch / spot, 100 images each, 64x64 (read-only: do not modify it)."""
    return make_shapes_data(tmp_path_factory.mktemp("shapes") / "data")


#: the settings of ``trained_run`` (command-line arguments after the data folder)
TRAINED_RUN_ARGS = [
    "--model",
    "resnet18",
    "--weights",
    "none",
    "--input-size",
    "64",
    "--epochs",
    "5",
    "--batch-size",
    "16",
    "--set",
    "train.freeze_epochs=1",
    "--set",
    "train.lr=0.001",
    "--set",
    "train.head_lr=0.001",
    "--set",
    "train.patience=0",
    "--set",
    "train.workers=2",
    "--set",
    "train.threads=2",
    "--set",
    "train.seed=0",
]


@pytest.fixture(scope="session")
def trained_run(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``andon train`` run folder (read-only: copy it before changing anything).

    resnet18 from scratch (weights none, so ImageNet mean/std in the card), 64x64 input, 5 epochs (the
    first with the backbone frozen) on ``shapes_data`` (classes ok, scratch, spot; defect classes scratch,
    spot). Holds recipe.yaml, splits.csv, metrics.csv, best.pt, last.pt, predictions_{val,test}.npz,
    report.html, report.md and plots/*.png. About 15 s on two cores.
    """
    from andon.cli import main

    runs = tmp_path_factory.mktemp("runs")
    with pytest.raises(SystemExit) as done:
        main(["train", str(shapes_data), *TRAINED_RUN_ARGS, "--name", "trained", "--runs-dir", str(runs)])
    assert done.value.code == 0, "andon train failed; run the trained_run settings by hand to see why"
    return runs / "trained"


@pytest.fixture
def plc():
    """A pymodbus server as the line's PLC (tests/line_support.py), stopped after the test."""
    from line_support import Plc

    server = Plc()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server for the module (tests/s3_support.py); its URL."""
    from s3_support import moto_server

    server = moto_server()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def no_local_aws_config(monkeypatch, tmp_path):
    """Only what the settings say: no profile, config file or endpoint override of the machine's own."""
    names = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
