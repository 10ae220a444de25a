"""Alembic environment: the app's metadata; the connection comes from ``andon.service.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import andon.service.line.alarm_model  # noqa: F401,E402 - the line alarms share the metadata
import andon.service.line.tables  # noqa: F401,E402 - the line outbox shares the metadata
import andon.service.review.tables  # noqa: F401,E402 - the review station's tables share the metadata
from andon.service.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
