"""distillab: distil a PyTorch teacher into a small student, and measure whether it helped.

    import distillab
    report = distillab.run("configs/digits_kd.yaml", out_dir="runs/digits")
    print(report.verdict)

    from distillab import Distiller, compare      # your own nn.Modules and data (distillab.api)
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

# Known third-party start-up noise that says nothing about the user's job: torchao's optional
# CUDA kernels that a CPU build cannot load, its "no triton" notice, and torch's deprecation of
# torchao's pytree registrations. Their loggers show errors only; everything else is untouched.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def run(spec, out_dir=None, **options):
    """Run a job from a JobSpec, a dict, or a path to a YAML/JSON spec; returns a Report.
    Options: resume, overwrite, callbacks, progress (default True: the start-up phases and one
    log line per epoch; see distillab.experiment.run.run)."""
    from pathlib import Path

    from distillab.experiment.run import run as run_job
    from distillab.spec_io import load_spec

    if isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    return run_job(spec, out_dir, **options)


def auto(spec, out_dir, overrides=(), **options) -> dict:
    """Search the student for a spec's ``auto`` section (constraints, budget, space): a path to a
    YAML/JSON spec. Returns the summary also written to ``out_dir/auto.json``; the chosen student's
    run is ``out_dir/run``. Options: final_seeds, final (see distillab.autodistill.search.search).
    Its progress (trials, the final run's epochs) is logged as ``run``'s is: visible on stderr
    unless the program configured logging of its own."""
    from pathlib import Path

    from distillab.autodistill.search import search
    from distillab.engine.callbacks import show_progress

    show_progress()
    return search(Path(spec), Path(out_dir), overrides, **options)


def __getattr__(name: str):
    """``Distiller``, ``compare``, ``train`` and ``evaluate`` from distillab.api, imported on first use."""
    if name in ("Distiller", "compare", "evaluate", "train", "History"):
        from distillab import api

        return getattr(api, name)
    raise AttributeError(f"module 'distillab' has no attribute {name!r}")
