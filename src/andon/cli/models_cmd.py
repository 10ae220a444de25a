"""``andon models add/list/promote/rollback/shadow``: the model registry in the service data folder.

A running service follows the registry within a second (it loads, validates and warms the new model before
switching), so these commands work on a live line too; the same operations exist as /v1/models routes.
"""

from __future__ import annotations

from pathlib import Path

import typer

from andon.cli._service import ConfigOpt, DataDirOpt

models_app = typer.Typer(
    help="The model registry: add exported models, promote, roll back, shadow.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _settings(config, data_dir):
    from andon.service.settings import Settings

    return Settings.load(config, data_dir=data_dir)


def _registry(config, data_dir):
    from andon.service.registry import ModelRegistry

    return ModelRegistry(_settings(config, data_dir).registry_dir)


def _show_state(registry) -> None:
    state = registry.state()
    typer.echo(
        f"active: {state.active or 'none'} | previous: {state.previous or 'none'} | shadow: {state.shadow or 'none'}"
    )


@models_app.command("add")
def add(
    file: Path = typer.Argument(..., help="An .onnx file exported by 'andon export'."),
    promote: bool = typer.Option(False, "--promote", help="Also make it the active model."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Register a model (checked: card, hash, signature, and a warm-up run). Its card's version names it."""
    from andon.service.registry import ModelRegistry
    from andon.service.runtime import ModelRuntime

    settings = _settings(config, data_dir)
    registry = ModelRegistry(settings.registry_dir)
    entry, created = registry.add_file(file, validate=ModelRuntime(registry, settings).validate_file)
    typer.echo(
        f"{'added' if created else 'already registered'}: version {entry.version} "
        f"({entry.name}, {entry.content_hash[:12]}, {entry.size_bytes / 1e6:.1f} MB)"
    )
    if promote:
        registry.promote(entry.version)
    _show_state(registry)


@models_app.command("list")
def list_(config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Registered versions, with the active, previous and shadow ones marked."""
    from rich.console import Console
    from rich.table import Table

    registry = _registry(config, data_dir)
    state = registry.state()
    table = Table("version", "name", "hash", "size", "added", "role")
    for e in registry.entries():
        role = (
            "active"
            if e.version == state.active
            else "previous"
            if e.version == state.previous
            else "shadow"
            if e.version == state.shadow
            else ""
        )
        table.add_row(e.version, e.name, e.content_hash[:12], f"{e.size_bytes / 1e6:.1f} MB", e.added_at[:19], role)
    Console().print(table)


@models_app.command("promote")
def promote(
    version: str = typer.Argument(..., help="A registered version."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Make VERSION active (the active one becomes the rollback target)."""
    registry = _registry(config, data_dir)
    registry.promote(version)
    _show_state(registry)


@models_app.command("rollback")
def rollback(config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Swap back to the previous active model."""
    registry = _registry(config, data_dir)
    registry.rollback()
    _show_state(registry)


@models_app.command("shadow")
def shadow(
    version: str | None = typer.Argument(None, help="A registered version to score next to the active one."),
    off: bool = typer.Option(False, "--off", help="Stop shadow scoring."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Score every frame with VERSION too, without affecting verdicts (GET /v1/models/shadow shows agreement)."""
    from andon.errors import ConfigError

    if (version is None) == (not off):
        raise ConfigError("give a VERSION to shadow, or --off to stop")
    registry = _registry(config, data_dir)
    registry.set_shadow(None if off else version)
    _show_state(registry)
