"""Seed statistics (summaries, paired t-test, verdict) and report rendering from report.json."""

from __future__ import annotations

import copy
import json
import statistics

import pytest

from distillab.errors import DistillabError
from distillab.experiment.render import render
from distillab.experiment.stats import paired_comparison, summarize, verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy.png", "curves.png", "accuracy_vs_latency.png")


# --- summarize ---------------------------------------------------------------------------------


def test_summarize_mean_and_sample_std():
    summary = summarize([0.80, 0.82, 0.87])
    assert summary["mean"] == pytest.approx(0.83)
    # sample std (n - 1): deviations -0.03, -0.01, 0.04 -> sqrt(0.0026 / 2)
    assert summary["std"] == pytest.approx((0.0026 / 2) ** 0.5)
    assert summary["per_seed"] == [0.80, 0.82, 0.87]


def test_summarize_one_value_has_zero_std():
    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "per_seed": [0.5]}


def test_summarize_copies_the_values():
    values = [0.1, 0.2]
    summary = summarize(values)
    values.append(0.3)
    assert summary["per_seed"] == [0.1, 0.2]


# --- paired_comparison -------------------------------------------------------------------------


def test_paired_comparison_one_seed_has_no_p_value():
    result = paired_comparison("distilled", [0.9], "scratch", [0.8])
    assert result["p_value"] is None
    assert result["n"] == 1
    assert result["mean_diff"] == pytest.approx(0.1)
    assert result["a"] == "distilled" and result["b"] == "scratch"


def test_paired_comparison_identical_differences_have_no_p_value():
    # every difference is exactly 0.25 (binary-exact values), so the t statistic is undefined
    result = paired_comparison("a", [0.5, 0.75, 1.0], "b", [0.25, 0.5, 0.75])
    assert result["p_value"] is None
    assert result["mean_diff"] == 0.25


def test_paired_comparison_clear_positive_difference_is_significant():
    scratch = [0.80, 0.83, 0.78, 0.85, 0.81]
    distilled = [s + d for s, d in zip(scratch, [0.030, 0.025, 0.035, 0.028, 0.032])]
    result = paired_comparison("distilled", distilled, "scratch", scratch)
    assert result["n"] == 5
    assert result["mean_diff"] == pytest.approx(0.03)
    assert result["mean_diff"] > 0
    assert result["p_value"] is not None and result["p_value"] < 0.05


def test_paired_comparison_is_paired_not_independent():
    # the seeds vary a lot between themselves but the within-seed gain is steady:
    # a paired test finds it, whereas the spread across seeds would hide it from an unpaired one
    scratch = [0.60, 0.90, 0.70, 0.80, 0.65]
    distilled = [s + d for s, d in zip(scratch, [0.010, 0.012, 0.009, 0.011, 0.010])]
    result = paired_comparison("distilled", distilled, "scratch", scratch)
    assert result["p_value"] < 0.001


def test_paired_comparison_noisy_difference_is_not_significant():
    result = paired_comparison("a", [0.80, 0.85, 0.79, 0.84], "b", [0.82, 0.83, 0.81, 0.82])
    assert result["p_value"] is not None and result["p_value"] > 0.05


def test_paired_comparison_unequal_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_comparison("a", [0.1, 0.2], "b", [0.1])


# --- verdict -----------------------------------------------------------------------------------


def comparison(mean_diff, p_value, n):
    return {"a": "student_distilled", "b": "student_scratch", "mean_diff": mean_diff, "p_value": p_value,
            "n": n, "test": "paired t-test over seeds"}


def test_verdict_helped():
    text = verdict(comparison(0.0123, 0.004, 5), "response")
    assert text.startswith("Distillation helped")
    assert "response-distilled" in text
    assert "1.23 points" in text and "p = 0.004" in text and "5 seeds" in text


def test_verdict_hurt():
    text = verdict(comparison(-0.02, 0.01, 3), "dkd")
    assert text.startswith("Distillation hurt")
    assert "2.00 points below" in text and "3 seeds" in text


def test_verdict_not_significant():
    text = verdict(comparison(0.01, 0.3, 3), "response")
    assert text.startswith("Distillation did not measurably help")
    assert "+1.00 points" in text and "p = 0.3" in text


