"""``andon train DATA``: fine-tune a backbone on a folder of labelled images; the run lands in runs/<name>/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from andon.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("train", no_args_is_help=True)(train)


def train(
    data: Path | None = typer.Argument(
        None,
        help="A folder with one sub-folder per class, or a CSV manifest. "
        "Optional with --resume (the run's own data path is used).",
    ),
    recipe: Path | None = typer.Option(
        None,
        "--recipe",
        "-r",
        help="A recipe YAML; only the keys it changes are needed (--show-recipe prints them all).",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Backbone, e.g. efficientnet_lite0, mobilenet_v2, resnet18 (an unknown name is answered with the list).",
    ),
    weights: str | None = typer.Option(None, "--weights", help="imagenet, none, or a path to a .pth state dict."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Number of epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per training step."),
    input_size: str | None = typer.Option(None, "--input-size", help="Model input: 224, or HxW such as 192x256."),
    remap: str | None = typer.Option(
        None, "--remap", help="Rename classes first, e.g. '*=defect,ok=ok' for ok/defect from defect-type folders."
    ),
    name: str | None = typer.Option(
        None, "--name", "-n", help="Run name (folder under --runs-dir); default <data>-<model>-<date>-<time>."
    ),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help="Where run folders go (default: runs)."),
    settings: list[str] = typer.Option(
        [], "--set", "-s", help="Any recipe key, repeatable: --set train.lr=0.0005 --set augment.vflip=0."
    ),
    nproc: int | None = typer.Option(
        None,
        "--nproc",
        help="Training processes (torch DDP through torchrun's launcher; gloo on CPU, NCCL on CUDA); "
        "--batch-size stays the whole step's batch, split between them (train.nproc).",
    ),
    oversubscribe: bool = typer.Option(
        False, "--oversubscribe", help="Allow --nproc above the CPU cores this process may use."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run named by --name from its last checkpoint."),
    show_recipe: bool = typer.Option(False, "--show-recipe", help="Print the resolved recipe (every key) and exit."),
    anomaly_only: bool = typer.Option(
        False,
        "--anomaly-only",
        help="A model from good parts only (a new product "
        "with no defect images yet): no classifier; a good-only anomaly detector "
        "sends unusual parts to review. DATA needs a folder named ok (or good).",
    ),
) -> None:
    """Fine-tune a pretrained backbone with a new head. Writes runs/<name>/: recipe.yaml, metrics.csv,
    best.pt, last.pt, splits.csv, predictions and report.html. A checkpoint is saved after every epoch:
    after Ctrl-C or a crash, continue with --name NAME --resume (with --nproc too)."""
    from rich.console import Console

    from andon.training.fit import fit

    values = _flag_values(data, model, weights, epochs, batch_size, input_size, remap, name, runs_dir)
    if nproc is not None:
        if nproc < 1:
            raise ConfigError(f"--nproc {nproc}: give the number of training processes, 1 or more")
        values["train.nproc"] = nproc
    if anomaly_only:
        values["anomaly.only"] = True
    if resume:
        loaded = _resume_recipe(recipe, name, runs_dir, values, settings)
    else:
        from andon.training.recipe import load_recipe

        loaded = load_recipe(recipe, settings, values)
    if show_recipe:
        typer.echo(loaded.to_yaml(), nl=False)
        return
    fit(loaded, resume=resume, console=Console(stderr=True), oversubscribe=oversubscribe)


def _flag_values(
    data: Path | None,
    model: str | None,
    weights: str | None,
    epochs: int | None,
    batch_size: int | None,
    input_size: str | None,
    remap: str | None,
    name: str | None,
    runs_dir: Path | None,
) -> dict[str, Any]:
    """Recipe keys set by the short flags (only the flags given)."""
    values: dict[str, Any] = {
        "data.path": data,
        "model.name": model,
        "model.weights": weights,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "output.name": name,
        "output.runs_dir": runs_dir,
    }
    if input_size is not None:
        values["model.input_size"] = parse_size(input_size)
    if remap is not None:
        from andon.datasets.remap import parse_remap

        values["data.remap"] = parse_remap(remap)
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items() if v is not None}


def parse_size(text: str) -> list[int]:
    """'224' -> [224, 224]; '192x256' -> [192, 256] (height x width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2):
        raise ConfigError(f"--input-size {text!r} is not a size; give 224 or HEIGHTxWIDTH such as 192x256")
    return sizes * 2 if len(sizes) == 1 else sizes


def _resume_recipe(
    recipe: Path | None, name: str | None, runs_dir: Path | None, values: dict[str, Any], settings: list[str]
):
    """The run's own recipe.yaml with the flags given now on top (fit checks that they may change)."""
    from andon.training.recipe import default_dict, load_recipe

    if recipe is not None:
        raise ConfigError(
            "--recipe cannot be combined with --resume: the run's own recipe.yaml is used; "
            "change epochs or patience with --epochs / --set"
        )
    if name is None:
        raise ConfigError("--resume needs the name of the run to continue: --name NAME")
    folder = Path(runs_dir or default_dict()["output"]["runs_dir"]) / name
    saved = folder / "recipe.yaml"
    if not saved.is_file():
        from andon.errors import RunError

        raise RunError(f"cannot resume: {saved} does not exist; is '{name}' a run in {folder.parent}?")
    return load_recipe(saved, settings, values)
