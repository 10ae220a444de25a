"""``andon models add/list/promote/rollback/shadow``: the model registry of the service that --config /
--data-dir name (its state in the service's database, its files in the service's store: a command on any
machine that reaches them changes the registry every replica serves).

``--product SKU`` on promote and rollback works on that product's own active version (recipes per product:
docs/line.md); a line runs a product once it is selected (``PUT /v1/lines/{line_id}/product`` or OPC UA).

A running service follows the registry within ``registry_poll_s`` plus the load (it fetches, verifies, loads
and warms the new model before switching), so these commands work on a live line too; the same operations
exist as /v1/models routes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from andon.cli._service import ConfigOpt, DataDirOpt, service_settings

if TYPE_CHECKING:
    from andon.service.registry import ModelRegistry

models_app = typer.Typer(
    help="The model registry: add exported models, promote, roll back, shadow.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@contextlib.contextmanager
def _registry(config: Path | None, data_dir: Path | None) -> Iterator[ModelRegistry]:
    """The registry of the service that ``--config`` / ``--data-dir`` name."""
    from andon.service.domain import open_service

    with open_service(service_settings(config, data_dir)) as service:
        yield service.registry


ProductOpt = typer.Option(
    None, "--product", help="A product (SKU): its own active version instead of the default's.", metavar="SKU"
)


def _version(registry, text: str) -> str:
    """A registered version, or the one version of the model named ``text`` (the card's name: the run's name,
    such as flange-v2), so that nobody has to copy a time stamp. Two versions of that name: an error naming
    both; neither a version nor a name: left to the registry's own error."""
    from andon.errors import ConfigError

    entries = registry.entries()
    if any(e.version == text for e in entries):
        return text
    named = [e.version for e in entries if e.name == text]
    if len(named) > 1:
        raise ConfigError(f"{len(named)} registered versions are named {text!r} ({', '.join(named)}); give the version")
    return named[0] if named else text


def _show_state(registry, product: str | None = None) -> None:
    state = registry.state()
    if product is not None:
        entry = state.products.get(product) or {}
        typer.echo(
            f"product {product}: active: {entry.get('active') or 'none'} | previous: {entry.get('previous') or 'none'}"
        )
        return
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
    from andon.service.domain import open_service
    from andon.service.runtime import ModelRuntime

    with open_service(service_settings(config, data_dir)) as service:
        registry = service.registry
        entry, created = registry.add_file(file, validate=ModelRuntime(registry, service.settings).validate_file)
        typer.echo(
            f"{'added' if created else 'already registered'}: version {entry.version} "
            f"({entry.name}, {entry.content_hash[:12]}, {entry.size_bytes / 1e6:.1f} MB)"
        )
        if promote:
            registry.promote(entry.version)
        _show_state(registry)


@models_app.command("list")
def list_(config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Registered versions, with the active, previous and shadow ones marked; then the products and their lines."""
    from rich.console import Console
    from rich.table import Table

    with _registry(config, data_dir) as registry:
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
            for sku, p in sorted(state.products.items()):
                for what in ("active", "previous"):
                    if p.get(what) == e.version:
                        role = ", ".join(filter(None, [role, f"{what} of {sku}"]))
            table.add_row(e.version, e.name, e.content_hash[:12], f"{e.size_bytes / 1e6:.1f} MB", e.added_at[:19], role)
        console = Console()
        console.print(table)
        products = Table("product", "active", "previous", "lines running it")
        for sku, p in sorted(state.products.items()):
            lines = ", ".join(sorted(line for line, chosen in state.lines.items() if chosen == sku))
            products.add_row(sku, p.get("active") or "none", p.get("previous") or "none", lines or "-")
        if state.products:
            console.print(products)
        else:
            console.print("products: none (every line runs the default: 'andon models promote VERSION --product SKU')")


@models_app.command("promote")
def promote(
    version: str = typer.Argument(..., help="A registered version, or the name of a model registered once."),
    product: str | None = ProductOpt,
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Make VERSION active, of the default or of --product SKU (the active one becomes the rollback target)."""
    with _registry(config, data_dir) as registry:
        registry.promote(_version(registry, version), product=product)
        _show_state(registry, product)


@models_app.command("rollback")
def rollback(
    product: str | None = ProductOpt, config: Path | None = ConfigOpt, data_dir: Path | None = DataDirOpt
) -> None:
    """Swap back to the previous active model (of the default, or of --product SKU)."""
    with _registry(config, data_dir) as registry:
        registry.rollback(product=product)
        _show_state(registry, product)


@models_app.command("shadow")
def shadow(
    version: str | None = typer.Argument(
        None, help="A registered version (or the name of a model registered once) to score next to the active one."
    ),
    off: bool = typer.Option(False, "--off", help="Stop shadow scoring."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Score every frame with VERSION too, without affecting verdicts (GET /v1/models/shadow shows agreement)."""
    from andon.errors import ConfigError

    if (version is None) == (not off):
        raise ConfigError("give a VERSION to shadow, or --off to stop")
    with _registry(config, data_dir) as registry:
        registry.set_shadow(None if off else _version(registry, version))
        _show_state(registry)
