"""Alembic environment: the connection comes from ``migrate.upgrade`` (config attribute)."""

from alembic import context

from distillab.service.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
