"""Shared fixtures: a small synthetic image dataset on disk, a tiny trained teacher, and a
private cache folder for every test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from distillab.engine.callbacks import Callback
from distillab.engine.loop import Stop
from distillab.models.loading import save_model
from distillab.models.zoo import build_model

torch.set_num_threads(1)
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: the servers and workers
    os.environ["OMP_NUM_THREADS"] = "1"  # a test starts get one thread each too, not a core apiece

# DISTILLAB_TEST_STRICT=1 (set by .ci/run): a skipped test fails the run, so that a machine that
# cannot run the PostgreSQL, browser, root or corpus tests never passes CI without them
_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(f"{report.nodeid}: {report.longrepr[2] if isinstance(report.longrepr, tuple) else ''}")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("DISTILLAB_TEST_STRICT") and _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("DISTILLAB_TEST_STRICT") and _skipped:
        terminalreporter.write_line(f"DISTILLAB_TEST_STRICT: {len(_skipped)} test(s) skipped, which fails the run:",
                                    red=True)
        for line in _skipped:
            terminalreporter.write_line(f"  {line}")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DISTILLAB_CACHE", str(cache))
    return cache


def make_blobs_npz(path: Path, n_train=240, n_test=80, classes=3, size=8, seed=0) -> Path:
    """Images whose class is a bright square in one of ``classes`` positions, plus noise:
    easy enough for a tiny model to learn in a few steps, hard enough to be non-trivial."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, classes, n)
        images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
        for i, label in enumerate(labels):
            row = (label * size) // classes
            images[i, row : row + 3, 1:6] = 230
        return images, labels

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture
def blobs(tmp_path) -> Path:
    return make_blobs_npz(tmp_path / "blobs.npz")


def trained(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 150,
            lr: float = 0.02) -> torch.nn.Module:
    """``model`` trained full-batch on ``images`` normalised as distillab normalises them, so
    it passes the check every run makes of its teacher (well above chance on validation)."""
    from distillab.data.transforms import fit_normalize

    inputs = fit_normalize(images)(images)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model.eval()


def blobs_teacher(path: Path, model: str = "cnn_tiny", model_args: dict | None = None, seed: int = 0) -> Path:
    """A ``model`` teacher for 3 classes on 1x8x8 inputs, trained on the blobs' training split."""
    arrays = np.load(make_blobs_npz(path.with_suffix(".npz")))
    images = torch.from_numpy(arrays["x_train"]).unsqueeze(1)
    labels = torch.from_numpy(arrays["y_train"]).long()
    torch.manual_seed(seed)
    save_model(trained(build_model(model, (1, 8, 8), 3, model_args or {}), images, labels), path)
    path.with_suffix(".npz").unlink()
    return path


