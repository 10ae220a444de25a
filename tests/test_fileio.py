"""andon.fileio.folder_atomic: a folder appears complete or not at all, and replaces an old one only when done."""

from __future__ import annotations

from pathlib import Path

import pytest

from andon.errors import DatasetError
from andon.fileio import folder_atomic


def test_the_folder_appears_only_when_the_block_ends(tmp_path: Path) -> None:
    out = tmp_path / "set"
    with folder_atomic(out) as staging:
        (staging / "a.txt").write_text("a")
        assert not out.exists() and staging.parent == tmp_path
    assert (out / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_a_failure_leaves_the_old_folder_and_no_staging(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), folder_atomic(out, overwrite=True) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_non_empty_or_a_file_is_refused_with_the_callers_error(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="is not empty; choose a new folder or overwrite it"):
        with folder_atomic(out, error=DatasetError):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        with folder_atomic(tmp_path / "file", overwrite=True):
            pass
    with folder_atomic(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "set"]
