"""Servers: the job service (serve, worker, users), a served teacher and the inference server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from distillab.cli.common import _fail, _load, _logging, app, command, console, SetOpt, SpecArg
from distillab.errors import DistillabError


users_app = typer.Typer(no_args_is_help=True, help="Accounts of the job service.")


app.add_typer(users_app, name="users")


@command(users_app, "add")
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


@command(app)
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


@command(app)
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


@command(app, "serve-teacher")
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


@command(app, "serve-model")
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


def proxy_settings(trusted: str) -> dict:
    """uvicorn's proxy options: X-Forwarded-For is believed only from the listed addresses (by
    default uvicorn believes 127.0.0.1, which lets a local client pick its own address)."""
    addresses = [a.strip() for a in (trusted or "").split(",") if a.strip()]
    return {"proxy_headers": bool(addresses), "forwarded_allow_ips": addresses or None}
