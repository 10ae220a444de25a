"""``andon keys create/list/revoke``: API keys in the service database (stored hashed, shown once)."""

from __future__ import annotations

from pathlib import Path

import typer

from andon.cli._service import ConfigOpt, DataDirOpt, DbOpt, service_session

keys_app = typer.Typer(
    help="API keys: camera keys (bound to a camera id), operator and engineer keys.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def create(
    role: str = typer.Option(
        ..., "--role", help="camera, monitor (/metrics and /readyz only: for Prometheus), operator or engineer."
    ),
    camera_id: str | None = typer.Option(None, "--camera-id", help="The camera a camera key may post for."),
    name: str | None = typer.Option(None, "--name", help="A label for the key (who holds it)."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = DbOpt,
) -> None:
    """Create a key and print it once (only its hash is kept)."""
    from andon.service.auth import create_key

    with service_session(config, data_dir, database_url) as session:
        row, secret = create_key(session, role=role, camera_id=camera_id, name=name)
        session.commit()
    typer.echo(secret)
    typer.secho(
        f"key {row.id} ({row.role}{', camera ' + row.camera_id if row.camera_id else ''}) created; "
        "store it now, it is not shown again",
        err=True,
        fg=typer.colors.GREEN,
    )


@keys_app.command("list")
def list_(
    include_revoked: bool = typer.Option(False, "--all", help="Also show revoked keys."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = DbOpt,
) -> None:
    """List keys (ids, roles, cameras; never secrets)."""
    from rich.console import Console
    from rich.table import Table

    from andon.service.auth import list_keys

    with service_session(config, data_dir, database_url) as session:
        rows = list_keys(session, include_revoked=include_revoked)
    table = Table("id", "name", "role", "camera", "created", "last used", "revoked")
    table.columns[0].no_wrap = True  # the id is what 'andon keys revoke' needs: never broken across lines
    for r in rows:
        table.add_row(
            r.id,
            r.name,
            r.role,
            r.camera_id or "",
            f"{r.created_at:%Y-%m-%d %H:%M}",
            f"{r.last_used_at:%Y-%m-%d %H:%M}" if r.last_used_at else "never",
            f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key id (from 'andon keys list')."),
    config: Path | None = ConfigOpt,
    data_dir: Path | None = DataDirOpt,
    database_url: str | None = DbOpt,
) -> None:
    """Revoke a key; a running service refuses it from its next request on (keys are not cached).

    The row stays (marked revoked), so revoking every key closes the service: it never falls back to open
    mode unless allow_open_mode_after_keys is set."""
    from andon.service.auth import revoke_key

    with service_session(config, data_dir, database_url) as session:
        row = revoke_key(session, key_id)
        session.commit()
    typer.echo(f"revoked {row.id} ({row.role})")
