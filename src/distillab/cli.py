"""The command line: parse, call, print. Errors meant for people exit with code 2."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from distillab.engine.callbacks import ProgressBar
from distillab.errors import DistillabError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="distillab: knowledge distillation for PyTorch.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

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


def _env_key(variable: str | None, option: str) -> str | None:
    """The key held in the environment variable an option names (the key itself never goes on a
    command line, where other users' `ps` would see it)."""
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise DistillabError(f"{option}: the environment variable {variable} is not set")
    return value


def proxy_settings(trusted: str) -> dict:
    """uvicorn's proxy options: X-Forwarded-For is believed only from the listed addresses (by
    default uvicorn believes 127.0.0.1, which lets a local client pick its own address)."""
    addresses = [a.strip() for a in (trusted or "").split(",") if a.strip()]
    return {"proxy_headers": bool(addresses), "forwarded_allow_ips": addresses or None}


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
        training = job.teachers[index].training or job.training
        facts = train_teacher(job, index, out, work_dir or out.with_suffix(".work"), resume=resume,
                              callbacks=[ProgressBar(f"teacher[{index}]", training.epochs)])
    except DistillabError as error:
        _fail(error)
    console.print_json(json.dumps(facts))


def _load(spec: Path, overrides: list[str] | None):
    from distillab.spec import load_spec

    return load_spec(spec, overrides or [])


@app.command()
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
    try:
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
    except DistillabError as error:
        _fail(error)
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
    try:
        _load(spec, overrides)  # a bad spec is one error here, not one per process
    except DistillabError as error:
        _fail(error)
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "distillab.cli", "run", str(spec), *(["--out", str(out)] if out is not None else []),
               *[f"--set={item}" for item in overrides or []], *(["--overwrite"] if overwrite else []),
               *(["--verbose"] if verbose else [])]
    return subprocess.call(command, env=env)


@app.command()
def validate(spec: SpecArg, set_: SetOpt = None) -> None:
    """Check a spec: keys, types, ranges, files, the dataset and the teacher's output size."""
    from distillab.experiment.job import Job
    from distillab.experiment.run import check_precision, check_strategy
    from distillab.tasks.language_modeling import weightless_teachers

    _logging(False)
    try:
        job = _load(spec, set_)
        check_precision(job)
        planned = Job.from_spec(job)
        with weightless_teachers():  # a language model's config and tokenizer; its weights are not needed
            bundle = planned.build_data(job.training.seeds[0])
            if all(t.checkpoint is not None or t.is_language_model for t in job.teachers):
                check_strategy(planned, bundle, planned.load_teachers(bundle))
    except DistillabError as error:
        _fail(error)
    console.print(f"{spec}: valid ({job.strategy.name}, {len(job.teachers)} teacher(s), "
                  f"{len(bundle.train)} train / {len(bundle.val)} val / {len(bundle.test)} test)", markup=False)


def _strategy_rows() -> list[dict]:
    from distillab.strategies import catalog

    return catalog()


@app.command()
def strategies(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False) -> None:
    """List the distillation strategies with their parameters and papers."""
    rows = _strategy_rows()
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        params = ", ".join(f"{k}={v['default']}" for k, v in row["params"].items())
        console.print(f"[bold]{row['name']}[/]: {row['summary']}\n    params: {params or '-'}\n    paper: {row['paper']}")


@app.command()
def models() -> None:
    """List the model zoo."""
    from distillab.models.hf import PRETRAINED
    from distillab.models.zoo import MODEL_SUMMARIES
    from distillab.tasks.language_modeling import LM_STUDENTS

    for name, summary in MODEL_SUMMARIES.items():
        console.print(f"[bold]{name}[/]: {summary}")
    for name, summary in LM_STUDENTS.items():
        console.print(f"[bold]{name}[/]: {summary} (language-model student)")
    for name, entry in PRETRAINED.items():
        console.print(f"[bold]{name}[/]: {entry.summary} (teacher.pretrained; {entry.install})")


