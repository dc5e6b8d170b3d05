"""One service job across N data-parallel processes (``distillab worker --nproc N``).

The worker that claimed the job starts torchrun with this module; the job never leaves that
worker's claim. Every rank runs the same job (``engine.distributed``); rank 0 writes the job's
run folder and talks to the worker through two small files in the job folder:

- ``progress.json`` (rank 0 writes it about twice a second): progress, phase, metrics and, at
  the end, the outcome (completed, stopped with its reason, or failed with the error);
- ``stop`` (the worker writes it): a stop reason (cancelled, shutting down, budget), which
  rank 0's progress callback turns into ``Stop`` at the next training step.

When rank 0 stops, its process ends; the other ranks' next collective fails on the closed
connection and torchrun ends them, so nothing waits on a peer that left.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import threading
from pathlib import Path

from distillab.files import atomic_write_json
from distillab.engine.loop import Stop
from distillab.errors import DistillabError

log = logging.getLogger("distillab.worker")
PROGRESS, STOP = "progress.json", "stop"


def main(argv: list[str] | None = None) -> int:
    from distillab.engine import distributed
    from distillab.experiment.run import run
    from distillab.service.worker import Budget, JobProgress
    from distillab.spec_io import parse_spec

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job-dir", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device-seconds", type=float, default=0.0)
    parser.add_argument("--price", type=float, default=0.5)
    args = parser.parse_args(argv)
    distributed.init_from_env()
    rank, _ = distributed.world()
    claim = json.loads((args.job_dir / "claim.json").read_text())
    spec = parse_spec(claim["spec"])
    out, partial = args.job_dir / "run", args.job_dir / "run.partial"
    if rank != 0:  # the same computation in a private folder (resuming from a copy of rank 0's)
        work = Path(tempfile.mkdtemp(prefix=f"distillab-job-rank{rank}-"))
        try:
            if args.resume and partial.exists():
                shutil.copytree(partial, work / "run.partial")
            run(spec, work / "run", resume=args.resume)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    import time

    progress = JobProgress(spec, time.monotonic(), args.device_seconds, Budget(claim.get("options"), args.price))
    done = threading.Event()

    def report(outcome: dict | None = None) -> None:
        value, phase, metrics = progress.snapshot()
        atomic_write_json(args.job_dir / PROGRESS, {"progress": value, "phase": phase, "metrics": metrics,
                                                     "device_seconds": progress.device_seconds(),
                                                     "outcome": outcome})

    def reporter() -> None:
        while not done.wait(0.5):
            stop = args.job_dir / STOP
            if stop.exists() and progress.stop_reason is None:
                progress.stop_reason = stop.read_text().strip() or "stopped"
            report()

    thread = threading.Thread(target=reporter, daemon=True)
    thread.start()
    outcome = {"status": "failed", "error": "internal error"}
    try:
        run(spec, out, resume=args.resume, callbacks=progress, on_phase=progress.on_phase)
        outcome = {"status": "completed"}
    except Stop as stop:
        outcome = {"status": "stopped", "reason": stop.reason}
    except DistillabError as problem:
        outcome = {"status": "failed", "error": str(problem)}
    except Exception as problem:
        log.exception("job crashed")
        outcome = {"status": "failed", "error": f"internal error: {type(problem).__name__}: {problem}"}
    finally:
        done.set()
        thread.join()
        report(outcome)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
