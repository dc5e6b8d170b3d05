"""Where a status read's time goes inside the service: the app in this process (httpx's ASGI
transport, no network), one user, 500 jobs, ``--requests`` sequential GET /jobs/{id} and GET
/jobs?limit=20, under cProfile. Prints and saves the trips to the thread pool per request
(FastAPI runs every sync dependency and route there) and the profile's top lines.

    .venv/bin/python benchmarks/api_profile.py   # -> benchmarks/results/api_profile.md

The counts are exact; the times are of this process alone (run it on an idle machine).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "api_profile.md"))
    args = parser.parse_args()
    os.environ["DISTILLAB_REQUESTS_PER_MINUTE"] = "100000000"
    import httpx

    from distillab.files import atomic_write_text
    from distillab.service.app import PREFIX, create_app
    from distillab.service.auth import add_user
    from distillab.service.db import User
    from distillab.service.settings import Settings

    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="distillab-profile-")) / "data"))
    with app.state.write_sessions.begin() as session:
        key = add_user(session, "profiler")
        user_id = session.query(User).filter_by(name="profiler").one().id
    jobs = [app.state.store.create(user_id, f"job {i}", "response", {"name": f"job {i}", "student": {"model": "mlp"}})
            for i in range(500)]

    async def load(path: str, count: int) -> float:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://profile") as client:
            headers = {"X-API-Key": key}
            for _ in range(20):
                await client.get(PREFIX + path, headers=headers)
            started = time.perf_counter()
            for _ in range(count):
                response = await client.get(PREFIX + path, headers=headers)
                assert response.status_code == 200, response.text
            return (time.perf_counter() - started) / count * 1000

    # every trip to a worker thread: FastAPI's (starlette's run_in_threadpool -> anyio) and the app's
    # own asyncio.to_thread, counted by wrapping both
    import anyio.to_thread

    trips = {"count": 0}

    def counted(call):
        async def wrapper(*args, **kwargs):
            trips["count"] += 1
            return await call(*args, **kwargs)
        return wrapper

    anyio.to_thread.run_sync = counted(anyio.to_thread.run_sync)
    asyncio.to_thread = counted(asyncio.to_thread)

    lines = ["In-process profile of the service (`benchmarks/api_profile.py`): sequential requests through httpx's "
             "ASGI transport, one user, 500 jobs.", ""]
    for label, path in (("GET /jobs/{id} (status read)", f"/jobs/{jobs[0]}"), ("GET /jobs?limit=20", "/jobs?limit=20")):
        trips["count"] = 0
        profiler = cProfile.Profile()
        profiler.enable()
        ms = asyncio.run(load(path, args.requests))
        profiler.disable()
        hops = trips["count"]
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(12)
        top = [line for line in buffer.getvalue().splitlines() if line.strip()][-13:]
        lines += [f"### {label}", "",
                  f"- {ms:.2f} ms per request (profiled, sequential, client in the same process)",
                  f"- {hops / (args.requests + 20):.1f} trips to the thread pool per request", "",
                  "```", *[line.replace(str(ROOT) + "/", "") for line in top], "```", ""]
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