@app.command()
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
    except DistillabError as error:
        _fail(error)
    width = max(len(name) for name, _ in rows)
    for name, out_shape in rows:
        console.print(f"{'*' if name in defaults else ' '} {name:<{width}}  {out_shape}", markup=False, highlight=False)
    console.print("* picked by default for layer pairs (one per spatial resolution)", markup=False, highlight=False)


@app.command()
def datasets() -> None:
    """List the datasets and text corpora, and their default locations."""
    from distillab.data import DATASETS
    from distillab.data.corpora import CORPORA

    for name, info in DATASETS.items():
        console.print(f"[bold]{name}[/]: {info.summary} (default path: {info.default_path or '-'})")
    for name, (_, summary) in CORPORA.items():
        console.print(f"[bold]{name}[/]: {summary} (text, task language_modeling)")


@app.command()
def generate(
    spec: SpecArg,
    out: Annotated[Path, typer.Option(help="the JSONL file to write (a text_folder corpus)")],
    prompts: Annotated[int, typer.Option(min=1, help="prompts, evenly spaced over the training text")] = 64,
    prompt_tokens: Annotated[int, typer.Option(min=1)] = 32,
    new_tokens: Annotated[int, typer.Option(min=1, help="tokens the teacher writes per prompt")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="sampling temperature; 0 = greedy")] = 1.0,
    keep: Annotated[float, typer.Option(help="fraction kept, lowest teacher perplexity first")] = 0.8,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    set_: SetOpt = None,
) -> None:
    """Sequence-level KD data: the spec's teacher continues prompts from its training text; the
    continuations it finds most fluent are written as a corpus for data.dataset: text_folder."""
    from distillab.data.generate import generate_corpus
    from distillab.engine.callbacks import FillBar
    from distillab.experiment.job import Job

    _logging(False)
    try:
        job_spec = _load(spec, set_)
        if job_spec.task != "language_modeling":
            raise DistillabError(f"{spec}: generate needs a language_modeling spec (a language-model teacher)")
        job = Job.from_spec(job_spec)
        data = job.build_data(job_spec.training.seeds[0])
        (teacher, _, _), *_ = job.load_teachers(data)
        meta = generate_corpus(teacher, data, out, prompts=prompts, prompt_tokens=prompt_tokens,
                               new_tokens=new_tokens, temperature=temperature, keep=keep, seed=seed,
                               progress=FillBar("teacher continuations", "prompts"))
    except DistillabError as error:
        _fail(error)
    console.print_json(json.dumps(meta))


@app.command()
def tasks() -> None:
    """List the tasks (what a sample is, the metric a run selects and reports on)."""
    from distillab.tasks import TASKS

    for name, task in TASKS.items():
        direction = "higher is better" if task.higher_is_better else "lower is better"
        console.print(f"[bold]{name}[/]: {task.summary} (metric: {task.metric}, {direction})")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a finished run folder")]) -> None:
    """Re-render report.md and the plots from report.json."""
    from distillab.experiment.render import load_report, render, summary_table

    try:
        path = render(run_dir)
        console.print(summary_table(load_report(run_dir)), markup=False, highlight=False)
    except DistillabError as error:
        _fail(error)
    console.print(f"wrote {path}", markup=False)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    out: Annotated[Path, typer.Option(help="folder to write the model and export.json into")],
    format_: Annotated[str, typer.Option("--format", help="onnx, torchscript, or adaptive (an adaptive run's "
                                         "generator and student as safetensors)")] = "onnx",
    quantize: Annotated[Optional[str], typer.Option(help="int8 (static, calibrated) or int8-dynamic")] = None,
    seed: Annotated[Optional[int], typer.Option(help="which seed's student (default: best on validation)")] = None,
    tolerance: Annotated[Optional[float], typer.Option(help="largest |delta logit| allowed (default 1e-3; "
                                                       "unbounded with --quantize)")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="smallest argmax agreement allowed (default "
                                                           "0.999; 0.97 with --quantize)")] = None,
    parity_samples: Annotated[int, typer.Option(help="held-out test inputs the parity check runs on")] = 1000,
    calibration_samples: Annotated[int, typer.Option(help="training inputs that calibrate int8")] = 512,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Export a run's distilled student, checked for parity with the eager model (exit 2 when it fails)."""
    from distillab.compress.export import Tolerance, default_tolerance
    from distillab.compress.runs import export_run

    _logging(False)
    if format_ == "adaptive":
        _export_adaptive(run_dir, out, seed)
        return
    try:
        base = default_tolerance(quantize)
        limits = Tolerance(base.max_abs_logit if tolerance is None else tolerance,
                           base.min_agreement if min_agreement is None else min_agreement)
        record = export_run(run_dir, out, fmt=format_, quantize=quantize, seed=seed, tolerance=limits,
                            parity_samples=parity_samples, calibration_samples=calibration_samples,
                            overwrite=overwrite)
    except DistillabError as error:
        _fail(error)
    parity = record["parity"]
    console.print(f"wrote {out / record['file']} (seed {record['seed']}, {record['bytes'] / 1e3:.1f} kB); parity on "
                  f"{parity['samples']} held-out inputs: max |delta logit| {parity['max_abs_logit_diff']:.2e}, "
                  f"argmax agreement {parity['argmax_agreement']:.4f}", markup=False, highlight=False)