def test_verdict_identical_differences_are_not_significant():
    # several seeds but no p-value (all differences equal): not a one-seed case
    text = verdict(comparison(0.01, None, 3), "response")
    assert text.startswith("Distillation did not measurably help")


def test_verdict_one_seed_is_inconclusive():
    text = verdict(comparison(-0.005, None, 1), "response")
    assert text.startswith("Inconclusive")
    assert "0.50 points lower" in text and "run more seeds" in text


def test_verdict_threshold_is_alpha():
    assert verdict(comparison(0.01, 0.04, 4), "x", alpha=0.01).startswith("Distillation did not measurably help")
    assert verdict(comparison(0.01, 0.04, 4), "x", alpha=0.05).startswith("Distillation helped")


# --- render ------------------------------------------------------------------------------------

SCRATCH = [0.84, 0.86, 0.85]
DISTILLED = [0.872, 0.893, 0.875]


def student(role, accuracies):
    return {
        "name": f"student_{role}",
        "role": role,
        "strategy": "none" if role == "scratch" else "response",
        "model": "tiny_cnn",
        "accuracy": summarize(accuracies),
        "params": 12345,
        "size_mb": 0.5,
        "macs": 100_000,
        "latency_ms": 0.75,
        "latency_ms_batch256": 12.5,
        "throughput_per_s": 20480.0,
        "val_accuracy": summarize([a + 0.01 for a in accuracies]),
        "seconds_per_epoch": 1.5,
        "extra_training_params": 0,
        "curves": {"0": [0.5, 0.7, 0.8], "1": [0.55, 0.72, 0.82], "2": [0.5, 0.69, 0.81]},
        "train_loss_curves": {"0": [1.2, 0.8, 0.6], "1": [1.1, 0.8, 0.5], "2": [1.3, 0.9, 0.6]},
    }


def make_report() -> dict:
    comparisons = [paired_comparison("student_distilled", DISTILLED, "student_scratch", SCRATCH)]
    teacher = {
        "name": "teacher",
        "role": "teacher",
        "strategy": None,
        "model": "resnet_small",
        "accuracy": summarize([0.92] * 3),
        "params": 1_234_567,
        "size_mb": 4.0,
        "macs": 9_000_000,
        "latency_ms": 3.0,
        "latency_ms_batch256": 80.0,
        "throughput_per_s": 3200.0,
        "checksum": "abc123",
        "source": "zoo",
    }
    return {
        "name": "fmnist_response",
        "created": "2024-01-01T00:00:00+00:00",
        "seconds": 42.4,
        "dataset": {"name": "fashion_mnist", "train": 900, "val": 100, "test": 200, "num_classes": 10},
        "seeds": [0, 1, 2],
        "strategy": {"name": "response", "params": {"temperature": 4.0, "alpha": 0.9}},
        "models": [teacher, student("scratch", SCRATCH), student("distilled", DISTILLED)],
        "comparisons": comparisons,
        "constraints": [
            {"name": "min_accuracy", "limit": 0.8, "value": statistics.fmean(DISTILLED), "met": True},
            {"name": "max_accuracy_drop", "limit": 0.02, "value": 0.92 - statistics.fmean(DISTILLED), "met": False},
        ],
        "verdict": verdict(comparisons[0], "response"),
        "environment": {"python": "3.12.0", "torch": "2.4.0", "numpy": "2.0.0", "platform": "Linux-test",
                        "cpu": "x86_64", "cpu_count": 2, "torch_threads": 2, "cuda": None},
        "spec": {"name": "fmnist_response", "output": {"plots": True}},
    }


