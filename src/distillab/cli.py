"""The command line: parse, call, print. Errors meant for people exit with code 2."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from distillab.errors import DistillabError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="distillab: knowledge distillation for PyTorch.")
console = Console()
err_console = Console(stderr=True)

SpecArg = Annotated[Path, typer.Argument(help="job spec, YAML or JSON")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override, key.path=value (YAML)")]


@app.callback()
def _root() -> None:
    """distillab: distil a PyTorch teacher into a small student, and measure whether it helped."""


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, markup=False)], force=True,
    )


def _fail(error: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {error}", highlight=False)
    raise typer.Exit(2)


@app.command()
def teacher(
    spec: SpecArg,
    out: Annotated[Path, typer.Option(help="where to write the teacher's .safetensors (and .json facts)")],
    index: Annotated[int, typer.Option(help="which teacher of the spec to train")] = 0,
    work_dir: Annotated[Optional[Path], typer.Option(help="checkpoints for --resume")] = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted training")] = False,
    set_: SetOpt = None,
) -> None:
    """Train the spec's teacher from scratch with the training loop and save it."""
    from distillab.experiment.teacher import train_teacher
    from distillab.spec import load_spec

    _logging(False)
    try:
        job = load_spec(spec, set_ or [])
        if index >= len(job.teachers):
            raise DistillabError(f"--index {index}: the spec has {len(job.teachers)} teacher(s)")
        facts = train_teacher(job, index, out, work_dir or out.with_suffix(".work"), resume=resume)
    except DistillabError as error:
        _fail(error)
    console.print_json(json.dumps(facts))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