def _export_adaptive(run_dir: Path, out: Path, seed: int | None) -> None:
    """The generator G and the student of an adaptive run, without the teacher."""
    from distillab.compress.adaptive_export import export_run

    try:
        path = export_run(run_dir, out, seed)
    except DistillabError as error:
        _fail(error)
    for name in ("adaptive.json", "generator.safetensors", "student.safetensors"):
        console.print(str(path / name), markup=False)


@app.command()
def sweep(
    spec: Annotated[Optional[Path], typer.Argument(help="job spec, YAML or JSON (not with --join)")] = None,
    out: Annotated[Path, typer.Option(help="sweep folder (study.db, trials.md, best.json, heatmap.png)")] = ...,
    grid: Annotated[Optional[list[str]], typer.Option(help="key.path=v1,v2,... (GridSampler)")] = None,
    range_: Annotated[Optional[list[str]], typer.Option("--range", help="key.path=low:high[:log] (TPE)")] = None,
    trials: Annotated[Optional[int], typer.Option(min=1, help="trials for --range sweeps (default 20)")] = None,
    storage: Annotated[Optional[str], typer.Option(help="a shared study database (SQLAlchemy URL, e.g. "
                                                        "postgresql+psycopg://user@host/db) that other "
                                                        "machines --join")] = None,
    study: Annotated[Optional[str], typer.Option(help="the shared study's name (default: the spec's name)")] = None,
    join: Annotated[Optional[str], typer.Option(help="run the remaining trials of this shared study "
                                                     "(with --storage)")] = None,
    set_: SetOpt = None,
) -> None:
    """Tune strategy or training parameters on the validation split (Optuna, resumable; shared
    across machines with --storage and --join)."""
    from distillab.experiment.sweep import join_sweep, parse_grid, parse_ranges, sweep as run_sweep

    _logging(False)
    try:
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
    except DistillabError as error:
        _fail(error)
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


data_app = typer.Typer(no_args_is_help=True, help="Dataset utilities.")
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="fashion_mnist or mnist")],
    to: Annotated[Path, typer.Option(help="destination folder")],
    base_url: Annotated[Optional[str], typer.Option(help="mirror to download from")] = None,
) -> None:
    """Download a dataset's files and verify their checksums."""
    from distillab.data.fetch import fetch_dataset

    _logging(False)
    try:
        paths = fetch_dataset(name, to, base_url=base_url)
    except DistillabError as error:
        _fail(error)
    for path in paths:
        console.print(str(path), markup=False)


