"""What pruning and quantization-aware training share: fine-tuning a finished run's student
through the one training loop (response KD from the run's teacher cache, or labels only), and
writing the result as a one-seed run folder that ``export`` and ``package`` read like any run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from distillab.compress.runs import RunStudent, run_student
from distillab.files import atomic_write_json, staged_folder
from distillab.errors import DistillabError


@dataclass
class Finetuning:
    """A run's student with everything needed to train it further on the run's data."""

    student: RunStudent
    spec: object
    task: object
    training: object  # the run's training settings, with this fine-tuning's epochs and lr
    device: object
    kd: bool
    teachers: list
    caches: tuple
    params: object  # response KD's temperature and alpha, taken from the run when it used response

    @classmethod
    def of_run(cls, run_dir: Path | str, seed: int | None, *, kd: bool, epochs: int, lr: float | None,
               precision: str | None = None, kd_params: dict | None = None) -> Finetuning:
        """``kd_params`` (temperature, alpha) override the run's response-KD settings."""
        from distillab.runtime import resolve_device
        from distillab.experiment.job import Job
        from distillab.spec_io import parse_spec
        from distillab.strategies import STRATEGIES

        student = run_student(run_dir, seed)
        spec = parse_spec(student.report["spec"])
        if not STRATEGIES[spec.strategy.name].compressible:
            raise DistillabError(f"{run_dir}: an {spec.strategy.name} student's dynamic convolutions are neither pruned "
                                 "nor quantization-trained; export it (distillab export, optionally --quantize) instead")
        job = Job.from_spec(spec)
        update = {"epochs": max(1, epochs), "warmup_epochs": 0.0,
                  "lr": lr if lr is not None else spec.training.lr / 4}
        if precision is not None:
            update["precision"] = precision
        training = spec.training.model_copy(update=update)
        response = STRATEGIES["response"]
        teachers, caches = [], ()
        if kd:
            teachers = job.load_teachers(student.data)
            caches = (job.task.teacher_caches(spec, student.data, teachers, response.Params())
                      if spec.cache.enabled else ())
        chosen = ({k: v for k, v in spec.strategy.params.items() if k in ("temperature", "alpha")}
                  if spec.strategy.name == "response" else {})
        chosen.update({k: v for k, v in (kd_params or {}).items() if v is not None})
        try:
            params = response.Params.model_validate(chosen)
        except ValueError as error:
            raise DistillabError(f"KD settings {chosen}: {error}") from None
        return cls(student, spec, job.task, training, resolve_device(training.device), kd, teachers, caches, params)

    @property
    def data(self):
        return self.student.data

    @property
    def seed(self) -> int:
        return self.student.seed

    def train(self, model, seed: int, run_dir: Path, description: str):
        """Train ``model`` for the fine-tuning's epochs; returns the student with the best
        validation score of those epochs."""
        from distillab.engine.loop import fit
        from distillab.strategies import STRATEGIES

        in_shape = self.data.in_shape
        if self.kd:
            strategy = STRATEGIES["response"]([t for t, _, _ in self.teachers], model, self.params, in_shape=in_shape)
        else:
            strategy = STRATEGIES["none"]([], model, STRATEGIES["none"].Params(), in_shape=in_shape)
        fit(strategy, self.data, self.training, seed, run_dir, caches=self.caches if self.kd else (),
            tensorboard=False, description=description, task=self.task)
        return strategy.student

    def measure(self, model) -> dict:
        from distillab.compress.prune import sparsity
        from distillab.models.facts import macs_per_sample, model_facts

        batch = self.training.eval_batch_size
        val = self.task.evaluate(model, self.data, "val", batch, self.device)
        test = self.task.evaluate(model, self.data, "test", batch, self.device)
        facts = model_facts(model.cpu(), self.data.in_shape, repeats=20)
        return {"val_accuracy": val.value, "test_accuracy": test.value, "params": facts["params"],
                "macs": macs_per_sample(model, self.data.in_shape), "latency_ms": facts["latency_ms"],
                "latency_ms_batch256": facts["latency_ms_batch256"], "sparsity": sparsity(model)}


def write_derived_run(out: Path, tuning: Finetuning, model, *, suffix: str, student_spec: dict, record: dict,
                      record_name: str, before: dict, after: dict, verdict: str) -> None:
    """The fine-tuned student as a one-seed run folder: ``report.json`` (the run's teacher rows,
    the student before and after), ``spec.json`` naming the new architecture, the weights, and
    ``{record_name}.json`` with the history."""
    from safetensors.torch import save_file

    spec, seed = tuning.spec, tuning.seed
    derived_spec = spec.model_dump(mode="json")
    derived_spec["name"] = f"{spec.name}-{suffix}"
    derived_spec["student"] = student_spec
    derived_spec["training"]["seeds"] = [seed]
    report = tuning.student.report
    teachers = [entry for entry in report["models"] if entry["role"] == "teacher"]
    summary = lambda value: {"mean": value, "std": 0.0, "per_seed": [value]}  # noqa: E731 - one seed
    strategy = "response" if tuning.kd else "none"

    def row(name: str, role: str, strategy_name: str, model_name: str, measured: dict) -> dict:
        return {"name": name, "role": role, "strategy": strategy_name, "model": model_name,
                "accuracy": summary(measured["test_accuracy"]), "val_accuracy": summary(measured["val_accuracy"]),
                "params": measured["params"], "macs": measured["macs"], "latency_ms": measured["latency_ms"]}

    new_report = {"name": derived_spec["name"], "created": report.get("created"), "dataset": report["dataset"],
                  "seeds": [seed],
                  "strategy": {"name": strategy, "params": tuning.params.model_dump() if tuning.kd else {}},
                  "models": [*teachers, row("student_before", "source", report["strategy"]["name"],
                                            spec.student.model, before),
                             row(f"student_{suffix}", "distilled", strategy, student_spec["model"], after)],
                  "comparisons": [], "verdict": verdict, "spec": derived_spec, record_name: record}
    with staged_folder(out, record_name) as staging:
        phase = staging / f"seed_{seed}" / "distilled"
        phase.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(phase / "student.safetensors"))
        atomic_write_json(phase / "result.json", {"val_accuracy": after["val_accuracy"],
                                                  "test_accuracy": after["test_accuracy"], "seed": seed})
        atomic_write_json(staging / f"{record_name}.json", record)
        atomic_write_json(staging / "report.json", new_report)
        (staging / "spec.json").write_text(json.dumps(derived_spec, indent=2))
