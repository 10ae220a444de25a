"""What the commands that work on the service's data (keys, users, models) share: where it is, and a session."""

from __future__ import annotations

from pathlib import Path

import typer

ConfigOpt = typer.Option(None, "--config", help="Service settings file (as for 'andon serve').")
DataDirOpt = typer.Option(None, "--data-dir", help="Service data folder (default ./andon-data).")
DbOpt = typer.Option(None, "--database-url", help="Service database URL (default SQLite in the data dir).")


def service_sessions(config: Path | None, data_dir: Path | None, database_url: str | None):
    """A session factory on the service's database, migrated to the current schema."""
    from andon.service.db import make_engine, migrate, session_factory
    from andon.service.settings import Settings

    settings = Settings.load(config, data_dir=data_dir, database_url=database_url)
    engine = make_engine(settings.db_url)
    migrate(engine)
    return session_factory(engine)
