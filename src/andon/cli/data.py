"""``andon data``: check a data set before training on it, write a split manifest, generate sample data.

Heavy imports (numpy, OpenCV) happen inside the commands so that ``andon --help`` stays instant.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

_DEFECTS = "scratch,crack,spot,stain,dent"
_SURFACES = "brushed,cast,woven,painted"

PATH_HELP = "Class-folder root (DIR/<class>/*.png) or a CSV manifest (path,label[,split][,group])."
REMAP_HELP = "Rename classes, e.g. 'crack=defect,blowhole=defect' or '*=defect,ok=ok' (exact names win over globs)."
GROUP_HELP = (
    "Keep groups in one split: 'manifest' (the group column), 'near-duplicates' (look-alike images, "
    "found from the pixels) or a regex on the file name whose first group names the group, "
    "e.g. 'part(\\d+)_'."
)


def register(app: typer.Typer) -> None:
    data = typer.Typer(
        name="data",
        help="Data sets: check them, split them, generate the sample data set or example phone photos.",
        no_args_is_help=True,
    )
    data.command("check")(check)
    data.command("split")(split)
    data.command("synth")(synth)
    data.command("photos")(photos)
    app.add_typer(data, name="data")


def check(
    path: Path = typer.Argument(..., help=PATH_HELP, show_default=False),
    remap: str | None = typer.Option(None, "--remap", help=REMAP_HELP),
    group_by: str | None = typer.Option(None, "--group-by", help=GROUP_HELP),
    val: float = typer.Option(0.15, "--val", help="Validation fraction (for images without a split)."),
    test: float = typer.Option(0.15, "--test", help="Test fraction (for images without a split)."),
    seed: int = typer.Option(0, "--seed", help="Split seed: the same as training uses."),
    near_distance: int = typer.Option(
        10,
        "--near-duplicate-distance",
        min=0,
        max=32,
        help="Perceptual-hash bits (of 64) within which two images are near-duplicates.",
    ),
    no_near: bool = typer.Option(False, "--no-near-duplicates", help="Skip the near-duplicate search."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON instead of tables."),
) -> None:
    """Count classes, sizes and modes; find unreadable files, duplicates and split leaks.

    Splits are assigned as training assigns them (same fractions and seed), so near-duplicates that would
    land in train and test are found before they inflate the test score. Exit status: 0 fine (warnings
    allowed), 1 a problem that would spoil training, 2 unusable input.
    """
    import json

    from rich.console import Console

    from andon.datasets import assign_splits, check_dataset
    from andon.datasets.dataset import Dataset
    from andon.datasets.folder import scan_folder
    from andon.datasets.manifest import load_dataset

    scan = None
    if path.is_dir():
        scan = scan_folder(path)
        ds = Dataset(samples=scan.samples, root=path.expanduser().resolve())
    else:
        ds = load_dataset(path)
    ds = _remapped(ds, remap)
    ds = assign_splits(ds, val=val, test=test, seed=seed, group_by=group_by)
    report = check_dataset(
        ds, near_duplicate_distance=None if no_near else near_distance, progress=not as_json, folder_scan=scan
    )
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        Console().print(report)
    raise typer.Exit(code=0 if report.ok else 1)


def split(
    path: Path = typer.Argument(..., help=PATH_HELP, show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest to write (.csv).", show_default=False),
    val: float = typer.Option(0.15, "--val", help="Validation fraction."),
    test: float = typer.Option(0.15, "--test", help="Test fraction."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    group_by: str | None = typer.Option(None, "--group-by", help=GROUP_HELP),
    remap: str | None = typer.Option(None, "--remap", help=REMAP_HELP),
) -> None:
    """Write a manifest with a train/val/test split per image (stable when images are added).

    Splits already in an input manifest are kept; new images get hash-based splits, stratified by class.
    """
    from rich.console import Console

    from andon.datasets import assign_splits, load_dataset, write_manifest

    ds = _remapped(load_dataset(path), remap)
    ds = assign_splits(ds, val=val, test=test, seed=seed, group_by=group_by)
    write_manifest(ds, out)
    console = Console()
    console.print(_split_table(ds))
    console.print(f"wrote {len(ds)} images to {out}")


def synth(
    out: Path = typer.Argument(
        ..., help="Folder to create (OUT/<class>/*.png, masks in OUT/.masks).", show_default=False
    ),
    count: int = typer.Option(600, "--count", "-n", help="Number of images."),
    size: str = typer.Option("128", "--size", help="Image size: H or HxW pixels."),
    defects: str = typer.Option(_DEFECTS, "--defects", help="Defect classes to generate."),
    surfaces: str = typer.Option(_SURFACES, "--surfaces", help="Surfaces to draw on."),
    ok_fraction: float = typer.Option(0.5, "--ok-fraction", help="Share of good parts (class 'ok')."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    image_format: str = typer.Option("png", "--format", help="png or jpg."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it is not empty."),
) -> None:
    """Generate the license-free sample data set: industrial surfaces with scratches, cracks, spots, stains, dents."""
    from andon.datasets.synth import SynthConfig, generate, parse_size

    config = SynthConfig(
        count=count,
        size=parse_size(size),
        defects=defects,
        surfaces=surfaces,
        ok_fraction=ok_fraction,
        seed=seed,
        image_format=image_format,
    )
    started = time.perf_counter()
    ds = generate(out, config, progress=True, overwrite=force)
    counts = ", ".join(f"{k} {v}" for k, v in ds.counts().items())
    typer.echo(
        f"wrote {len(ds)} images of {config.size[0]}x{config.size[1]} to {out} in "
        f"{time.perf_counter() - started:.1f} s ({counts}); masks in {out / '.masks'}"
    )


def photos(
    out: Path = typer.Argument(
        ..., help="Folder to create (OUT/ok, OUT/scratch, OUT/dent with IMG_0001.jpg ...).", show_default=False
    ),
    count: int = typer.Option(120, "--count", "-n", help="Number of photos."),
    size: str = typer.Option("1600x1200", "--size", help="Photo size: WxH pixels."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    ok_fraction: float = typer.Option(0.5, "--ok-fraction", help="Share of good parts (folder 'ok')."),
    bench: str = typer.Option("rubber", "--bench", help="What the parts lie on: rubber, wood or mat."),
    mistakes: bool = typer.Option(
        True,
        "--mistakes/--no-mistakes",
        help="Keep what a real phone folder has, for 'andon data check' to find: a copied file, a truncated "
        "file and two bursts of near-identical shots.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it is not empty."),
) -> None:
    """Generate example phone photos of good and bad parts (a flange on a bench), in a folder per kind.

    Hand-held shots: position, rotation, size, tilt, light, exposure, noise and focus vary; a defect
    (scratch or dent) is on the part only. Photos are numbered in shooting order, shuffled across the folders.
    """
    from andon.datasets.synth.photos import PhotosConfig, generate_photos

    config = PhotosConfig(count=count, size=size, seed=seed, ok_fraction=ok_fraction, mistakes=mistakes, bench=bench)
    started = time.perf_counter()
    result = generate_photos(out, config, progress=True, overwrite=force)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    w, h = config.size
    copies = " and 1 copy" if result.mistakes.duplicate else ""
    elapsed = time.perf_counter() - started
    typer.echo(f"wrote {result.n_photos} photos of {w}x{h}{copies} to {out} in {elapsed:.1f} s ({counts})")
    m = result.mistakes
    if not m.present:
        return
    typer.echo(f"mistakes, for 'andon data check {out}' to find:")
    if m.duplicate:
        typer.echo(f"  copy       {m.duplicate[1]} is an exact copy of {m.duplicate[0]}")
    if m.truncated:
        typer.echo(f"  truncated  {m.truncated} is cut to half its bytes (an interrupted copy from the phone)")
    for a, b in m.bursts:
        typer.echo(f"  burst      {a} and {b} are two shots of the same part")


def _remapped(ds, remap: str | None):
    if not remap:
        return ds
    from andon.datasets import parse_remap

    return ds.remap(parse_remap(remap), strict=True)


def _split_table(ds):
    from rich.table import Table

    from andon.datasets import SPLITS

    table = Table(title="Images per split", title_justify="left")
    table.add_column("class")
    per_split = ds.split_counts()
    for name in SPLITS:
        table.add_column(name, justify="right")
    for label in ds.classes:
        table.add_row(label, *(str(per_split.get(name, {}).get(label, 0)) for name in SPLITS))
    totals = [sum(per_split.get(name, {}).values()) for name in SPLITS]
    table.add_row("all", *(f"{n} ({n / max(1, len(ds)):.0%})" for n in totals), style="bold")
    return table
