"""``AdaptivePipeline``: the inference pipeline of seed 000, with calibration and monitoring.

    predict(x):
        if calibrating:                       # the first N calls, or after the monitor asks
            W = G(x); s = student(x; W); t = teacher(x)
            D takes a step on (t, s, W); G takes a step on D's feedback + KL(t || s)
        W = G(x); return student(x; W)        # feed-forward only

Monitoring: on a random ``audit_fraction`` of the inputs the teacher also runs; the pipeline
keeps the rolling agreement (same top-1 class) of the last ``window`` audited inputs and D's
output-head score. When the agreement falls below ``agreement_threshold`` (with at least
``min_audits`` audits in the window) it re-calibrates for ``recalibration_calls`` calls.
Calibration and audits need the teacher; an exported pipeline (``save``/``load``) has none
and is feed-forward only, which is the deployment the seed names (the teacher stays private).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from distillab.adaptive.discriminator import MultiHeadDiscriminator
from distillab.adaptive.generator import WeightGenerator
from distillab.adaptive.objective import Weights, discriminator_step, generator_loss, input_condition
from distillab.adaptive.student import AdaptiveStudent
from distillab.data.transforms import Normalize
from distillab.engine.checkpoint import atomic_write_text
from distillab.errors import CheckpointError
from distillab.models.zoo import build_model

EXPORT_FORMAT = "distillab-adaptive/1"


@dataclass(frozen=True)
class PipelineConfig:
    calibration_calls: int = 20  # predict() calls that calibrate at the start
    calibration_lr: float = 1e-4  # Adam learning rate of G (and D) during calibration
    calibration_steps: int = 1  # G updates per calibrating call
    audit_fraction: float = 0.1  # share of inputs whose prediction is checked against the teacher
    agreement_threshold: float = 0.85  # re-calibrate when the rolling agreement falls below this
    window: int = 500  # audited inputs in the rolling window
    min_audits: int = 50  # audits needed before the monitor may trigger
    recalibration_calls: int = 20  # calls that calibrate after a trigger
    update_discriminator: bool = True  # D also takes a step on every calibration call
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.audit_fraction <= 1:
            raise ValueError(f"audit_fraction must be in [0, 1], got {self.audit_fraction}")
        if not 0 <= self.agreement_threshold <= 1:
            raise ValueError(f"agreement_threshold must be in [0, 1], got {self.agreement_threshold}")


class AdaptivePipeline:
    """Wraps a trained ``AdaptiveStudent``. ``predict`` takes raw images (B, C, H, W), the
    same dtype and range as the dataset, and returns (B, K) logits."""

    def __init__(self, model: AdaptiveStudent, *, normalize: Normalize | None = None, teacher=None,
                 discriminator: MultiHeadDiscriminator | None = None, objective: Weights = Weights(),
                 config: PipelineConfig = PipelineConfig(), condition_dims: int = 0):
        if not model.is_active:
            model.activate()
        self.model = model.eval()
        self.normalize = normalize
        self.teacher = teacher.eval() if teacher is not None else None
        self.discriminator = discriminator
        self.objective = objective
        self.config = config
        self.condition_dims = condition_dims
        self._audit_generator = torch.Generator().manual_seed(config.seed)
        self._g_optimizer = self._d_optimizer = None
        self.calls = self.samples = self.calibration_steps = self.recalibrations = self.audits = 0
        self._calibration_left = config.calibration_calls if teacher is not None else 0
        self._agreement: deque[float] = deque(maxlen=config.window)
        self._d_scores: deque[float] = deque(maxlen=config.window)
        self._latency_ms: deque[float] = deque(maxlen=10_000)
        self.last_calibration: dict[str, float] = {}

    @classmethod
    def from_strategy(cls, strategy, normalize=None, config: PipelineConfig = PipelineConfig()):
        """A pipeline with everything an ``adaptive`` strategy trained: G, the student, D and
        the teacher (the mean of the job's teachers' logits when there are several)."""
        teachers = list(strategy.teachers)
        teacher = teachers[0] if len(teachers) == 1 else _MeanTeacher(teachers)
        return cls(strategy.student, normalize=normalize, teacher=teacher, discriminator=strategy.discriminator,
                   objective=strategy.params.objective(), config=config, condition_dims=strategy.condition_dims)

    @property
    def calibrating(self) -> bool:
        return self._calibration_left > 0 and self.teacher is not None

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        inputs = self.normalize(images) if self.normalize is not None else images.float()
        return inputs.to(device)

    def calibrate(self, inputs: torch.Tensor) -> dict[str, float]:
        """One calibration step on normalised inputs: D (optionally) then G, from the teacher's
        outputs only (no labels). Returns the losses."""
        if self.teacher is None or self.discriminator is None:
            raise RuntimeError("calibration needs the teacher and the discriminator; this pipeline has neither")
        if self._g_optimizer is None:
            self._g_optimizer = torch.optim.Adam(self.model.generator.parameters(), lr=self.config.calibration_lr)
            self._d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.config.calibration_lr,
                                                 betas=(0.5, 0.999))
        with torch.no_grad():
            teacher_logits = self.teacher(inputs).float()
        condition = input_condition(inputs, self.condition_dims)
        logs: dict[str, float] = {}
        for _ in range(self.config.calibration_steps):
            generated, mu, logvar = self.model.generate(inputs)
            student_logits = self.model.run_student(inputs, generated)
            if self.config.update_discriminator:
                logs.update(discriminator_step(self.discriminator, self._d_optimizer, teacher_logits,
                                               student_logits, generated, condition, self.objective))
            loss, g_logs = generator_loss(self.discriminator, teacher_logits, student_logits, generated, mu, logvar,
                                          condition, self.objective)
            self._g_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._g_optimizer.step()
            self.calibration_steps += 1
            logs.update(g_logs, g_loss=loss.item())
        self.last_calibration = logs
        return logs

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        inputs = self._inputs(images)
        if self.calibrating:
            self.calibrate(inputs)
            self._calibration_left -= 1
        with torch.no_grad():
            logits = self.model(inputs)
            if self.teacher is not None and self.config.audit_fraction > 0:
                self._audit(inputs, logits)
        self.calls += 1
        self.samples += len(images)
        self._latency_ms.append((time.perf_counter() - started) * 1000)
        return logits

    def _audit(self, inputs, logits):
        chosen = torch.rand(len(inputs), generator=self._audit_generator) < self.config.audit_fraction
        if not chosen.any():
            return
        chosen = chosen.to(inputs.device)
        teacher_logits = self.teacher(inputs[chosen]).float()
        agree = (teacher_logits.argmax(-1) == logits[chosen].argmax(-1)).float().tolist()
        self._agreement.extend(agree)
        self.audits += len(agree)
        if self.discriminator is not None:
            probs = F.softmax(logits[chosen].float() / self.objective.temperature, -1)
            condition = input_condition(inputs[chosen], self.condition_dims)
            joined = probs if condition is None else torch.cat([probs, condition], 1)
            self._d_scores.extend(torch.sigmoid(self.discriminator.output(joined)).tolist())
        if (not self.calibrating and len(self._agreement) >= self.config.min_audits
                and self.agreement < self.config.agreement_threshold):
            self._calibration_left = self.config.recalibration_calls
            self.recalibrations += 1
            self._agreement.clear()  # judge the re-calibrated generator on fresh audits
            self._d_scores.clear()

    @property
    def agreement(self) -> float | None:
        return float(np.mean(self._agreement)) if self._agreement else None

    def stats(self) -> dict:
        latency = np.array(self._latency_ms) if self._latency_ms else None
        percentiles = ({f"p{q}": float(np.percentile(latency, q)) for q in (50, 90, 99)}
                       if latency is not None else {})
        return {
            "calls": self.calls,
            "samples": self.samples,
            "calibrating": self.calibrating,
            "calibration_steps": self.calibration_steps,
            "recalibrations": self.recalibrations,
            "audits": self.audits,
            "agreement": self.agreement,
            "discriminator_score": float(np.mean(self._d_scores)) if self._d_scores else None,
            "latency_ms": percentiles,
            "teacher": self.teacher is not None,
        }

    def request_calibration(self, calls: int | None = None) -> None:
        """Calibrate on the next ``calls`` calls (default ``recalibration_calls``)."""
        self._calibration_left = calls if calls is not None else self.config.recalibration_calls

    # --- export: G and the student, never the teacher or D -------------------------------------------------
    def save(self, out_dir: Path | str, *, student_model: str, student_args: dict | None, in_shape,
             num_classes: int, source: str | None = None) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        generator_state = {k: v.detach().cpu().contiguous() for k, v in self.model.generator.state_dict().items()}
        student_state = {k: v.detach().cpu().contiguous() for k, v in self.model.student.state_dict().items()}
        for name, state in (("generator.safetensors", generator_state), ("student.safetensors", student_state)):
            partial = out_dir / (name + ".partial")
            save_file(state, str(partial))
            partial.replace(out_dir / name)
        normalize = None if self.normalize is None else {"mean": list(self.normalize.mean),
                                                         "std": list(self.normalize.std),
                                                         "scale": self.normalize.scale}
        meta = {
            "format": EXPORT_FORMAT,
            "student": {"model": student_model, "model_args": student_args or {}},
            "generator": self.model.generator.describe(),
            "in_shape": list(in_shape),
            "num_classes": num_classes,
            "normalize": normalize,
            "source": source,
        }
        atomic_write_text(out_dir / "adaptive.json", json.dumps(meta, indent=2) + "\n")
        return out_dir

    @classmethod
    def load(cls, directory: Path | str, config: PipelineConfig = PipelineConfig()) -> "AdaptivePipeline":
        """A feed-forward pipeline from ``save``'s folder; no teacher is needed or loaded."""
        directory = Path(directory)
        meta_path = directory / "adaptive.json"
        if not meta_path.is_file():
            raise CheckpointError(f"{directory}: no adaptive.json; not an exported adaptive pipeline")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
        student = build_model(meta["student"]["model"], meta["in_shape"], meta["num_classes"],
                              meta["student"]["model_args"])
        g = meta["generator"]
        generator = WeightGenerator(student, meta["in_shape"], g["mode"], g["layers"], g["latent_dims"], g["hidden"],
                                    g["rank"], tuple(g["encoder_channels"]))
        try:
            student.load_state_dict(load_file(str(directory / "student.safetensors")))
            generator.load_state_dict(load_file(str(directory / "generator.safetensors")))
        except (RuntimeError, FileNotFoundError) as error:
            raise CheckpointError(f"{directory}: the exported weights do not load: {str(error)[:300]}") from None
        model = AdaptiveStudent(student, generator)
        model.active.fill_(True)
        model.student.eval()
        normalize = Normalize(tuple(meta["normalize"]["mean"]), tuple(meta["normalize"]["std"]),
                              meta["normalize"]["scale"]) if meta.get("normalize") else None
        return cls(model, normalize=normalize, config=config)


class _MeanTeacher(torch.nn.Module):
    def __init__(self, teachers):
        super().__init__()
        self.teachers = torch.nn.ModuleList(teachers)

    def forward(self, inputs):
        return torch.stack([t(inputs).float() for t in self.teachers]).mean(0)

