"""What every command shares: the typer app, the consoles, the spec arguments, logging, and the
one error wrapper (a DistillabError becomes one red line and exit code 2, never a traceback)."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from distillab.errors import DistillabError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="distillab: knowledge distillation for PyTorch.")

console = Console(soft_wrap=True)

err_console = Console(stderr=True, soft_wrap=True)

SpecArg = Annotated[Path, typer.Argument(help="job spec, YAML or JSON")]
SeedOpt = Annotated[Optional[int], typer.Option(help="which seed's student (default: best on validation)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override, key.path=value (YAML)")]
StorageOpt = Annotated[Optional[str], typer.Option(help="a shared study database (SQLAlchemy URL, e.g. "
                                                        "postgresql+psycopg://user@host/db) that other processes "
                                                        "and machines --join")]


@app.callback()
def _root() -> None:
    """distillab: distil a PyTorch teacher into a small student, and measure whether it helped."""


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, markup=False)], force=True,
    )


def report_error(error: Exception | str) -> None:
    """Print ``error`` on stderr, its text as written (square brackets are not markup)."""
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)


def _fail(error: Exception | str) -> None:
    """Print ``error`` and exit with code 2."""
    report_error(error)
    raise typer.Exit(2)


def _load(spec: Path, overrides: list[str] | None):
    from distillab.spec_io import load_spec

    return load_spec(spec, overrides or [])


def command(group: typer.Typer, name: str | None = None, **options):
    """Register ``function`` as a command of ``group``; a DistillabError it raises is reported by
    ``_fail`` (one line, exit code 2)."""
    def register(function):
        @functools.wraps(function)
        def guarded(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except DistillabError as error:
                _fail(error)

        group.command(name, **options)(guarded)
        return function

    return register


def _env_key(variable: str | None, option: str) -> str | None:
    """The key held in the environment variable an option names (the key itself never goes on a
    command line, where other users' `ps` would see it)."""
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise DistillabError(f"{option}: the environment variable {variable} is not set")
    return value