users_app = typer.Typer(no_args_is_help=True, help="Accounts of the job service.")
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="the user's name (unique)")],
    admin: Annotated[bool, typer.Option("--admin", help="may read analytics and the audit log")] = False,
) -> None:
    """Create a service user; prints the API key once, alone on the last line."""
    from sqlalchemy.orm import Session

    from distillab.service.auth import add_user
    from distillab.service.db import make_engine
    from distillab.service.migrate import upgrade
    from distillab.service.settings import Settings, private_data_dir

    os.umask(0o077)  # the database it may create holds the key hashes: owner-only, like serve and worker
    try:
        settings = Settings()
        private_data_dir(settings)
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        with Session(engine) as session, session.begin():
            key = add_user(session, name, admin)
    except DistillabError as error:
        _fail(error)
    except Exception as error:  # a refused port, a wrong password, a bad URL: configuration, as serve says
        _fail(f"cannot open the service database (DISTILLAB_DATABASE_URL): {str(error).splitlines()[0][:300]}")
    console.print(f"created {'admin' if admin else 'user'} {name!r}; the API key is shown once:", markup=False)
    print(key)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    trusted_proxies: Annotated[Optional[str], typer.Option(
        help="comma-separated addresses of reverse proxies whose X-Forwarded-For is believed (default: the "
             "DISTILLAB_TRUSTED_PROXIES setting, else none)")] = None,
) -> None:
    """Serve the REST API (settings from DISTILLAB_* variables or .env); OpenAPI docs at /docs."""
    import uvicorn

    from distillab.service.app import create_app
    from distillab.service.settings import Settings

    _logging(False)
    os.umask(0o077)  # the database, uploads and job files: readable by the service's user only
    try:
        settings = Settings()
        application = create_app(settings)
    except Exception as error:  # a bad DATABASE_URL or data dir is a configuration mistake
        _fail(f"cannot start the service: {error}")
    uvicorn.run(application, host=host, port=port, log_level=log_level,
                **proxy_settings(settings.trusted_proxies if trusted_proxies is None else trusted_proxies))


