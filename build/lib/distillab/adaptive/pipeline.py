"""``AdaptivePipeline``: the inference pipeline of adaptive distillation, with calibration and monitoring.

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
and is feed-forward only, so the teacher can stay private.

Two kinds of model: an ``AdaptiveStudent`` (the ``adaptive`` strategy: G writes the student's
weights) or a student with dynamic convolutions (``adaptive_v2``: each dynamic layer's router
is G). For v2, calibration steps only the routers, on T^2 * KL(teacher || student) plus, with a
discriminator and ``adv_weight`` > 0, its output critic's -log D(p_s); the stored kernels, the
rest of the student and its BatchNorm statistics stay as trained.
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
from safetensors.torch import save_file

from distillab import losses
from distillab.adaptive.dynamic import DynamicConv2d, dynamic_layers, make_dynamic
from distillab.adaptive.generator import WeightGenerator
from distillab.adaptive.objective import Weights, discriminator_step, generator_loss
from distillab.adaptive.student import AdaptiveStudent
from distillab.data.transforms import Normalize
from distillab.files import check_output_folder, staged_folder
from distillab.errors import CheckpointError, DistillabError, SpecError
from distillab.models.critic import critic_loss, critic_step, input_condition, join_condition
from distillab.models.loading import load_state_into
from distillab.models.zoo import build_model

EXPORT_FORMAT = "distillab-adaptive/1"
EXPORT_FORMAT_V2 = "distillab-adaptive/2"  # a student with dynamic convolutions: no separate G file


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
        for name in ("calibration_calls", "recalibration_calls", "min_audits"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.calibration_steps < 1 or self.window < 1:
            raise ValueError("calibration_steps and window must be >= 1")
        if self.min_audits > self.window:
            raise ValueError(f"min_audits ({self.min_audits}) > window ({self.window}): the monitor could never fire")
        if self.calibration_lr <= 0:
            raise ValueError(f"calibration_lr must be > 0, got {self.calibration_lr}")
        if not 0 <= self.audit_fraction <= 1:
            raise ValueError(f"audit_fraction must be in [0, 1], got {self.audit_fraction}")
        if not 0 <= self.agreement_threshold <= 1:
            raise ValueError(f"agreement_threshold must be in [0, 1], got {self.agreement_threshold}")


class AdaptivePipeline:
    """Wraps a trained ``AdaptiveStudent`` or dynamic-convolution student. ``predict`` takes
    raw images (B, C, H, W), the same dtype and range as the dataset, and returns (B, K) logits."""

    def __init__(self, model: AdaptiveStudent | torch.nn.Module, *, normalize: Normalize | None = None,
                 teacher=None, discriminator: torch.nn.Module | None = None, objective: Weights = Weights(),
                 config: PipelineConfig = PipelineConfig(), condition_dims: int = 0, in_shape=None):
        """``model`` is used (and calibrated) in place. An inactive ``AdaptiveStudent`` (G never
        trained) is activated, which starts G from the base weights. ``discriminator`` is a
        ``MultiHeadDiscriminator`` (v1) or v2's output critic. ``in_shape`` (C, H, W), when
        given, is checked on every call."""
        self.dynamic = not isinstance(model, AdaptiveStudent)
        if self.dynamic and not dynamic_layers(model):
            raise ValueError(f"AdaptivePipeline takes an AdaptiveStudent or a student with dynamic convolutions "
                             f"(adaptive_v2); a {type(model).__name__} is neither")
        if not self.dynamic and not model.is_active:
            model.activate()
        self.model = model.eval()
        self.normalize = normalize
        self.in_shape = tuple(in_shape) if in_shape is not None else None
        self.teacher = teacher.eval() if teacher is not None else None
        self.discriminator = discriminator.eval() if discriminator is not None else None  # train() only to step
        self.objective = objective
        self.config = config
        self.condition_dims = condition_dims
        self._audit_generator = torch.Generator().manual_seed(config.seed)
        self._weights_rng = torch.Generator().manual_seed(config.seed + 1)  # D's weight-head subsamples
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
        the teacher (the mean of the job's teachers' logits when there are several). It
        shares the strategy's modules: calibration changes the strategy's G and D too."""
        teachers = list(strategy.teachers)
        teacher = teachers[0] if len(teachers) == 1 else _MeanTeacher(teachers)
        params = strategy.params
        objective = (params.objective() if hasattr(params, "objective")  # v2: KD at its T, the critic's weight
                     else Weights(temperature=params.temperature, alpha=params.alpha, adv_weight=params.adv_weight))
        return cls(strategy.student, normalize=normalize, teacher=teacher, discriminator=strategy.discriminator,
                   objective=objective, config=config, condition_dims=strategy.condition_dims,
                   in_shape=strategy.in_shape)

    @property
    def can_calibrate(self) -> bool:
        """v1 calibrates G against D's heads, so it needs both; v2 needs only the teacher (its
        critic, when there is one, is a weak regulariser)."""
        return self.teacher is not None and (self.dynamic or self.discriminator is not None)

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        """G: v1's generator, or v2's routers (each dynamic layer's router and heads)."""
        if not self.dynamic:
            return list(self.model.generator.parameters())
        return [p for layer in dynamic_layers(self.model) for module in (layer.router, layer.head)
                for p in module.parameters()]

    @property
    def calibrating(self) -> bool:
        return self._calibration_left > 0 and self.can_calibrate

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"predict expects a (B, C, H, W) tensor of images, got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        if self.in_shape is not None and tuple(images.shape[1:]) != self.in_shape:
            raise ValueError(f"images of shape {tuple(images.shape[1:])}; this model takes {self.in_shape}")
        if self.normalize is not None and self.normalize.scale != 1 and images.is_floating_point():
            raise ValueError("this model takes raw uint8 images (0-255), like its training data; got floats")
        device = next(self.model.parameters()).device
        images = images.cpu()
        inputs = self.normalize(images) if self.normalize is not None else images.float()
        return inputs.to(device)

    def calibrate(self, inputs: torch.Tensor) -> dict[str, float]:
        """One calibration step on normalised inputs: D (optionally) then G, from the teacher's
        outputs only (no labels). Returns the losses."""
        if not self.can_calibrate:
            missing = " and ".join(n for n, m in (("teacher", self.teacher), ("discriminator", self.discriminator))
                                   if m is None)
            raise RuntimeError(f"calibration needs the teacher and the discriminator; this pipeline has no {missing}")
        if self._g_optimizer is None:
            self._g_optimizer = torch.optim.Adam(self.generator_parameters(), lr=self.config.calibration_lr)
            if self.discriminator is not None:
                self._d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.config.calibration_lr,
                                                     betas=(0.5, 0.999))
        with torch.no_grad():
            teacher_logits = self.teacher(inputs).float()
        condition = input_condition(inputs, self.condition_dims)
        if self.dynamic:
            return self._calibrate_routers(inputs, teacher_logits, condition)
        logs: dict[str, float] = {}
        for _ in range(self.config.calibration_steps):
            generated, mu, logvar = self.model.generate(inputs)
            student_logits = self.model.run_student(inputs, generated)
            if self.config.update_discriminator:
                self.discriminator.train()  # spectral norm's power iteration runs only in train mode
                try:
                    logs.update(discriminator_step(self.discriminator, self._d_optimizer, teacher_logits,
                                                   student_logits, generated, condition, self.objective,
                                                   self._weights_rng))
                finally:
                    self.discriminator.eval()
            loss, g_logs = generator_loss(self.discriminator, teacher_logits, student_logits, generated, mu, logvar,
                                          condition, self.objective, rng=self._weights_rng)
            self._g_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._g_optimizer.step()
            self.calibration_steps += 1
            logs.update(g_logs, g_loss=loss.item())
        self.last_calibration = logs
        return logs

    def _calibrate_routers(self, inputs, teacher_logits, condition) -> dict[str, float]:
        """v2: steps on the routers only; the model stays in eval mode (BatchNorm statistics and
        the routing temperature as trained)."""
        T, critic = self.objective.temperature, self.discriminator
        adversarial = critic is not None and self.objective.adv_weight > 0
        logs: dict[str, float] = {}
        for _ in range(self.config.calibration_steps):
            student_logits = self.model(inputs).float()
            if adversarial and self.config.update_discriminator:
                critic.train()  # spectral norm's power iteration runs only in train mode
                try:
                    logs.update(critic_step(critic, self._d_optimizer, teacher_logits, student_logits, condition, T))
                finally:
                    critic.eval()
            soft = losses.soft_kl(student_logits, teacher_logits, T)
            loss = soft
            logs["soft"] = soft.item()
            if adversarial:
                adv = critic_loss(critic, student_logits, condition, T)
                loss = loss + self.objective.adv_weight * adv
                logs["adv_output"] = adv.item()
            self._g_optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=self.generator_parameters())  # no gradient left on the kernels or the rest
            self._g_optimizer.step()
            self.calibration_steps += 1
            logs["g_loss"] = loss.item()
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
            # Audits judge the calibrated generator: none are recorded while it is being calibrated.
            if self.teacher is not None and self.config.audit_fraction > 0 and not self.calibrating:
                self._audit(inputs, logits)
        if inputs.device.type == "cuda":
            torch.cuda.synchronize()
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
            critic = self.discriminator if self.dynamic else self.discriminator.output
            scores = critic(join_condition(probs, condition))
            self._d_scores.extend(torch.sigmoid(scores).tolist())
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
             num_classes: int, source: str | None = None, overwrite: bool = True) -> Path:
        """Write the pipeline into ``out_dir``: a new or empty folder, or an earlier save (replaced
        whole; any other folder is refused). Built aside, then renamed into place."""
        final = check_output_folder(out_dir, "adaptive", overwrite=overwrite, inputs=[source] if source else (),
                                    error_cls=SpecError)
        with staged_folder(final, "adaptive") as staging:
            self._write(staging, student_model, student_args, in_shape, num_classes, source)
        return final

    def _write(self, out_dir: Path, student_model: str, student_args: dict | None, in_shape, num_classes: int,
               source: str | None) -> None:
        student = self.model if self.dynamic else self.model.student
        states = {"student.safetensors": student.state_dict()}
        if not self.dynamic:
            states["generator.safetensors"] = self.model.generator.state_dict()
        for name, state in states.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out_dir / name))
        normalize = None if self.normalize is None else {"mean": list(self.normalize.mean),
                                                         "std": list(self.normalize.std),
                                                         "scale": self.normalize.scale}
        meta = {
            "format": EXPORT_FORMAT_V2 if self.dynamic else EXPORT_FORMAT,
            "student": {"model": student_model, "model_args": student_args or {}},
            "in_shape": list(in_shape),
            "num_classes": num_classes,
            "normalize": normalize,
            "source": source,
        }
        if self.dynamic:
            layers = {name: m for name, m in self.model.named_modules() if isinstance(m, DynamicConv2d)}
            first = next(iter(layers.values()))
            meta["dynamic"] = {"layers": list(layers), "experts": first.experts, "gates": first.gates,
                               "variational": first.variational}
        else:
            meta["generator"] = self.model.generator.describe()
        (out_dir / "adaptive.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path | str, config: PipelineConfig = PipelineConfig()) -> "AdaptivePipeline":
        """A feed-forward pipeline from ``save``'s folder; no teacher is needed or loaded."""
        directory = Path(directory)
        meta_path = directory / "adaptive.json"
        if not meta_path.is_file():
            raise CheckpointError(f"{directory}: no adaptive.json; not an exported adaptive pipeline")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{meta_path}: not readable JSON ({error})") from None
        if not isinstance(meta, dict) or meta.get("format") not in (EXPORT_FORMAT, EXPORT_FORMAT_V2):
            found = meta.get("format") if isinstance(meta, dict) else None
            raise CheckpointError(f"{meta_path}: format {found!r}, expected {EXPORT_FORMAT!r} or {EXPORT_FORMAT_V2!r}")
        try:
            student = build_model(meta["student"]["model"], meta["in_shape"], meta["num_classes"],
                                  meta["student"]["model_args"])
            if meta["format"] == EXPORT_FORMAT_V2:
                d = meta["dynamic"]
                make_dynamic(student, d["layers"], d["experts"], d["gates"], variational=d["variational"])
        except (KeyError, TypeError, DistillabError) as error:
            raise CheckpointError(f"{meta_path}: incomplete or invalid ({type(error).__name__}: {error})") from None
        normalize = Normalize(tuple(meta["normalize"]["mean"]), tuple(meta["normalize"]["std"]),
                              meta["normalize"]["scale"]) if meta.get("normalize") else None
        if meta["format"] == EXPORT_FORMAT_V2:
            load_state_into(student, directory / "student.safetensors", str(directory))
            return cls(student.eval(), normalize=normalize, config=config, in_shape=meta["in_shape"])
        try:
            g = meta["generator"]
            generator = WeightGenerator(student, meta["in_shape"], g["mode"], g["layers"], g["latent_dims"],
                                        g["hidden"], g["rank"], tuple(g["encoder_channels"]))
        except (KeyError, TypeError, DistillabError) as error:
            raise CheckpointError(f"{meta_path}: incomplete or invalid ({type(error).__name__}: {error})") from None
        load_state_into(student, directory / "student.safetensors", str(directory))
        load_state_into(generator, directory / "generator.safetensors", str(directory))
        model = AdaptiveStudent(student, generator)
        model.active.fill_(True)
        model.student.eval()
        return cls(model, normalize=normalize, config=config, in_shape=meta["in_shape"])


class _MeanTeacher(torch.nn.Module):
    def __init__(self, teachers):
        super().__init__()
        self.teachers = torch.nn.ModuleList(teachers)

    def forward(self, inputs):
        return torch.stack([t(inputs).float() for t in self.teachers]).mean(0)

