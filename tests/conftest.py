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
