"""Training commands: run a spec (teacher, scratch and distilled students, every seed), train a
teacher, validate a spec, sweep its parameters, and re-render a report."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from distillab.cli.common import (SetOpt, SpecArg, StorageOpt, _fail, _load, _logging, app, command, console,
                                  err_console)
from distillab.engine.callbacks import ProgressBar
from distillab.errors import DistillabError


@command(app)
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
    from distillab.spec_io import load_spec

    _logging(False)
    job = load_spec(spec, set_ or [])
    if index >= len(job.teachers):
        raise DistillabError(f"--index {index}: the spec has {len(job.teachers)} teacher(s)")
    training = job.teachers[index].training or job.training
    facts = train_teacher(job, index, out, work_dir or out.with_suffix(".work"), resume=resume,
                          callbacks=[ProgressBar(f"teacher[{index}]", training.epochs)])
    console.print_json(json.dumps(facts))


@command(app)
def run(
    spec: SpecArg,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<name>)")] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run in OUT.partial")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace a finished run in OUT, or discard an unfinished one")] = False,
    accept_weak_teacher: Annotated[bool, typer.Option(help="train even when the teacher scores near chance on "
                                                           "validation (the report records it)")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="data-parallel processes (torch.distributed: gloo on CPU, "
                                                   "nccl on CUDA), started through torchrun")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train teacher (if needed), scratch and distilled students for every seed; write the report."""
    from distillab.engine import distributed
    from distillab.experiment.folders import default_out_dir
    from distillab.experiment.render import summary_table
    from distillab.experiment.job import Job
    from distillab.experiment.run import progress_bars
    from distillab.experiment.run import run as run_job

    _logging(verbose)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_launch_processes(nproc, spec, set_, resume, out, overwrite, verbose))
    rank = 0
    if accept_weak_teacher:
        set_ = [*(set_ or []), "accept_weak_teacher=true"]
    job = _load(spec, set_)
    if distributed.init_from_env():
        rank, processes = distributed.world()
        if job.constraints.max_duration_s is not None:
            raise DistillabError("constraints.max_duration_s: a time budget is decided per process, which "
                                 "would stop them at different steps; run it with --nproc 1")
    work = None
    if rank != 0:  # the other processes compute what rank 0 computes; only rank 0 writes the run
        import tempfile

        work = Path(tempfile.mkdtemp(prefix=f"distillab-rank{rank}-"))
        out, resume, overwrite = work / "run", False, False

    bars = progress_bars(Job.from_spec(job)) if rank == 0 else (lambda role, seed: [])
    try:
        report = run_job(job, out, resume=resume, overwrite=overwrite, callbacks=bars)
    except KeyboardInterrupt:
        if rank == 0:
            _interrupted(spec, out if out is not None else default_out_dir(job.name), set_)
        raise typer.Exit(130) from None
    finally:
        if work is not None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    if rank != 0:
        return
    console.print(summary_table(report.data), markup=False, highlight=False)
    console.print(report.verdict, markup=False, highlight=False)
    console.print(f"report: {report.out_dir / 'report.md'}", markup=False, highlight=False)


def _interrupted(spec: Path, out: Path, overrides: list[str] | None) -> None:
    """Ctrl-C: where the unfinished run is, and the exact command that continues it."""
    import shlex

    partial = Path(os.path.abspath(out))
    partial = partial.with_name(partial.name + ".partial")
    command = shlex.join(["distillab", "run", str(spec), "--out", str(out),
                          *[f"--set={item}" for item in overrides or []], "--resume"])
    err_console.print(f"interrupted: the unfinished run is kept in {partial}\nresume it with: {command}",
                      markup=False, highlight=False)


def _launch_processes(nproc: int, spec: Path, overrides: list[str] | None, resume: bool, out: Path | None,
                      overwrite: bool, verbose: bool) -> int:
    """Start ``distillab run`` in ``nproc`` processes through torchrun; returns its exit code."""
    import subprocess

    import torch

    if resume:
        _fail(DistillabError("--resume with --nproc: resume the run with --nproc 1 (checkpoints are the same)"))
    if torch.cuda.is_available():
        if nproc > torch.cuda.device_count():
            _fail(DistillabError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s)"))
    elif nproc > (os.cpu_count() or 1):
        _fail(DistillabError(f"--nproc {nproc}: this machine has {os.cpu_count()} CPU cores; each process needs "
                             "at least one (torch processes sharing cores slow each other down many times over)"))
    _load(spec, overrides)  # a bad spec is one error here, not one per process
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "distillab.cli", "run", str(spec), *(["--out", str(out)] if out is not None else []),
               *[f"--set={item}" for item in overrides or []], *(["--overwrite"] if overwrite else []),
               *(["--verbose"] if verbose else [])]
    return subprocess.call(command, env=env)


