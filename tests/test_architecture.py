"""The house rules that keep the code readable for the next engineer: layers that point down
(the import-linter contracts in .importlinter), and no source file over 500 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_the_import_contracts_hold():
    result = subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") >= 2


def test_a_crossing_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: a copy of the package where the engine names a task fails it."""
    package = tmp_path / "src" / "distillab"
    package.parent.mkdir()
    subprocess.run(["cp", "-r", str(ROOT / "src" / "distillab"), str(package.parent)], check=True)
    loop = package / "engine" / "loop.py"
    loop.write_text(loop.read_text() + "\n\ndef _crossing():\n    from distillab.tasks import TASKS\n\n    return TASKS\n")
    result = subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter")], cwd=tmp_path,
                            capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "distillab.engine.loop -> distillab.tasks" in result.stdout, result.stdout[-2000:]


def test_no_source_file_is_over_500_lines():
    long = {str(path.relative_to(ROOT)): n for path in (ROOT / "src").rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}
