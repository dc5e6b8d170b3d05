"""DistillationTrainer: distilling inside a transformers.Trainer."""

import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from conftest import make_tiny_lm
from distillab.integrations.hf_trainer import DistillationTrainer


class Blocks(torch.utils.data.Dataset):
    def __init__(self, n=16, length=12, vocab=300):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        ids = self.ids[index]
        labels = ids.clone()
        labels[:2] = -100  # a prompt that is not counted
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def trainer(tmp_path, teacher, student, **options):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                             disable_tqdm=True, **options)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Blocks(),
                               alpha=0.5, temperature=2.0)


def test_the_trainer_distils_and_leaves_the_teacher_alone(tmp_path, tiny_lm):
    teacher = AutoModelForCausalLM.from_pretrained(make_tiny_lm(tmp_path / "padded", extra_rows=4, seed=1))
    student = AutoModelForCausalLM.from_pretrained(tiny_lm)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    start = {k: v.clone() for k, v in student.state_dict().items()}
    result = trainer(tmp_path, teacher, student).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in student.state_dict().items())


def test_the_loss_of_accumulated_micro_batches_equals_the_full_batch(tmp_path, tiny_lm):
    teacher = AutoModelForCausalLM.from_pretrained(make_tiny_lm(tmp_path / "t", seed=2))
    student = AutoModelForCausalLM.from_pretrained(tiny_lm)
    batch = {key: torch.stack([Blocks()[i][key] for i in range(4)]) for key in ("input_ids", "attention_mask", "labels")}
    batch["labels"][0, 5:] = -100  # rows with different numbers of counted tokens
    t = trainer(tmp_path, teacher, student)
    whole = t.compute_loss(student, batch)
    total = (batch["labels"][:, 1:] != -100).sum()
    parts = sum(t.compute_loss(student, {k: v[rows] for k, v in batch.items()}, num_items_in_batch=total)
                for rows in (slice(0, 1), slice(1, 4)))
    assert torch.allclose(whole, parts, atol=1e-6)