@command(app)
def validate(spec: SpecArg, set_: SetOpt = None) -> None:
    """Check a spec: keys, types, ranges, files, the dataset and the teacher's output size."""
    from distillab.experiment.job import Job
    from distillab.experiment.run import check_precision, check_strategy
    from distillab.tasks.language_modeling import weightless_teachers

    _logging(False)
    job = _load(spec, set_)
    check_precision(job)
    planned = Job.from_spec(job)
    with weightless_teachers():  # a language model's config and tokenizer; its weights are not needed
        bundle = planned.build_data(job.training.seeds[0])
        if all(t.checkpoint is not None or t.is_language_model for t in job.teachers):
            check_strategy(planned, bundle, planned.load_teachers(bundle))
    console.print(f"{spec}: valid ({job.strategy.name}, {len(job.teachers)} teacher(s), "
                  f"{len(bundle.train)} train / {len(bundle.val)} val / {len(bundle.test)} test)", markup=False)


@command(app)
def sweep(
    spec: Annotated[Optional[Path], typer.Argument(help="job spec, YAML or JSON (not with --join)")] = None,
    out: Annotated[Path, typer.Option(help="sweep folder (study.db, trials.md, best.json, heatmap.png)")] = ...,
    grid: Annotated[Optional[list[str]], typer.Option(help="key.path=v1,v2,... (GridSampler)")] = None,
    range_: Annotated[Optional[list[str]], typer.Option("--range", help="key.path=low:high[:log] (TPE)")] = None,
    trials: Annotated[Optional[int], typer.Option(min=1, help="trials for --range sweeps (default 20)")] = None,
    storage: StorageOpt = None,
    study: Annotated[Optional[str], typer.Option(help="the shared study's name (default: the spec's name)")] = None,
    join: Annotated[Optional[str], typer.Option(help="run the remaining trials of this shared study "
                                                     "(with --storage)")] = None,
    set_: SetOpt = None,
) -> None:
    """Tune strategy or training parameters on the validation split (Optuna, resumable; shared
    across machines with --storage and --join)."""
    from distillab.experiment.sweep import join_sweep, parse_grid, parse_ranges, sweep as run_sweep

    _logging(False)
    if join is not None:
        if storage is None:
            raise DistillabError("--join: give the shared study's --storage URL too")
        if spec is not None or grid or range_ or trials is not None or study is not None or set_:
            raise DistillabError("--join: the study holds the spec, grid and ranges; give only --storage and --out")
        best = join_sweep(join, storage, out)
    else:
        if spec is None:
            raise DistillabError("give a spec file (or --join STUDY --storage URL)")
        best = run_sweep(spec, out, parse_grid(grid or []), parse_ranges(range_ or []), trials,
                         overrides=set_ or [], storage=storage, study_name=study)
    console.print((out / "trials.md").read_text(), markup=False, highlight=False)
    metric = best["metric"]
    value = best[f"val_{metric}"]
    shown = f"{value * 100:.2f}%" if metric == "accuracy" else f"{value:.4f} {metric.replace('_', ' ')}"
    console.print(f"best (validation): {json.dumps(best['params'])} -> {shown}", markup=False)
    if spec is not None:
        import shlex

        settings = [*(set_ or []), *(f"{key}={json.dumps(value)}" for key, value in best["params"].items())]
        command = shlex.join(["distillab", "run", str(spec), *[f"--set={item}" for item in settings]])
        console.print(f"run the best point (scratch and distilled twins, on test): {command}", markup=False,
                      highlight=False)


@command(app)
def report(run_dir: Annotated[Path, typer.Argument(help="a finished run folder")]) -> None:
    """Re-render report.md and the plots from report.json."""
    from distillab.experiment.render import load_report, render, summary_table

    path = render(run_dir)
    console.print(summary_table(load_report(run_dir)), markup=False, highlight=False)
    console.print(f"wrote {path}", markup=False)