@pytest.fixture(scope="session")
def _tiny_teacher_file(tmp_path_factory) -> Path:
    return blobs_teacher(tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


@pytest.fixture
def tiny_teacher(tmp_path, _tiny_teacher_file) -> Path:
    """A cnn_tiny teacher for 3 classes on 1x8x8 inputs, trained on the blobs (a fresh copy per test)."""
    import shutil

    path = tmp_path / "teacher.safetensors"
    shutil.copyfile(_tiny_teacher_file, path)
    return path


class StopAt(Callback):
    """An engine callback that stops a run (``Stop``) at the first step of ``epoch``."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_step(self, epoch, step, metrics):
        if epoch == self.epoch:
            raise Stop("asked to stop")


def tiny_spec(npz: Path, teacher_path: Path, **overrides) -> dict:
    spec = {
        "name": "tiny",
        "data": {"dataset": "npz", "path": str(npz), "augment": {"crop_padding": 1, "hflip": True}},
        "teacher": {"model": "cnn_tiny", "checkpoint": str(teacher_path)},
        "student": {"model": "mlp", "model_args": {"hidden": [16]}},
        "strategy": {"name": "response"},
        "training": {"epochs": 2, "batch_size": 32, "seeds": [0, 1], "eval_batch_size": 256},
        "cache": {"views": 2},
        "output": {"tensorboard": False, "plots": True, "latency_repeats": 2},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def finished_cnn_run(folder: Path, seeds=(0, 1), epochs: int = 2) -> Path:
    """A finished run on the blobs whose student is a CNN (conv, BN, pooling: what export,
    int8 and channel pruning have to handle); returns the run folder."""
    from distillab import run

    npz = make_blobs_npz(folder / "blobs.npz")
    blobs_teacher(folder / "teacher.safetensors")
    spec = tiny_spec(npz, folder / "teacher.safetensors", student={"model": "cnn_tiny", "model_args": {}},
                     training={"epochs": epochs, "seeds": list(seeds)})
    return run(spec, folder / "run").out_dir


# --- language models: a tiny Llama and its byte-level BPE tokenizer, built offline ---

TEXT = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    "surrounding families, that he is considered the rightful property of some one or other of "
    "their daughters.\n",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, "
    "seemed to unite some of the best blessings of existence; and had lived nearly twenty-one "
    "years in the world with very little to distress or vex her.\n",
]


def write_corpus(folder: Path, copies: int = 6) -> Path:
    """Two short 'books', each its own document, repeated so every split has text."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(TEXT):
        (folder / f"book{index}.txt").write_text(text * copies)
    return folder


def make_tiny_lm(folder: Path, extra_rows: int = 0, vocab_size: int = 300, seed: int = 0, layers: int = 2) -> Path:
    """A 2-layer Llama (hidden 32) with a byte-level BPE tokenizer trained on TEXT, saved as a
    Hugging Face folder; ``extra_rows`` pads the embedding matrix beyond the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast) + extra_rows, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


def text_spec(corpus_path: Path, teacher_folder: Path, **overrides) -> dict:
    spec = {
        "name": "tiny-text",
        "task": "language_modeling",
        "data": {"dataset": "text_folder", "path": str(corpus_path), "context_length": 16, "val_size": 0.15,
                 "test_size": 0.15},
        "teacher": {"checkpoint": str(teacher_folder)},
        "student": {"model": "gpt", "model_args": {"layers": 1, "dim": 16, "heads": 2}},
        "strategy": {"name": "token_kd", "params": {"top_k": 4}},
        "training": {"epochs": 2, "batch_size": 8, "seeds": [0, 1], "eval_batch_size": 16, "lr": 0.01},
        "output": {"tensorboard": False, "plots": False, "latency_repeats": 2},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def make_tiny_encoder(folder: Path, layers: int = 4, seed: int = 0) -> Path:
    """A 4-layer BERT (hidden 32) with the tiny BPE tokenizer, saved as a Hugging Face folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    lm = make_tiny_lm(folder.with_name(folder.name + "-tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(lm, local_files_only=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder") / "encoder")


def embedding_spec(corpus_path: Path, encoder: Path, **overrides) -> dict:
    spec = {
        "name": "tiny-embeddings",
        "task": "text_embedding",
        "data": {"dataset": "text_folder", "path": str(corpus_path), "context_length": 24, "val_size": 0.2,
                 "test_size": 0.2},
        "teacher": {"checkpoint": str(encoder)},
        "student": {"model": "teacher_layers", "model_args": {"keep": 2}},
        "strategy": {"name": "embedding_kd"},
        "training": {"epochs": 2, "batch_size": 8, "seeds": [0, 1], "eval_batch_size": 16, "lr": 0.001},
        "output": {"tensorboard": False, "plots": False, "latency_repeats": 2},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


# The tiers (`make test-fast` leaves out integration, postgres and browser tests). Integration
# modules start servers, workers or CLI subprocesses, or train real models for seconds.
INTEGRATION_MODULES = {
    "tests/deploy/test_package_server.py", "tests/deploy/test_served_teacher.py", "tests/deploy/test_server_fuzz.py",
    "tests/engine/test_distributed.py", "tests/experiment/test_distributed_sweep.py",
    "tests/experiment/test_end_to_end.py", "tests/experiment/test_teacher_cache_race.py",
    "tests/models/test_shipped_teacher.py", "tests/service/test_api.py", "tests/service/test_dashboard.py",
    "tests/service/test_hardening.py", "tests/service/test_quotas.py", "tests/service/test_schemathesis.py",
    "tests/service/test_worker_nproc.py", "tests/service/test_lease.py", "tests/test_benchmarks_run.py",
    "tests/test_examples.py", "tests/text/test_hub_download.py", "tests/text/test_text_service.py",
    "tests/text/test_hf_models.py", "tests/test_install.py", "tests/test_docs.py",
    "tests/auto/test_auto_search.py", "tests/auto/test_auto_shared.py", "tests/service/test_auto_jobs.py",
}


def pytest_collection_modifyitems(config, items):
    root = Path(__file__).parent.parent
    for item in items:
        module = Path(item.fspath).resolve().relative_to(root).as_posix()
        if module in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
        if module == "tests/service/test_dashboard.py":
            item.add_marker(pytest.mark.browser)
        if "postgres_server" in getattr(item, "fixturenames", ()) or "[postgresql" in item.nodeid:
            item.add_marker(pytest.mark.postgres)
