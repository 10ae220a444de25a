"""Class folders, CSV manifests and fingerprints: what is picked up, what is skipped, what errors say."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from andon.datasets import Dataset, Sample, load_dataset, load_folder, load_manifest, write_manifest
from andon.errors import DatasetError


def _png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((size, size, 3), value, np.uint8)
    image[0, 0] = (value * 7 + 1) % 256  # distinct bytes per value
    ok, data = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _png(root / "ok" / "a.png", 1)
    _png(root / "ok" / "sub" / "b.PNG", 2)  # nested, upper-case extension
    _png(root / "crack" / "c.png", 3)
    _png(root / "crack" / ".hidden.png", 4)  # hidden file
    _png(root / "crack" / ".thumbs" / "d.png", 5)  # hidden folder
    _png(root / "crack" / "_rejected" / "e.png", 6)  # parked images
    _png(root / "_unsorted" / "f.png", 7)  # parked class
    _png(root / ".masks" / "crack" / "c.png", 8)
    _png(root / "stray.png", 9)  # no class folder
    (root / "ok" / "notes.txt").write_text("not an image")
    return root


def test_folder_picks_class_images_and_skips_hidden_parked_and_stray(folder: Path) -> None:
    ds = load_folder(folder)
    names = sorted(ds.key(s) for s in ds.samples)
    assert names == ["crack/c.png", "ok/a.png", "ok/sub/b.PNG"]
    assert ds.classes == ["crack", "ok"]
    assert ds.class_index == {"crack": 0, "ok": 1}
    assert ds.counts() == {"crack": 1, "ok": 2}
    assert all(s.path.is_absolute() and s.split is None and s.group is None for s in ds.samples)
    assert ds.root == folder.resolve()


def test_folder_order_is_deterministic_and_extensions_selectable(folder: Path) -> None:
    assert load_folder(folder).samples == load_folder(folder).samples
    only_upper = load_folder(folder, extensions=["PNG"])  # case-insensitive, dot optional
    assert len(only_upper) == 3
    assert len(load_folder(folder.parent / "data", extensions=(".jpg",), allow_empty=True)) == 0


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_folder(tmp_path / "missing")
    _png(tmp_path / "flat" / "x.png")
    with pytest.raises(DatasetError, match=r"no images in .*found 1 image\(s\) directly"):
        load_folder(tmp_path / "flat")
    (tmp_path / "empty" / "ok").mkdir(parents=True)
    with pytest.raises(DatasetError, match="class folder.*ok hold no image"):
        load_folder(tmp_path / "empty")
    assert len(load_folder(tmp_path / "empty", allow_empty=True)) == 0
    with pytest.raises(DatasetError, match="not a folder"):
        load_folder(tmp_path / "flat" / "x.png")


def _manifest(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_resolves_relative_paths_and_reads_split_and_group(folder: Path, tmp_path: Path) -> None:
    outside = _png(tmp_path / "elsewhere" / "z.png", 40)
    csv = _manifest(
        folder / "m.csv",
        "\ufeffpath,label,split,group\n"  # BOM from spreadsheet exports
        "ok/a.png,ok,train,p1\n"
        "\n"
        f"{outside},defect,test,\n"
        " crack/c.png , defect ,,p2\n",
    )
    ds = load_manifest(csv)
    assert ds.root == folder.resolve()
    assert [s.label for s in ds.samples] == ["ok", "defect", "defect"]
    assert ds.samples[0] == Sample((folder / "ok" / "a.png").resolve(), "ok", "train", "p1")
    assert ds.samples[1].path == outside and ds.samples[1].split == "test" and ds.samples[1].group is None
    assert ds.samples[2].split is None and ds.samples[2].group == "p2"
    assert load_dataset(csv).samples == ds.samples
    assert load_dataset(folder).classes == ["crack", "ok"]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("path,lable\nok/a.png,ok\n", r"m\.csv line 1: unknown column\(s\) 'lable'.*path,label\[,split\]\[,group\]"),
        ("path,split\nok/a.png,train\n", r"line 1: the header lacks label"),
        ("ok/a.png,ok\n", r"line 1: unknown column\(s\) 'ok/a.png', 'ok'"),
        ("path,label\nok/a.png,ok\nok/sub/b.PNG\n", r"line 3: 1 value\(s\) but the header has 2"),
        (
            "path,label,split\nok/a.png,ok,train\ncrack/c.png,crack,valid\n",
            r"line 3: split 'valid' is not one of train, val, test",
        ),
        ("path,label\nok/a.png,\n", r"line 2: the label of 'ok/a.png' is empty"),
        ("path,label\n,ok\n", r"line 2: the path is empty"),
        (
            "path,label\nok/a.png,ok\nok/nope.png,ok\nok/gone.png,ok\n",
            r"line 3: image 'ok/nope.png' does not exist.*1 more missing, on line\(s\) 4",
        ),
        (
            "path,label\nok/a.png,ok\ncrack/c.png,crack\nok/a.png,crack\n",
            r"line 4: 'ok/a.png' is listed again \(first on line 2\)",
        ),
        ("path,label\n", r"has a header but no rows"),
        ("\n\n", r"is empty; its first line must be the header"),
        ("path,label,label\nok/a.png,ok,ok\n", r"line 1: column\(s\) label appear twice"),
    ],
)
def test_manifest_errors_name_the_line(folder: Path, text: str, pattern: str) -> None:
    with pytest.raises(DatasetError, match=pattern):
        load_manifest(_manifest(folder / "m.csv", text))


def test_manifest_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="manifest .* does not exist"):
        load_manifest(tmp_path / "none.csv")
    (tmp_path / "latin1.csv").write_bytes(b"path,label\n\xe9t\xe9.png,ok\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_manifest(tmp_path / "latin1.csv")
    with pytest.raises(DatasetError, match="neither a folder nor a .csv"):
        load_dataset(_png(tmp_path / "x.png"))
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nothing")


def test_write_manifest_round_trips_atomically(folder: Path, tmp_path: Path) -> None:
    outside = _png(tmp_path / "elsewhere" / "z.png", 41)
    ds = load_folder(folder)
    ds = ds.with_samples([*ds.samples, Sample(outside, "ok", "test", "g1")])
    target = folder / "manifests" / "all.csv"
    write_manifest(ds, target)
    lines = target.read_text().splitlines()
    assert lines[0] == "path,label,split,group"
    assert lines[1] == f"{(folder / 'crack' / 'c.png').resolve().as_posix()},crack,,"  # outside: absolute
    back = load_manifest(target)
    assert [(s.path, s.label, s.split, s.group) for s in back.samples] == [
        (s.path, s.label, s.split, s.group) for s in ds.samples
    ]
    assert [p.name for p in target.parent.iterdir()] == ["all.csv"]  # no temp file left behind

    inside = folder / "inside.csv"
    write_manifest(load_folder(folder), inside)
    text = inside.read_text().splitlines()
    assert text[0] == "path,label"  # no split or group column when none is set
    assert "ok/sub/b.PNG,ok" in text  # relative, POSIX separators
    with pytest.raises(DatasetError, match="must end in .csv"):
        write_manifest(ds, folder / "x.txt")


def test_fingerprint_follows_contents_and_labels_not_names_or_order(tmp_path: Path) -> None:
    a = load_folder(_png(_png(tmp_path / "a" / "ok" / "1.png", 1).parent.parent / "bad" / "2.png", 2).parent.parent)
    b_root = tmp_path / "b"
    _png(b_root / "ok" / "renamed.png", 1)
    _png(b_root / "bad" / "other.png", 2)
    b = load_folder(b_root)
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64
    reordered = Dataset(samples=tuple(reversed(b.samples)), root=b.root)
    assert reordered.fingerprint() == b.fingerprint()
    relabelled = b.remap({"bad": "defect"})
    assert relabelled.fingerprint() != b.fingerprint()
    _png(b_root / "ok" / "renamed.png", 3)  # one changed pixel value
    assert load_folder(b_root).fingerprint() != a.fingerprint()
    (b_root / "ok" / "renamed.png").unlink()
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset(samples=b.samples, root=b.root).fingerprint()
