"""What a finished language-model run adds to its report and its folder:

- for a student cut from the teacher: the cut (shape, layers kept, block influence) and its
  zero-shot bits per character on validation and test, before any training;
- for a transformers student (``teacher_layers``, ``teacher_width``, ``teacher_pruned``,
  ``hf``): the best distilled seed (on validation) as a standard Hugging Face folder in the run
  folder itself -- ``config.json``, ``model.safetensors``, the tokenizer files -- which
  ``AutoModelForCausalLM.from_pretrained(RUN)`` loads without distillab;
- for such a student sharing the teacher's tokenizer: the teacher's greedy decoding with the
  student as its draft model (``models.draft``), on prompts from the test text, the draft's
  lookahead chosen on prompts from the validation text.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("distillab")


def _best_distilled_seed(task, seeds: list[int], distilled: list[dict]) -> int:
    scored = [(run["val_accuracy"], seed) for seed, run in zip(seeds, distilled) if run.get("val_accuracy") is not None]
    best = scored[0]
    for candidate in scored[1:]:
        if task.better(candidate[0], best[0]):
            best = candidate
    return best[1]


def test_prompts(data, prompts: int, prompt_tokens: int, split: str = "test") -> torch.Tensor:
    """``prompts`` evenly spaced prompts of ``prompt_tokens`` tokens from the blocks of ``split``."""
    blocks = getattr(data, split).tokens
    length = min(prompt_tokens, blocks.shape[1])
    index = torch.linspace(0, len(blocks) - 1, min(prompts, len(blocks))).round().long().unique()
    return blocks[index, :length]


def finish_lm_run(job, data, teachers, phases: dict, folder: Path, device) -> dict:
    from distillab.models.hf import CausalLM, save_hf_folder
    from distillab.models.loading import load_state_into

    spec = job.settings
    seeds = spec.training.seeds
    extras: dict = {}
    fresh = job.student_for(seeds[0], data).to(device)
    cut = getattr(fresh, "cut", None)
    if cut:
        zero_shot = {f"{split}_bits_per_character": job.task.evaluate(fresh, data, split, spec.training.eval_batch_size,
                                                                      device).value for split in ("val", "test")}
        extras["student_cut"] = {**cut, "zero_shot": zero_shot}
        log.info("the cut student before training: %.4f bits/char on validation", zero_shot["val_bits_per_character"])
    if not isinstance(fresh, CausalLM) or job.strategy_cls.stages(job.params):
        return extras
    seed = _best_distilled_seed(job.task, seeds, phases["distilled"])
    weights = folder / f"seed_{seed}" / "distilled" / "student.safetensors"
    if not weights.is_file():
        return extras
    student = load_state_into(fresh, weights, f"{weights}").eval()  # on ``device``, as the teacher
    files = save_hf_folder(student, folder)
    extras["hf_folder"] = {"seed": seed, "files": files,
                           "load": "transformers.AutoModelForCausalLM.from_pretrained(<run folder>)"}
    teacher = teachers[0][0] if teachers else None
    prompts = spec.output.draft_prompts
    if prompts and isinstance(teacher, CausalLM):
        from distillab.models.draft import same_vocabulary, speculative_decoding

        if same_vocabulary(teacher, student):
            log.info("timing the teacher's greedy decoding with the student as its draft (%d prompts)", prompts)
            lookahead = spec.output.draft_lookahead
            extras["draft"] = speculative_decoding(
                teacher, student, test_prompts(data, prompts, 32), spec.output.draft_tokens, lookahead=lookahead,
                choice_prompts=None if lookahead else test_prompts(data, min(4, prompts), 32, "val"))
    return extras


def render_lm_extras(report: dict) -> list[str]:
    """Markdown lines of what ``finish_lm_run`` added."""
    lines = []
    cut = report.get("student_cut")
    if cut:
        shape, full = cut["shape"], cut["teacher_shape"]
        lines += ["", f"The student was cut from the teacher ({cut['calibration_tokens']:,} calibration tokens, layers "
                      f"ranked by {cut['layer_metric'].replace('_', ' ')}): "
                      + ", ".join(f"{k} {full[k]} → {shape[k]}" for k in shape if shape[k] != full[k])
                      + f". Before any training it scored {cut['zero_shot']['val_bits_per_character']:.4f} bits/char "
                        f"on validation and {cut['zero_shot']['test_bits_per_character']:.4f} on test."]
    if report.get("hf_folder"):
        lines += ["", f"The distilled student of seed {report['hf_folder']['seed']} (best on validation) is a Hugging "
                      "Face folder: `AutoModelForCausalLM.from_pretrained` loads this run folder as it is."]
    draft = report.get("draft")
    if draft:
        lines += ["", f"As the teacher's draft model (greedy, batch 1, {draft['prompts']} test prompts × "
                      f"{draft['new_tokens']} new tokens): {draft['assisted_tokens_per_s']:.1f} tokens/s against "
                      f"{draft['teacher_tokens_per_s']:.1f} for the teacher alone ({draft['speedup']:.2f}×), "
                      f"{100 * draft['acceptance_rate']:.1f} % of draft tokens accepted, output "
                      + ("identical." if draft["identical_output"] else
                         f"identical for {draft['identical_prompts']} of {draft['prompts']} prompts.")]
        choice = draft.get("lookahead_choice")
        if choice:
            lines += ["", f"The draft proposed {draft['lookahead']} token(s) per step, chosen on "
                          f"{choice['chosen_on']}: its top-1 matched the teacher's next token "
                          f"{100 * choice['agreement']:.1f} % of the time at {choice['relative_cost']:.2f}× the "
                          f"teacher's cost per token, for an expected {choice['expected_speedup']:.2f}×."]
        elif "lookahead" in draft:
            lines += ["", f"The draft proposed {draft['lookahead']} token(s) per step (set in the spec)."
                      if isinstance(draft["lookahead"], int) else
                      "The draft's lookahead was transformers' default (confidence-limited)."]
    return lines
