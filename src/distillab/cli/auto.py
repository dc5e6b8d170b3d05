"""``distillab auto``: the spec's constraints in, the chosen student out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from distillab.cli.common import SetOpt, SpecArg, _logging, app, command, console


@command(app)
def auto(
    spec: SpecArg,
    out: Annotated[Path, typer.Option(help="search folder: study.db, trials.md, front.{json,md,png}, auto.json, "
                                           "and the chosen student's run in OUT/run")],
    set_: SetOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Find the student: the spec's auto section states the constraints (latency on a runtime,
    parameters, size, MACs, a minimum score), the budget and the space; candidates that cannot meet
    them never train, a multi-fidelity Optuna search picks on validation, and the chosen student is
    retrained over three seeds against its scratch twin. Resumes when run again with the same OUT."""
    from distillab.autodistill.search import search

    _logging(verbose)
    summary = search(spec, out, set_ or [])
    console.print((out / "front.md").read_text(), markup=False, highlight=False)
    chosen = summary["chosen"]
    candidate = chosen["candidate"]
    console.print(f"chosen: {candidate['model']} {json.dumps(candidate['model_args'])} ({candidate['params']:,} "
                  f"parameters), {chosen['params']['strategy']} T={chosen['params']['temperature']:.2f} "
                  f"alpha={chosen['params']['alpha']:.2f}: validation {chosen['val_score']:.4f}"
                  f"{'' if chosen['meets_score'] else ' (below the score constraint)'}", markup=False, highlight=False)
    final = summary.get("final")
    if final:
        console.print(f"latency {final['latency_ms_measured']:.3f} ms measured "
                      f"({'within' if final['latency_met'] else 'OVER'} the constraint); {final['verdict']}",
                      markup=False, highlight=False)
        console.print(f"report: {Path(final['run']) / 'report.md'}", markup=False, highlight=False)
