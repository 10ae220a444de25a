"""Alembic migrations of the service schema (run by ``andon.service.db.migrate``)."""
