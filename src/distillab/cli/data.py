"""Data commands: download a dataset; generate sequence-level distillation data from a teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from distillab.cli.common import SetOpt, SpecArg, _load, _logging, app, command, console
from distillab.errors import DistillabError


data_app = typer.Typer(no_args_is_help=True, help="Dataset utilities.")


app.add_typer(data_app, name="data")


@command(data_app, "fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="fashion_mnist or mnist")],
    to: Annotated[Path, typer.Option(help="destination folder")],
    base_url: Annotated[Optional[str], typer.Option(help="mirror to download from")] = None,
) -> None:
    """Download a dataset's files and verify their checksums."""
    from distillab.data.fetch import fetch_dataset

    _logging(False)
    paths = fetch_dataset(name, to, base_url=base_url)
    for path in paths:
        console.print(str(path), markup=False)


@command(app)
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
    job_spec = _load(spec, set_)
    if job_spec.task != "language_modeling":
        raise DistillabError(f"{spec}: generate needs a language_modeling spec (a language-model teacher)")
    job = Job.from_spec(job_spec)
    data = job.build_data(job_spec.training.seeds[0])
    (teacher, _, _), *_ = job.load_teachers(data)
    meta = generate_corpus(teacher, data, out, prompts=prompts, prompt_tokens=prompt_tokens,
                           new_tokens=new_tokens, temperature=temperature, keep=keep, seed=seed,
                           progress=FillBar("teacher continuations", "prompts"))
    console.print_json(json.dumps(meta))