def write_report(folder, report) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One full render with plots, shared by the tests that only read its output."""
    folder = tmp_path_factory.mktemp("run")
    report = make_report()
    write_report(folder, report)
    path = render(folder)
    return folder, path, report


def table_row(markdown: str, prefix: str) -> list[str]:
    rows = [line for line in markdown.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, f"expected one row starting {prefix!r}, got {rows}"
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_render_writes_report_md_next_to_report_json(rendered):
    folder, path, _ = rendered
    assert path == folder / "report.md"
    assert path.read_text().startswith("# fmnist_response\n")


def test_render_model_rows(rendered):
    _, path, _ = rendered
    markdown = path.read_text()
    teacher = table_row(markdown, "| teacher (resnet_small)")
    scratch = table_row(markdown, "| student_scratch (tiny_cnn)")
    distilled = table_row(markdown, "| student_distilled (tiny_cnn)")

    assert teacher[1:4] == ["teacher", "92.00 ± 0.00", "1,234,567"]
    assert teacher[8:11] == ["1×", "1.0×", "1.000"]  # the teacher against itself

    assert scratch[1] == "scratch"
    assert scratch[2] == "85.00 ± 1.00"  # mean 0.85, sample std 0.01
    assert scratch[3:8] == ["12,345", "0.500", "-", "0.75", "12.5"]  # no runtime or quartiles in this old report
    assert scratch[8] == "4×"  # 3.0 ms / 0.75 ms
    assert scratch[9] == "8.0×"  # 4.0 MB / 0.5 MB
    assert scratch[10] == "0.924"  # 0.85 / 0.92
    assert scratch[11] == "2.27"  # 0.85 / (0.5 MB x 0.75 ms)

    assert distilled[2] == "88.00 ± 1.14"  # mean 0.88; std of (0.872, 0.893, 0.875) = 0.01136
    assert distilled[10] == "0.957"  # 0.88 / 0.92


def test_render_comparison_and_constraint_rows(rendered):
    _, path, report = rendered
    markdown = path.read_text()
    row = table_row(markdown, "| student_distilled − student_scratch")
    p_value = report["comparisons"][0]["p_value"]
    assert p_value is not None and p_value < 0.05
    assert row[1] == "+3.00"
    assert row[2] == format(p_value, ".3g")
    assert row[3] == "paired t-test over seeds, n=3"
    assert table_row(markdown, "| min_accuracy") == ["min_accuracy", "0.8000", "0.8800", "yes"]
    assert table_row(markdown, "| max_accuracy_drop") == ["max_accuracy_drop", "0.0200", "0.0400", "NO"]


def test_render_header_and_environment(rendered):
    _, path, _ = rendered
    markdown = path.read_text()
    assert "900 train / 100 val / 200 test samples" in markdown
    assert "Strategy `response` (temperature=4.0, alpha=0.9)" in markdown
    assert "CUDA: none" in markdown and "in 42 s." in markdown


def test_render_ends_with_the_verdict(rendered):
    _, path, report = rendered
    assert report["verdict"].startswith("Distillation helped")
    assert path.read_text().rstrip("\n").endswith(report["verdict"])


def test_render_writes_three_png_plots(rendered):
    folder, _, _ = rendered
    for name in PLOTS:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 1000, name


def test_render_skips_plots_when_the_spec_says_so(tmp_path):
    report = make_report()
    report["spec"]["output"]["plots"] = False
    write_report(tmp_path, report)
    render(tmp_path)
    assert (tmp_path / "report.md").is_file()
    assert not any((tmp_path / name).exists() for name in PLOTS)


def test_render_without_p_value_shows_na_and_no_constraints_table(tmp_path):
    report = copy.deepcopy(make_report())
    report["comparisons"][0]["p_value"] = None
    report["constraints"] = []
    write_report(tmp_path, report)
    markdown = render(tmp_path, plots=False).read_text()
    assert table_row(markdown, "| student_distilled − student_scratch")[2] == "n/a"
    assert "| constraint |" not in markdown


def test_render_without_report_json(tmp_path):
    with pytest.raises(DistillabError, match="no report.json"):
        render(tmp_path)


def test_render_corrupt_report_json(tmp_path):
    (tmp_path / "report.json").write_text('{"name": "half a report", "models": [')
    with pytest.raises(DistillabError, match="not valid JSON"):
        render(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_a_noisy_latency_marks_the_speedup_as_not_meaningful(tmp_path):
    from distillab.experiment.render import markdown_table

    report = make_report()
    quiet = markdown_table(report)
    assert "(noisy)" not in quiet
    report["models"][1]["latency_iqr_ms"] = [0.5, 172.0]  # a busy machine during the student's timing
    noisy = markdown_table(report)
    assert "(noisy)" in noisy and "not meaningful" in noisy
    report["models"][1]["runtime"] = "torch"
    assert "| torch |" in markdown_table(report)
