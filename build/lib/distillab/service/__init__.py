"""The self-hosted job service.

``settings`` (pydantic-settings, ``DISTILLAB_`` prefix), ``db`` (SQLAlchemy 2.x schema and
engines), ``migrations`` (Alembic), ``store`` (atomic claims, heartbeats, re-queueing,
cancellation), ``auth`` (API keys), ``jobs`` (request bodies -> JobSpec), ``estimate``
(duration and cost from measured throughput), ``results`` (results and artifacts from a
run's report), ``registry`` (teacher uploads), ``app`` (``create_app``: the FastAPI routes)
and ``worker`` (``distillab worker``: runs jobs with ``experiment.run``).
"""
