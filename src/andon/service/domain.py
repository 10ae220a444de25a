"""``open_service(settings)``: the service's data (database, image store, model registry), opened as the
service opens it.

``create_app`` (``app.build_context``), ``andon serve``, the CLI commands that work on a service's data
(keys, users, models, review export, shift report, demo) and ``reports`` (``andon evaluate --compare active``)
all open it here, from the one ``Settings`` their command loaded, so a command's ``--config`` /
``--data-dir`` / ``--database-url`` mean the same everywhere::

    with open_service(settings) as service, service.sessions() as session:
        build(session, ...)
    # the engine is disposed here

Each part is made on first use (the model registry lives in the database and the store, so reading it opens
the database).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from andon.service import db
from andon.service.registry import ModelRegistry
from andon.service.settings import Settings
from andon.service.storage import ImageStore, LocalDiskStore, make_model_store, make_store

#: database connections a command's engine keeps (the app sizes its own pool from its thread settings)
COMMAND_POOL_SIZE = 8


class ServiceData:
    """The database, image store and model registry of one service, each made on first use.

    With ``migrate`` the database is upgraded to the current schema before the first session is handed out
    (what a command wants); the app passes False and migrates in its lifespan (``app.start``).
    """

    def __init__(self, settings: Settings, *, pool_size: int = COMMAND_POOL_SIZE, migrate: bool = True) -> None:
        self.settings = settings
        self._pool_size = pool_size
        self._migrate = migrate

    @cached_property
    def engine(self) -> Engine:
        return db.make_engine(self.settings.db_url, pool_size=self._pool_size)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        if self._migrate:
            db.migrate(self.engine)
        return db.session_factory(self.engine)

    @cached_property
    def store(self) -> ImageStore:
        return make_store(self.settings)  # the local disk, or the S3 bucket of image_store: s3

    @cached_property
    def registry(self) -> ModelRegistry:
        """The registry in this service's database, its files in the store (``make_model_store``): the bucket
        of ``image_store: s3`` with a verified local copy under ``<data_dir>/cache/models``, else the disk."""
        store, prefix = make_model_store(self.settings)
        local = isinstance(store, LocalDiskStore)
        return ModelRegistry(
            lambda: self.sessions(),  # migrated on first use, not when the registry is made
            store,
            root=self.settings.registry_dir,
            prefix=prefix,
            cache_dir=None if local else self.settings.data_dir / "cache" / "models",
        )

    def close(self) -> None:
        """Dispose of the engine's connections and leave the store's writers, for the parts that were made."""
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "store" in self.__dict__:
            self.store.leave_writers()


@contextlib.contextmanager
def open_service(settings: Settings, *, migrate: bool = True) -> Iterator[ServiceData]:
    """The service's data for the length of a ``with`` block; closed (engine disposed) when it ends."""
    service = ServiceData(settings, migrate=migrate)
    try:
        yield service
    finally:
        service.close()
