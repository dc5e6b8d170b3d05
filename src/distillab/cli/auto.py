"""``distillab auto``: the spec's constraints in, the chosen student out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from distillab.cli.common import SetOpt, StorageOpt, _logging, app, command, console
from distillab.errors import DistillabError


@command(app)
def auto(
    spec: Annotated[Optional[Path], typer.Argument(help="job spec with an auto section (not with --join)")] = None,
    out: Annotated[Path, typer.Option(help="search folder: study.db, trials.md, front.{json,md,png}, auto.json, "
                                           "and the chosen student's run in OUT/run")] = ...,
    storage: StorageOpt = None,
    study: Annotated[Optional[str], typer.Option(help="the shared study's name (default: auto-<spec name>)")] = None,
    join: Annotated[Optional[str], typer.Option(help="train trials of this shared study (with --storage); the "
                                                     "process that created it retrains the chosen student")] = None,
    wait: Annotated[float, typer.Option(min=0, help="with --join: wait up to this many seconds for the study to "
                                                    "be created (start workers before the search)")] = 0.0,
    set_: SetOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Find the student: the spec's auto section states the constraints (latency on a runtime,
    parameters, size, MACs, a minimum score), the budget and the space; candidates that cannot meet
    them never train, a multi-fidelity Optuna search picks on validation, and the chosen student is
    retrained over three seeds against its scratch twin. Resumes when run again with the same OUT;
    shared across processes and machines with --storage and --join."""
    from distillab.autodistill.search import search

    _logging(verbose)
    if join is not None:
        if storage is None:
            raise DistillabError("--join: give the shared study's --storage URL too")
        if spec is not None or study is not None or set_:
            raise DistillabError("--join: the study holds the spec; give only --storage and --out")
        summary = search(None, out, storage=storage, study_name=join, join=True, wait_s=wait)
        console.print(f"{summary['trials_here']} trial(s) of {summary['study']} trained here; the process that "
                      "created the study writes the front and retrains the chosen student", markup=False)
        return
    if spec is None:
        raise DistillabError("give a spec file (or --join STUDY --storage URL)")
    summary = search(spec, out, set_ or [], storage=storage, study_name=study)
    console.print((out / "front.md").read_text(), markup=False, highlight=False)
    chosen = summary["chosen"]
    candidate = chosen["candidate"]
    console.print(f"chosen: {candidate['model']} {json.dumps(candidate['model_args'])} ({candidate['params']:,} "
                  f"parameters), {chosen['params']['strategy']} T={chosen['params']['temperature']:.2f} "
                  f"alpha={chosen['params']['alpha']:.2f}: validation {chosen['val_score']:.4f}"
                  f"{'' if chosen['meets_score'] else ' (short of the score constraint)'}", markup=False,
                  highlight=False)
    final = summary.get("final")
    if final:
        ms = final["latency_ms_measured"]
        speed = f"decoding {1000 / ms:.1f} tokens/s" if summary["latency_model"].get("kind") == "decode" else \
            f"latency {ms:.3f} ms"
        console.print(f"{speed} measured ({'within' if final['latency_met'] else 'OUTSIDE'} the constraint); "
                      f"{final['verdict']}", markup=False, highlight=False)
        console.print(f"report: {Path(final['run']) / 'report.md'}", markup=False, highlight=False)
