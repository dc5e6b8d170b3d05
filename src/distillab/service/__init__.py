"""The self-hosted job service (issue 5): settings, the durable job store and its schema.

Built so far: ``settings`` (pydantic-settings, ``DISTILLAB_`` prefix), ``db`` (SQLAlchemy 2.x
models, engines with SQLite WAL / immediate transactions), ``migrations`` (Alembic) and
``store`` (job creation, atomic claims, heartbeats, re-queueing of stale jobs, cancellation).
The REST API and the worker processes build on these.
"""
