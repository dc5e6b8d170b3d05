"""Load on the job service: status reads and job listings under 64 concurrent clients on
loopback, beside a bare FastAPI endpoint served the same way in the same run.

    .venv/bin/python benchmarks/api_load.py [--clients 64] [--requests 4000] [--seconds 30]
                                            [--database-url URL] [--jobs 500]

Starts ``distillab serve`` (uvicorn, one process) on a fresh data folder whose database
holds ``--jobs`` queued jobs of one user, and a bare FastAPI app (one route returning a
constant) under uvicorn with the same settings. Each scenario runs until ``--requests``
responses or ``--seconds`` pass, whichever is first, after a warm-up. Clients are
asyncio tasks in this process, each with one keep-alive connection (a minimal HTTP/1.1
client on asyncio streams, cheaper than httpx), sharing the machine with the server: on a
2-core machine the numbers measure both. Writes ``benchmarks/results/api_load.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def bare_app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"ok": True}

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"server exited early: {url}")
        time.sleep(0.2)
    raise SystemExit(f"server did not start: {url}")


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a minimal client, so that the
    load generator costs less CPU than the server it measures (httpx's pool does not)."""

    def __init__(self, port: int, headers: dict):
        self.port = port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader = self.writer = None

    async def get(self, path: str) -> int:
        return await self.request("GET", path)

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str | None = None) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.extra}"
        if body:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(f"{head}\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def scenario(name: str, port: int, make_path, headers: dict, clients: int, requests: int,
                   seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    connections = [Connection(port, headers) for _ in range(clients)]
    for connection in connections:  # warm-up: open every connection
        await connection.get(make_path())
    stop_at = time.perf_counter() + seconds
    issued = 0

    async def one_client(connection: Connection):
        nonlocal issued, errors
        while issued < requests and time.perf_counter() < stop_at:
            issued += 1
            started = time.perf_counter()
            status = await connection.get(make_path())
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in connections))
    wall = time.perf_counter() - started
    for connection in connections:
        await connection.close()
    ms = sorted(value * 1000 for value in latencies)
    return {
        "scenario": name,
        "requests": len(ms),
        "errors": errors,
        "seconds": round(wall, 2),
        "req_per_s": round(len(ms) / wall, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4000, help="per scenario, at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="per scenario, at most")
    parser.add_argument("--jobs", type=int, default=500, help="queued jobs in the database")
    parser.add_argument("--database-url", default=None, help="default: SQLite (WAL) in a temporary folder")
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        import uvicorn

        uvicorn.run(bare_app(), host="127.0.0.1", port=args.serve_bare, log_level="warning")
        return

    from sqlalchemy.orm import Session

    from distillab.service.auth import add_user
    from distillab.service.db import make_engine
    from distillab.service.migrate import upgrade
    from distillab.service.settings import Settings
    from distillab.service.store import JobStore

    work = Path(tempfile.mkdtemp(prefix="distillab-api-load-"))
    env = {**os.environ, "DISTILLAB_DATA_DIR": str(work / "data"),
           "DISTILLAB_REQUESTS_PER_MINUTE": "100000000"}  # the load is one user's; measured, not limited
    if args.database_url:
        env["DISTILLAB_DATABASE_URL"] = args.database_url
    settings = Settings(data_dir=work / "data", database_url=args.database_url)
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    with Session(engine) as session, session.begin():
        key = add_user(session, f"load-{os.getpid()}")
    with Session(engine) as session:
        from distillab.service.db import User

        user_id = session.query(User).filter_by(name=f"load-{os.getpid()}").one().id
    store = JobStore(engine)
    spec = {"name": "load", "teacher": {"model": "mlp"}, "student": {"model": "mlp"}}
    ids = [store.create(user_id, f"load {i}", "response", spec, estimated_seconds=60.0, estimated_cost_usd=0.01)
           for i in range(args.jobs)]
    engine.dispose()

    api_port, bare_port = free_port(), free_port()
    cli = [sys.executable, "-m", "distillab.cli"]
    api = subprocess.Popen([*cli, "serve", "--port", str(api_port), "--log-level", "warning"], env=env)
    bare = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(bare_port)], env=env)
    try:
        wait_ready(f"http://127.0.0.1:{api_port}/healthz", api)
        wait_ready(f"http://127.0.0.1:{bare_port}/ping", bare)
        base = "/api/v1/distillation"
        rng = random.Random(0)
        headers = {"X-API-Key": key}
        runs = [
            ("bare FastAPI GET /ping", bare_port, lambda: "/ping", {}),
            ("GET /jobs/{id} (status read)", api_port, lambda: f"{base}/jobs/{rng.choice(ids)}", headers),
            ("GET /jobs?limit=20 (listing)", api_port,
             lambda: f"{base}/jobs?limit=20&offset={rng.randrange(0, args.jobs, 20)}", headers),
        ]
        rows = []
        for name, port, make_path, hdrs in runs:
            row = asyncio.run(scenario(name, port, make_path, hdrs, args.clients, args.requests, args.seconds))
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        for process in (api, bare):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
    database = "PostgreSQL" if args.database_url and args.database_url.startswith("postgres") else "SQLite (WAL)"
    result = {
        "clients": args.clients, "max_requests": args.requests, "max_seconds": args.seconds, "jobs": args.jobs,
        "database": database, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "scenarios": rows,
        "command": "python benchmarks/api_load.py " + " ".join(sys.argv[1:]),
    }
    lines = [f"{args.clients} concurrent clients on loopback, {database}, {args.jobs} jobs in the table, "
             f"{os.cpu_count()} CPU cores shared by clients and server.", "",
             "| scenario | requests | errors | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['scenario']} | {r['requests']} | {r['errors']} | {r['req_per_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if database.startswith("SQLite") else "_postgresql"
    (RESULTS / f"api_load{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"api_load{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
