"""What users read: the README stays short and points at pages that exist, the documentation
site builds in strict mode (a broken link or anchor fails it), and no product text (README,
docs, CLI help and catalogue output, the OpenAPI document) carries the project's internal
history: source-document numbers, issue numbers, sessions or rounds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")

# words that only mean something inside the project's own history
HISTORY = re.compile(r"\bseed 0\d\d\b|\bseed-shaped\b|\bissue \d+\b|\bthis session\b|\bthis round\b|\buser's seed\b",
                     re.IGNORECASE)


def history_words(text: str) -> list[str]:
    return sorted({match.group(0) for match in HISTORY.finditer(text)})


def test_the_history_pattern_finds_what_it_must_and_spares_random_seeds():
    assert history_words("Adaptive distillation (seed 000), see issue 16; in this session") == \
        ["issue 16", "seed 000", "this session"]
    assert history_words("6 seeds, seed 3 of 5, --seed 0, which seed's student, seeds 100-111") == []


def test_the_readme_is_short_and_links_only_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert links, "the README points at the documentation"
    for link in links:
        assert (ROOT / link).is_file(), link


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    if not MKDOCS.exists():
        pytest.fail(f"{MKDOCS} is missing: make setup installs mkdocs from requirements.lock")
    result = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_documentation_site_builds_strictly_with_every_page(site):
    for page in (ROOT / "docs").glob("*.md"):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), page.name


def test_the_readmes_anchors_into_the_docs_exist_in_the_built_site(site):
    readme = (ROOT / "README.md").read_text()
    anchors = re.findall(r"\]\(docs/([a-z-]+)\.md#([^)]+)\)", readme)
    assert anchors
    for page, anchor in anchors:
        html = (site / page / "index.html").read_text()
        assert f'id="{anchor}"' in html, f"docs/{page}.md has no heading #{anchor}"


def test_a_broken_link_fails_the_strict_build(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [the missing page](missing.md).\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\nstrict: true\n")
    result = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode != 0 and "missing.md" in result.stderr


def test_readme_and_docs_carry_no_internal_history():
    found = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        words = history_words(path.read_text())
        if words:
            found[path.name] = words
    assert found == {}


def _cli_texts() -> dict[str, str]:
    from distillab.cli import app

    runner = CliRunner()
    texts = {"--help": runner.invoke(app, ["--help"]).output}
    import typer.main

    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        texts[f"{name} --help"] = runner.invoke(app, [name, "--help"]).output
        for inner in getattr(sub, "commands", {}):
            texts[f"{name} {inner} --help"] = runner.invoke(app, [name, inner, "--help"]).output
    for args in (["strategies"], ["strategies", "--json"], ["models"], ["datasets"], ["tasks"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        texts[" ".join(args)] = result.output
    return texts


def test_cli_help_and_catalogues_carry_no_internal_history():
    texts = _cli_texts()
    assert len(texts) > 20 and "response" in texts["strategies"]
    found = {name: history_words(text) for name, text in texts.items() if history_words(text)}
    assert found == {}


def test_the_openapi_document_carries_no_internal_history(tmp_path):
    from distillab.service.app import create_app
    from distillab.service.estimate import cost_table
    from distillab.service.settings import Settings

    cost_table()  # measured here, so the app's background measurement finishes at once
    app = create_app(Settings(data_dir=tmp_path / "data"))
    document = json.dumps(app.openapi())
    assert "/api/v1/distillation/jobs" in document
    assert history_words(document) == []
