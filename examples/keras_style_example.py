"""Seed 001's Keras knowledge-distillation example, in PyTorch with distillab's Python API.

The seed trains a Conv 256 -> LeakyReLU -> MaxPool -> Conv 512 -> Dense teacher, then a
Conv 16 -> Conv 32 student by distillation and the same student from scratch, with Adam,
T = 10, 10 epochs each and batch 64, and reports the students' test accuracy.

Alpha, mapped explicitly: the original Keras code computes
    loss = alpha * student_loss + (1 - alpha) * distillation_loss   with alpha = 0.1,
so its 0.1 weighs the *hard* (label) loss and 0.9 the soft (teacher) loss, while its formula
text writes alpha on the soft term. distillab's ``alpha`` always weighs the soft term, so the
original setting is distillab ``alpha = 1 - 0.1 = 0.9``.

Differences from the seed, on purpose: the data is Fashion-MNIST (the embedded data set; pass
``--mnist DIR`` with the four MNIST IDX files to run the original's own data); 10 % of the training
images are held out to pick each student's best epoch (Keras keeps the last); 3 seeds with a
paired test instead of one run. Keras's ``padding="same"`` with stride 2 pads one pixel on the
bottom/right only, PyTorch's ``padding=1`` one on each side: the output sizes are the same.

    .venv/bin/python examples/keras_style_example.py            # -> runs/keras_seed/ (report.md)
    .venv/bin/python examples/keras_style_example.py --mnist ~/mnist --out runs/keras_seed_mnist
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distillab import compare, evaluate, train
from distillab.data.readers import read_mnist_folder
from distillab.models.loading import load_state_into, save_model

KERAS_ALPHA = 0.1  # the original's weight of the hard-label loss
ALPHA = 1 - KERAS_ALPHA  # distillab's weight of the soft (teacher) loss
TEMPERATURE = 10.0
EPOCHS = 10
BATCH = 64
LR = 1e-3  # keras.optimizers.Adam()'s default


class SamePool(nn.Module):
    """Keras MaxPooling2D(pool_size=2, strides=1, padding="same"): pad bottom/right with -inf."""

    def forward(self, x):  # (B, C, H, W) -> (B, C, H, W)
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), kernel_size=2, stride=1)


def seed_model(first: int, second: int) -> nn.Sequential:
    """Conv(first, 3x3, stride 2) -> LeakyReLU(0.2) -> MaxPool(2, stride 1) -> Conv(second, 3x3,
    stride 2) -> Flatten -> Dense(10), on 1x28x28 inputs (28 -> 14 -> 14 -> 7)."""
    return nn.Sequential(
        nn.Conv2d(1, first, 3, stride=2, padding=1), nn.LeakyReLU(0.2), SamePool(),
        nn.Conv2d(first, second, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(7 * 7 * second, 10),
    )


def load(folder: Path, limit: int | None):
    """(x, y) tensors scaled to [0, 1] as the seed does (x / 255), for train and test."""
    train_set, test_set = read_mnist_folder(folder)
    def tensors(split, n):
        return split.images[:n].float() / 255.0, split.labels[:n]  # (N, 1, 28, 28), (N,)
    return tensors(train_set, limit), tensors(test_set, limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist", type=Path, help="a folder with the four MNIST IDX files (default: Fashion-MNIST)")
    parser.add_argument("--out", type=Path, default=Path("runs/keras_seed"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="for the teacher and each student")
    parser.add_argument("--limit", type=int, help="use the first N training and test images (a quick try)")
    parser.add_argument("--latency-repeats", type=int, default=50, help="timing rounds per model in the report")
    parser.add_argument("--threads", type=int, help="torch threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # one line per epoch
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.mnist or Path("/usr/share/datasets/fashion-mnist")
    (x_train, y_train), (x_test, y_test) = load(folder, args.limit)
    settings = dict(optimizer="adamw", weight_decay=0.0, lr=LR, schedule="constant", batch_size=BATCH)  # = Adam

    args.out.mkdir(parents=True, exist_ok=True)
    teacher_path = args.out / "teacher.safetensors"  # trained once; a rerun reuses it
    torch.manual_seed(0)
    teacher = seed_model(256, 512)
    if teacher_path.exists():
        load_state_into(teacher, teacher_path, "teacher")
    else:
        history = train(teacher, (x_train, y_train), epochs=args.epochs, progress=True, **settings)
        save_model(teacher, teacher_path)
        facts = {"epochs": history.epochs, "best_epoch": history.best_epoch,
                 "seconds": sum(epoch["epoch_seconds"] for epoch in history.epochs),
                 "test": evaluate(teacher, (x_test, y_test))}
        (args.out / "teacher.json").write_text(json.dumps(facts, indent=1))
    print(f"teacher: test {json.dumps(evaluate(teacher, (x_test, y_test)))}", flush=True)

    report = compare(teacher, lambda: seed_model(16, 32), (x_train, y_train), (x_test, y_test),
                     seeds=args.seeds, epochs=args.epochs, strategy="response", temperature=TEMPERATURE,
                     alpha=ALPHA, out_dir=args.out / "comparison", name="keras_style_example", progress=True,
                     latency_repeats=args.latency_repeats, **settings)
    for model in report.models:
        accuracy = model["accuracy"]
        print(f"{model['role']:>9}: {accuracy['mean'] * 100:.2f} ± {accuracy['std'] * 100:.2f} %  "
              f"({model['params']:,} parameters)")
    print(report.verdict)
    print(f"report: {args.out / 'comparison' / 'report.md'}")


if __name__ == "__main__":
    main()
