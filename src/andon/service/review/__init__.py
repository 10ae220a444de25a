"""The operator review station and the line dashboard, served by the inspection service.

Kept import-light: ``andon.service.review.tables`` is imported by the Alembic environment; the web parts
(routes, templates, charts) are wired into the app by ``andon.service.review.web.install``.
"""
