"""What the commands that work on the service's data (keys, users, models, review, report) share: where it is,
the settings it is read with, and a session on it (``andon.service.domain.open_service``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from andon.service.settings import Settings

ConfigOpt = typer.Option(None, "--config", help="Service settings file (as for 'andon serve').")
DataDirOpt = typer.Option(None, "--data-dir", help="Service data folder (default ./andon-data).")
DbOpt = typer.Option(None, "--database-url", help="Service database URL (default SQLite in the data dir).")


def service_settings(config: Path | None, data_dir: Path | None, database_url: str | None = None) -> Settings:
    """The service's settings as a command sees them: defaults < ``--config`` < ANDON_* env < its flags."""
    from andon.service.settings import Settings

    return Settings.load(config, data_dir=data_dir, database_url=database_url)


@contextlib.contextmanager
def service_session(config: Path | None, data_dir: Path | None, database_url: str | None) -> Iterator[Session]:
    """A session on the service's database, migrated to the current schema; the engine is disposed after."""
    from andon.service.domain import open_service

    with open_service(service_settings(config, data_dir, database_url)) as service, service.sessions() as session:
        yield session