@app.command()
def package(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    out: Annotated[Path, typer.Option(help="the package folder to write")],
    quantize: Annotated[Optional[str], typer.Option(help="int8 (static, calibrated) or int8-dynamic")] = None,
    seed: Annotated[Optional[int], typer.Option(help="which seed's student (default: best on validation)")] = None,
    name: Annotated[Optional[str], typer.Option(help="the package's name (default: run-seedN)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
    sign_key_env: Annotated[Optional[str], typer.Option(
        help="variable holding a key: also write package.json.sig (HMAC-SHA256 of the manifest), which "
             "serve-model --verify-key-env checks")] = None,
) -> None:
    """A deployable folder: the parity-checked ONNX student, its manifest, model card, server and Dockerfile."""
    from distillab.deploy.package import package_run

    _logging(False)
    try:
        sign_key = _env_key(sign_key_env, "--sign-key-env")
        manifest = package_run(run_dir, out, quantize=quantize, seed=seed, name=name, overwrite=overwrite,
                               sign_key=sign_key.encode() if sign_key else None)
    except DistillabError as error:
        _fail(error)
    console.print(f"wrote package {manifest['name']!r} to {out}: {', '.join(manifest['files'])}, package.json",
                  markup=False, highlight=False)


@app.command()
def prune(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    out: Annotated[Path, typer.Option(help="the pruned run folder to write")],
    method: Annotated[str, typer.Option(help="channels (smaller CNN) or magnitude")] = "channels",
    ratio: Annotated[float, typer.Option(help="share of channels (or weights) to remove in the end")] = 0.5,
    steps: Annotated[int, typer.Option(help="pruning steps of the gradual (cubic) schedule")] = 4,
    epochs_per_step: Annotated[int, typer.Option(help="fine-tuning epochs after each step")] = 2,
    kd: Annotated[bool, typer.Option("--kd/--no-kd", help="fine-tune with KD, or labels only")] = True,
    importance: Annotated[str, typer.Option(help="channel ranking: l1 (filter norm) or bn (|BN scale|)")] = "l1",
    stage: Annotated[Optional[list[int]], typer.Option(help="prune only these stages (repeat the option)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="which seed's student (default: best on validation)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="fine-tuning learning rate (default: the run's / 4)")] = None,
    round_to: Annotated[int, typer.Option(help="channel counts in multiples of this")] = 1,
    temperature: Annotated[Optional[float], typer.Option(help="KD temperature (default: the run's)")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="KD weight alpha (default: the run's)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Prune a run's student on a gradual schedule, fine-tuning with KD between steps."""
    from distillab.compress.prune_run import prune_run

    _logging(False)
    try:
        record = prune_run(run_dir, out, method=method, ratio=ratio, steps=steps, epochs_per_step=epochs_per_step,
                           kd=kd, importance=importance, stages=stage, seed=seed, lr=lr, round_to=round_to,
                           overwrite=overwrite, temperature=temperature, alpha=alpha)
    except DistillabError as error:
        _fail(error)
    first, last = record["history"][0], record["history"][-1]
    console.print(f"pruned seed {record['seed']}: test accuracy {100 * first['test_accuracy']:.2f} -> "
                  f"{100 * last['test_accuracy']:.2f} %, MACs {first['macs']} -> {last['macs']}, params "
                  f"{first['params']} -> {last['params']}, weight sparsity {100 * last['sparsity']:.0f} %; wrote {out}",
                  markup=False, highlight=False)


@app.command()
def qat(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    out: Annotated[Path, typer.Option(help="the run folder to write")],
    epochs: Annotated[int, typer.Option(help="fine-tuning epochs with int8 simulated")] = 3,
    kd: Annotated[bool, typer.Option("--kd/--no-kd", help="fine-tune with KD, or labels only")] = True,
    seed: Annotated[Optional[int], typer.Option(help="which seed's student (default: best on validation)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="fine-tuning learning rate (default: the run's / 4)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Quantization-aware training: fine-tune a run's student with int8 simulated and the KD loss;
    then `distillab export OUT --quantize int8`."""
    from distillab.compress.qat import qat_run

    _logging(False)
    try:
        record = qat_run(run_dir, out, epochs=epochs, kd=kd, seed=seed, lr=lr, overwrite=overwrite)
    except DistillabError as error:
        _fail(error)
    before, after = record["simulated_int8_before"], record["simulated_int8_after"]
    console.print(f"QAT seed {record['seed']}: simulated int8 test accuracy {100 * before['test_accuracy']:.2f} -> "
                  f"{100 * after['test_accuracy']:.2f} % (float before: {100 * record['before']['test_accuracy']:.2f}"
                  f" %); wrote {out}; now: distillab export {out} --quantize int8 --out DIR",
                  markup=False, highlight=False)


@app.command("serve-teacher")
def serve_teacher(
    spec: SpecArg,
    index: Annotated[int, typer.Option(help="which teacher of the spec")] = 0,
    k: Annotated[int, typer.Option(help="probabilities revealed per input")] = 5,
    temperature: Annotated[float, typer.Option(help="the fixed softmax temperature of the answers")] = 1.0,
    api_key_env: Annotated[str, typer.Option(help="variable holding the API key")] = "DISTILLAB_TEACHER_KEY",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port")] = 8090,
    trusted_proxies: Annotated[str, typer.Option(
        help="comma-separated addresses of reverse proxies whose X-Forwarded-For is believed (default: none, so "
             "a client cannot choose the address that its wrong keys count against)")] = "",
    set_: SetOpt = None,
) -> None:
    """Serve the spec's teacher over HTTP, answering only top-k probabilities to holders of the API key."""
    import uvicorn

    from distillab.deploy.teacher_server import create_teacher_app

    _logging(False)
    try:
        job = _load(spec, set_)
        if index >= len(job.teachers):
            raise DistillabError(f"--index {index}: the spec has {len(job.teachers)} teacher(s)")
        if job.task != "image_classification":
            raise DistillabError(f"task: serve-teacher serves image classifiers, not {job.task}")
        if job.teachers[index].url is not None:
            raise DistillabError(f"teacher.url: {job.teachers[index].url} is itself a served teacher")
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise DistillabError(f"--api-key-env: set the API key in the environment variable {api_key_env}")
        from distillab.experiment.job import Job

        one = job.model_copy(update={"teacher": job.teachers[index]})
        data = Job.from_spec(one).build_data(job.training.seeds[0])
        from distillab.experiment.teacher import get_teachers

        model, checksum, _ = get_teachers(one, data)[0]
        application = create_teacher_app(model, k=k, temperature=temperature, api_key=api_key,
                                          in_shape=data.in_shape, num_classes=data.num_classes, checksum=checksum)
    except DistillabError as error:
        _fail(error)
    except ValueError as error:
        _fail(error)
    uvicorn.run(application, host=host, port=port, log_level="warning", **proxy_settings(trusted_proxies))


@app.command("serve-model")
def serve_model(
    package_dir: Annotated[Path, typer.Argument(help="a package folder written by `distillab package`")],
    candidate: Annotated[Optional[Path], typer.Option(help="a second package, tried on --fraction of requests")] = None,
    mode: Annotated[str, typer.Option(help="shadow (compared only) or canary")] = "shadow",
    fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of requests for the candidate")] = 0.1,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port")] = 8080,
    max_batch: Annotated[int, typer.Option(min=1, help="samples per model call, at most")] = 32,
    max_wait_ms: Annotated[float, typer.Option(min=0.0, help="how long a batch waits for more requests")] = 5.0,
    max_body_mb: Annotated[float, typer.Option(help="largest request body (413 above)")] = 8.0,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads per package")] = 1,
    api_key_env: Annotated[Optional[str], typer.Option(
        help="variable holding an API key that /predict, /metrics and /stats then require")] = None,
    verify_key_env: Annotated[Optional[str], typer.Option(
        help="variable holding the key the package was signed with; refuse to start unless it matches")] = None,
    trusted_proxies: Annotated[str, typer.Option(
        help="comma-separated addresses of reverse proxies whose X-Forwarded-For is believed (default: none, so "
             "a client cannot choose the address that its wrong keys count against)")] = "",
) -> None:
    """Serve a package: /predict with micro-batching, /healthz, /metrics (Prometheus), /stats."""
    import argparse

    import uvicorn

    from distillab.deploy.server import PackageError, build

    args = argparse.Namespace(package=str(package_dir), candidate=str(candidate) if candidate else None, mode=mode,
                              fraction=fraction, max_batch=max_batch, max_wait_ms=max_wait_ms,
                              max_body_mb=max_body_mb, threads=threads, api_key_env=api_key_env,
                              verify_key_env=verify_key_env)
    try:
        application = build(args)
    except PackageError as error:
        _fail(error)
    uvicorn.run(application, host=host, port=port, log_level="warning", **proxy_settings(trusted_proxies))


@app.command()
def worker(
    max_jobs: Annotated[Optional[int], typer.Option(min=1, help="exit after this many jobs")] = None,
    idle_exit: Annotated[Optional[float], typer.Option(min=0, help="exit after this many idle seconds")] = None,
    poll: Annotated[float, typer.Option(min=0.05, help="seconds between polls of an empty queue")] = 1.0,
    heartbeat: Annotated[float, typer.Option(min=0.05, help="seconds between heartbeats")] = 1.0,
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads")] = None,
    nproc: Annotated[int, typer.Option(min=1, help="run each job in this many data-parallel processes "
                                                   "(torch.distributed)")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Claim queued jobs and run them (any number of workers, on any machines sharing the
    database and the data directory). SIGTERM hands the running job back to the queue."""
    import signal

    import torch

    from distillab.service.settings import Settings
    from distillab.service.worker import Worker

    _logging(verbose)
    os.umask(0o077)  # job folders and results: readable by the service's user only
    if threads:
        torch.set_num_threads(threads)
    if nproc > (torch.cuda.device_count() if torch.cuda.is_available() else (os.cpu_count() or 1)):
        _fail(DistillabError(f"--nproc {nproc}: more processes than this machine's "
                             f"{'GPUs' if torch.cuda.is_available() else 'CPU cores'}"))
    try:
        runner = Worker(Settings(), poll_s=poll, heartbeat_s=heartbeat, nproc=nproc)
    except Exception as error:
        _fail(f"cannot start the worker: {error}")
    signal.signal(signal.SIGTERM, runner.request_shutdown)
    signal.signal(signal.SIGINT, runner.request_shutdown)
    done = runner.serve(max_jobs=max_jobs, idle_exit_s=idle_exit)
    console.print(f"worker {runner.id}: {done} job(s) done", markup=False)


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
        err_console.print(f"[bold red]error:[/] this command needs the Python package '{error.name}', which is not "
                          f"installed: pip install 'distillab[{extra}]'", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
