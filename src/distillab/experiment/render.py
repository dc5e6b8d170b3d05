"""Render report.md and the PNG plots from report.json (and nothing else), so
``distillab report DIR`` can redo them at any time."""

from __future__ import annotations

import io
import json
from pathlib import Path

from distillab.files import atomic_write_bytes, atomic_write_text
from distillab.errors import DistillabError
from distillab.models.facts import relative_spread

ROLE_COLOURS = {"teacher": "#555555", "scratch": "#1f77b4", "distilled": "#2a7a3a"}


def load_report(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    if not path.is_file():
        raise DistillabError(f"{run_dir}: no report.json here")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DistillabError(f"{path}: not valid JSON ({error})") from None


NOISY_SPREAD = 0.5  # latency IQR over median above which a speed-up ratio means little


def derived_rows(report: dict) -> list[dict]:
    """Per model: speed-up and compression vs the (first) teacher, retention, efficiency.
    ``speedup_noisy`` is True when either latency's spread makes the ratio meaningless."""
    teacher = next(m for m in report["models"] if m["role"] == "teacher")
    rows = []
    for m in report["models"]:
        acc = m["accuracy"]["mean"]
        spreads = [relative_spread(teacher), relative_spread(m)]
        rows.append({
            **m,
            "speedup_noisy": any(s is not None and s > NOISY_SPREAD for s in spreads),
            "speedup": teacher["latency_ms"] / m["latency_ms"] if m["latency_ms"] else None,
            "compression": teacher["size_mb"] / m["size_mb"] if m["size_mb"] else None,
            "retention": acc / teacher["accuracy"]["mean"] if teacher["accuracy"]["mean"] else None,
            # the efficiency score: accuracy / (size MB x latency ms); higher is better
            "efficiency": acc / (m["size_mb"] * m["latency_ms"]) if m["size_mb"] and m["latency_ms"] else None,
        })
    return rows


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _latency(r: dict, key: str) -> str:
    """'median [p25–p75]', or the median alone for reports written before quartiles."""
    iqr = r.get(key.replace("latency_ms", "latency_iqr_ms"))
    value = _fmt(r.get(key), ".3g")
    return f"{value} [{iqr[0]:.3g}–{iqr[1]:.3g}]" if iqr else value


def markdown_table(report: dict) -> str:
    lines = [
        "| model | role | accuracy (%) | params | size MB | runtime | latency ms (b=1) [IQR] "
        "| latency ms (b=256) [IQR] | speed-up | compression | retention | efficiency |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = derived_rows(report)
    for r in rows:
        acc = r["accuracy"]
        speedup = f"{_fmt(r['speedup'], '.3g')}×" + (" (noisy)" if r["speedup_noisy"] else "")
        lines.append(
            f"| {r['name']} ({r['model']}) | {r['role']} | {acc['mean'] * 100:.2f} ± {acc['std'] * 100:.2f} "
            f"| {r['params']:,} | {r['size_mb']:.3f} | {r.get('runtime', '-')} | {_latency(r, 'latency_ms')} "
            f"| {_latency(r, 'latency_ms_batch256')} "
            f"| {speedup} | {_fmt(r['compression'], '.1f')}× | {_fmt(r['retention'], '.3f')} "
            f"| {_fmt(r['efficiency'], '.3g')} |"
        )
    if any(r["speedup_noisy"] for r in rows):
        lines += ["", f"(noisy): a latency's interquartile range exceeds {NOISY_SPREAD:.0%} of its median (a busy "
                      "machine), so that speed-up ratio is not meaningful; measure again on an idle machine."]
    return "\n".join(lines)


def _metric(report: dict) -> tuple[str, bool]:
    """(primary metric, higher is better) of the report's task; accuracy for older reports."""
    task = report.get("task") or {}
    return task.get("metric", "accuracy"), task.get("higher_is_better", True)


def lm_table(report: dict) -> str:
    """The language-model table: held-out bits per character, perplexity, next-token accuracy,
    size and CPU speed at batch 1."""
    lines = ["| model | role | bits/char | perplexity | next-token acc (%) | params | size MB | prefill tok/s "
             "| decode tok/s | peak MB | compression |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    teacher = next(m for m in report["models"] if m["role"] == "teacher")
    for m in report["models"]:
        metrics = m.get("metrics", {})
        bpc, ppl, acc = (metrics.get(key, {"mean": None, "std": 0}) for key in
                         ("bits_per_character", "perplexity", "accuracy"))
        lines.append(
            f"| {m['name']} ({m['model']}) | {m['role']} | {_fmt(bpc['mean'], '.4f')} ± {bpc['std']:.4f} "
            f"| {_fmt(ppl['mean'], '.2f')} | {_fmt(acc['mean'] and acc['mean'] * 100, '.2f')} | {m['params']:,} "
            f"| {m['size_mb']:.4g} | {_fmt(m.get('prefill_tokens_per_s'), ',.0f')} "
            f"| {_fmt(m.get('decode_tokens_per_s'), ',.1f')} | {_fmt(m.get('peak_memory_mb'), '.4g')} "
            f"| {_fmt(teacher['size_mb'] / m['size_mb'] if m['size_mb'] else None, '.1f')}× |")
    return "\n".join(lines)


def embedding_table(report: dict) -> str:
    """The text-embedding table: agreement with the teacher on held-out sentences, size, speed."""
    lines = ["| model | role | Spearman (pairwise cos) | cosine agreement | recall@10 | params | size MB "
             "| latency ms (b=1) | speed-up | compression |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in derived_rows(report):
        metrics = r.get("metrics", {})
        spearman, cosine, recall = (metrics.get(key, {"mean": None, "std": 0}) for key in
                                    ("spearman", "cosine_agreement", "recall_at_10"))
        lines.append(
            f"| {r['name']} ({r['model']}) | {r['role']} | {_fmt(spearman['mean'], '.4f')} ± {spearman['std']:.4f} "
            f"| {_fmt(cosine['mean'], '.4f')} | {_fmt(recall['mean'], '.3f')} | {r['params']:,} | {r['size_mb']:.4g} "
            f"| {_latency(r, 'latency_ms')} | {_fmt(r['speedup'], '.3g')}× | {_fmt(r['compression'], '.1f')}× |")
    return "\n".join(lines)


def _task(report: dict) -> str:
    return (report.get("task") or {}).get("name", "image_classification")


def _precision_line(report: dict) -> list[str]:
    """'Precision: bf16 (asked: auto) on AMX.' for reports that record it."""
    precision = report.get("precision")
    if not precision:
        return []
    where = f" on {precision['bf16_path']}" if precision.get("bf16_path") else ""
    return [f"Precision: {precision['used']} (asked: {precision['requested']}){where}."]


def summary_table(report: dict) -> str:
    """The report's main table: by accuracy and speed, bits per character, or agreement with the teacher."""
    return {"language_modeling": lm_table, "text_embedding": embedding_table}.get(_task(report), markdown_table)(report)


def _comparison_rows(report: dict) -> list[str]:
    metric, _ = _metric(report)
    if metric == "accuracy":
        rows = ["| comparison | mean difference (points) | p-value | test |", "|---|---:|---:|---|"]
        for c in report["comparisons"]:
            rows.append(f"| {c['a']} − {c['b']} | {c['mean_diff'] * 100:+.2f} | {_fmt(c['p_value'], '.3g', 'n/a')} "
                        f"| {c['test']}, n={c['n']} |")
        return rows
    rows = [f"| comparison | mean difference ({metric}) | relative | p-value | test |", "|---|---:|---:|---:|---|"]
    for c in report["comparisons"]:
        relative = c.get("relative_diff")
        rows.append(f"| {c['a']} − {c['b']} | {c['mean_diff']:+.4f} | {_fmt(relative and relative * 100, '+.2f')} % "
                    f"| {_fmt(c['p_value'], '.3g', 'n/a')} | {c['test']}, n={c['n']} |")
    return rows


def render_markdown(report: dict) -> str:
    seeds = report["seeds"]
    strategy = report["strategy"]
    params = ", ".join(f"{k}={v}" for k, v in strategy["params"].items())
    metric, _ = _metric(report)
    dataset = report["dataset"]
    if metric == "accuracy":
        intro = (f"Dataset `{dataset['name']}`: {dataset['train']} train / {dataset['val']} val / {dataset['test']} "
                 f"test samples. Strategy `{strategy['name']}` ({params or 'no parameters'}). Seeds {seeds}. Accuracy "
                 "is on the test split, mean ± sample std over seeds; the student is selected on the validation split.")
        table = [markdown_table(report), "",
                 "Speed-up and compression are relative to the teacher (latency at batch 1, serialized size). "
                 "Latencies are medians with their interquartile range, all models timed round-robin in one "
                 "measurement so that load changes hit them alike; the scratch and distilled students are one "
                 "network, timed once. Retention is student accuracy / teacher accuracy. Efficiency is accuracy / "
                 "(size MB × latency ms)."]
    elif _task(report) == "text_embedding":
        intro = (f"Corpus `{dataset['name']}`, split {dataset.get('split', 'by position')}: {dataset['train']:,} train "
                 f"/ {dataset['val']:,} val / {dataset['test']:,} test sentences. Strategy `{strategy['name']}` "
                 f"({params or 'no parameters'}). Seeds {seeds}. Metrics compare each model's embeddings of the test "
                 "sentences with the teacher's, mean ± sample std over seeds. The scratch twin is the student as "
                 "initialised (this task has no labels to train it without the teacher).")
        table = [embedding_table(report), "",
                 "Spearman: correlation between the model's and the teacher's cosine similarities over all pairs of "
                 "up to 500 test sentences. Cosine agreement: mean cosine between a sentence's model and teacher "
                 "embeddings. Recall@10: the share of each sentence's 10 nearest teacher neighbours among its 10 "
                 "nearest model neighbours. Latency: one sentence, median."]
    else:
        tokens = dataset.get("tokens", {})
        intro = (f"Corpus `{dataset['name']}`, split {dataset.get('split', 'by position')}: "
                 f"{tokens.get('train', '?'):,} train / {tokens.get('val', '?'):,} val / {tokens.get('test', '?'):,} "
                 f"test tokens in blocks of {dataset['in_shape'][0]}. Strategy `{strategy['name']}` "
                 f"({params or 'no parameters'}). Seeds {seeds}. Metrics are on the test text, mean ± sample std "
                 f"over seeds; the student is selected on validation {metric.replace('_', ' ')}.")
        table = [lm_table(report), "",
                 "Bits per character: the summed negative log-likelihood in bits over the characters the predicted "
                 "tokens cover (lower is better). Perplexity is per token. Prefill: one batch-1 forward over a full "
                 "context; decode: greedy generation at batch 1 with a key/value cache; peak: the weights plus "
                 "what a generation adds to the resident set. Compression is the teacher's size over the model's."]
    parts = [f"# {report['name']}", "", intro, *_augmentation_lines(report), "", *table, "",
             *_comparison_rows(report)]
    for m in report["models"]:
        if m.get("stages"):
            parts += ["", f"Stages of `{m['strategy']}` (test accuracy, mean ± std over seeds):", "",
                      "| stage | model | params | accuracy (%) |", "|---|---|---:|---|"]
            for st in m["stages"]:
                parts.append(f"| {st['stage']} | {st['model']} | {st['params']:,} | "
                             f"{st['accuracy']['mean'] * 100:.2f} ± {st['accuracy']['std'] * 100:.2f} |")
    if _task(report) == "language_modeling":
        from distillab.tasks.lm_report import render_lm_extras

        parts += render_lm_extras(report)
    if report.get("constraints"):
        parts += ["", "| constraint | limit | value | met |", "|---|---:|---:|---|"]
        for c in report["constraints"]:
            parts.append(f"| {c['name']} | {c['limit']:.4f} | {c['value']:.4f} | {'yes' if c['met'] else 'NO'} |")
    env = report["environment"]
    parts += [
        "",
        f"Measured on {env['platform']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads, "
        f"CUDA: {env['cuda'] or 'none'}), torch {env['torch']}, in {report['seconds']:.0f} s.",
        *_precision_line(report),
        "",
        "![accuracy](accuracy.png) ![curves](curves.png) ![accuracy vs latency](accuracy_vs_latency.png)",
        "",
        report["verdict"],
        "",
    ]
    return "\n".join(parts)


def _augmentation_lines(report: dict) -> list[str]:
    augmentation = report.get("augmentation")  # absent from reports written before it was recorded
    if not augmentation or augmentation["policy"] == "none":
        return []
    return ["", f"Augmentation, the same policy for both students: `{augmentation['policy']}`. Scratch: "
                f"{augmentation['scratch']}; distilled: {augmentation['distilled']}."]


def render_plots(report: dict, run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    written = []
    models = report["models"]
    names = [m["name"] for m in models]
    metric, _ = _metric(report)
    scale, label = (100, "test accuracy (%)") if metric == "accuracy" else (1, f"test {metric.replace('_', ' ')}")
    scores = [m.get("score", m["accuracy"]) for m in models]
    means = [s["mean"] * scale for s in scores]
    stds = [s["std"] * scale for s in scores]

    colours = [ROLE_COLOURS.get(m["role"], "#2a7") for m in models]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, means, yerr=stds, capsize=6, color=colours)
    low = min(m - s for m, s in zip(means, stds))
    if metric == "accuracy":
        ax.set_ylim(max(0, low - 3), min(100, max(means) + 2))
    ax.set_ylabel(label)
    ax.set_title(f"{report['name']}: mean ± std over {len(report['seeds'])} seed(s)")
    written.append(_save(fig, run_dir / "accuracy.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        for seed, curve in (m.get("curves") or {}).items():
            style = "-" if m["role"] == "distilled" else "--"
            ax.plot(range(1, len(curve) + 1), [v * scale for v in curve], style, marker=".",
                    color=ROLE_COLOURS.get(m["role"]), alpha=0.8, label=f"{m['role']} seed {seed}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    ax.set_xlabel("epoch")
    ax.set_ylabel(label.replace("test", "validation"))
    ax.legend(fontsize=7)
    ax.set_title("training curves (validation split; scratch dashed, distilled solid)")
    written.append(_save(fig, run_dir / "curves.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, mean, std in zip(models, means, stds):
        ax.errorbar(m["latency_ms"], mean, yerr=std, fmt="o", capsize=4, color=ROLE_COLOURS.get(m["role"], "#2a7"))
        ax.annotate(m["name"], (m["latency_ms"], mean), textcoords="offset points", xytext=(5, 5))
    ax.set_xscale("log")
    ticks = sorted({m["latency_ms"] for m in models})
    ax.xaxis.set_major_locator(FixedLocator(ticks))  # a readable tick at every model, not bare powers of ten
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(ticks[0] / 1.5, ticks[-1] * 1.5)
    ax.set_xlabel("latency at batch 1 (ms, log scale)")
    ax.set_ylabel(label)
    ax.set_title(f"{label.removeprefix('test ')} vs latency")
    written.append(_save(fig, run_dir / "accuracy_vs_latency.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def render(run_dir: Path, plots: bool | None = None) -> Path:
    """Write report.md (and the plots unless disabled in the spec) from report.json."""
    report = load_report(run_dir)
    if plots is None:
        plots = report.get("spec", {}).get("output", {}).get("plots", True)
    if plots:
        render_plots(report, run_dir)
    path = run_dir / "report.md"
    atomic_write_text(path, render_markdown(report))
    return path
