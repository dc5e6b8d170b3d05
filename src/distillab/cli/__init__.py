"""The ``distillab`` command line: one module per command group (``train``, ``auto``, ``catalog``,
``data``, ``compress``, ``serve``), sharing ``common``'s app and error wrapper."""

from __future__ import annotations

import sys

# each module registers its commands on import, in this order (the order of `distillab --help`)
from distillab.cli import train  # noqa: F401,I001
from distillab.cli import auto  # noqa: F401
from distillab.cli import catalog  # noqa: F401
from distillab.cli import data  # noqa: F401
from distillab.cli import compress  # noqa: F401
from distillab.cli import serve  # noqa: F401
from distillab.cli.common import app, report_error

__all__ = ["app", "main"]


# the optional parts of distillab, by the top-level module each needs: a command that reaches one
# that is not installed says which extra to install (exit 2), instead of a traceback
EXTRAS = {
    "fastapi": "service", "uvicorn": "service", "sqlalchemy": "service", "alembic": "service",
    "pydantic_settings": "service", "limits": "service", "prometheus_client": "service",
    "jinja2": "service", "psycopg": "postgres",
    "transformers": "text", "gguf": "text", "rdata": "text", "tokenizers": "text",
    "optuna": "sweep", "tensorboard": "tensorboard", "sklearn": "digits",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The extra that provides the module an import could not find, or None for any other module."""
    name = (error.name or "").split(".")[0]
    return EXTRAS.get(name)


def main() -> None:
    try:
        app()
    except ModuleNotFoundError as error:
        extra = missing_extra(error)
        if extra is None:
            raise
        report_error(f"this command needs the Python package '{error.name}', which is not installed: "
                     f"pip install 'distillab[{extra}]'")
        sys.exit(2)

