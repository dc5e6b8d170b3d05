"""What distillab offers: the strategies, models, layers of a model, datasets and tasks."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from distillab.cli.common import app, command, console
from distillab.errors import DistillabError


def _strategy_rows() -> list[dict]:
    from distillab.strategies import catalog

    return catalog()


@command(app)
def strategies(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False) -> None:
    """List the distillation strategies with their parameters and papers."""
    rows = _strategy_rows()
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        params = ", ".join(f"{k}={v['default']}" for k, v in row["params"].items())
        console.print(f"[bold]{row['name']}[/]: {row['summary']}\n    params: {params or '-'}\n    paper: {row['paper']}")


@command(app)
def models() -> None:
    """List the model zoo."""
    from distillab.models.hf import PRETRAINED
    from distillab.models.zoo import MODEL_SUMMARIES
    from distillab.tasks.language_modeling import LM_STUDENTS

    for name, summary in MODEL_SUMMARIES.items():
        console.print(f"[bold]{name}[/]: {summary}")
    for name, summary in LM_STUDENTS.items():
        kind = "a student made from the teacher" if name == "teacher_pruned" else "language-model student"
        console.print(f"[bold]{name}[/]: {summary} ({kind})")
    for name, entry in PRETRAINED.items():
        console.print(f"[bold]{name}[/]: {entry.summary} (teacher.pretrained; {entry.install})")


@command(app)
def layers(
    model: Annotated[str, typer.Argument(help="a model of the zoo (see `distillab models`)")],
    model_args: Annotated[Optional[str], typer.Option(help="the model's keyword arguments as JSON, e.g. '{\"depth\": 8}'")] = None,
    in_shape: Annotated[str, typer.Option(help="input shape C,H,W")] = "1,28,28",
    classes: Annotated[int, typer.Option(min=1, help="number of classes")] = 10,
) -> None:
    """List a model's tappable layers with their output shapes, to write strategy layer pairs."""
    from distillab.models.taps import stage_outputs, tappable_layers
    from distillab.models.zoo import build_model

    try:
        shape = tuple(int(size) for size in in_shape.split(","))
    except ValueError:
        shape = (0,)
    if any(size < 1 for size in shape):
        raise DistillabError(f"--in-shape: expected positive integers such as 1,28,28, got {in_shape!r}")
    try:
        args = json.loads(model_args) if model_args else {}
    except (ValueError, RecursionError) as error:  # json.JSONDecodeError; nested too deep
        raise DistillabError(f"--model-args: not valid JSON ({str(error)[:200]})") from None
    if not isinstance(args, dict):
        raise DistillabError(f"--model-args: expected a JSON object such as '{{\"depth\": 8}}', got "
                             f"{model_args[:200]!r}")
    net = build_model(model, shape, classes, args)
    try:
        rows = tappable_layers(net, shape)
        defaults = {name for name, _ in stage_outputs(net, shape)}
    except RuntimeError as error:
        raise DistillabError(f"--in-shape {in_shape}: {model} cannot run on it: {error}") from None
    width = max(len(name) for name, _ in rows)
    for name, out_shape in rows:
        console.print(f"{'*' if name in defaults else ' '} {name:<{width}}  {out_shape}", markup=False, highlight=False)
    console.print("* picked by default for layer pairs (one per spatial resolution)", markup=False, highlight=False)


@command(app)
def datasets() -> None:
    """List the datasets and text corpora, and their default locations."""
    from distillab.data import DATASETS
    from distillab.data.corpora import CORPORA

    for name, info in DATASETS.items():
        console.print(f"[bold]{name}[/]: {info.summary} (default path: {info.default_path or '-'})")
    for name, (_, summary) in CORPORA.items():
        console.print(f"[bold]{name}[/]: {summary} (text, task language_modeling)")


@command(app)
def tasks() -> None:
    """List the tasks (what a sample is, the metric a run selects and reports on)."""
    from distillab.tasks import TASKS

    for name, task in TASKS.items():
        direction = "higher is better" if task.higher_is_better else "lower is better"
        console.print(f"[bold]{name}[/]: {task.summary} (metric: {task.metric}, {direction})")
