"""``open_service``: the service's data opened as the app opens it, each part on first use, closed after."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from andon.service.domain import open_service
from andon.service.settings import Settings
from andon.service.storage import LocalDiskStore


def test_the_registry_lives_in_the_services_database(tmp_path: Path) -> None:
    settings = Settings.load(None, data_dir=tmp_path / "data")
    with open_service(settings) as service:
        assert service.registry.state().active is None
        assert service.registry.root == settings.registry_dir
        with service.sessions() as session:  # read through the same (migrated) database
            assert "registry_state" in inspect(session.get_bind()).get_table_names()
    assert (tmp_path / "data" / "andon.db").is_file() and not settings.registry_dir.exists()  # no file written


def test_sessions_are_migrated_and_the_engine_is_disposed(tmp_path: Path) -> None:
    settings = Settings.load(None, data_dir=tmp_path / "data", disk_reserve_mb=7)
    with open_service(settings) as service:
        with service.sessions() as session:
            assert "inspections" in inspect(session.get_bind()).get_table_names()
        store = service.store
        assert isinstance(store, LocalDiskStore) and store.root == settings.images_dir
        assert store.reserve_bytes == settings.disk_reserve_bytes
        store.join_writers()
        probe = LocalDiskStore(settings.images_dir)
        assert not probe.join_writers(sole=True)  # the service is a writer
        probe.leave_writers()
        engine = service.engine
        assert engine.pool.checkedin() == 1
    assert engine.pool.checkedin() == 0  # disposed: no connection left open
    other = LocalDiskStore(settings.images_dir)
    assert other.join_writers(sole=True)  # the closed service left the store's writers
    other.leave_writers()
