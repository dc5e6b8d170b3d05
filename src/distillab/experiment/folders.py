"""Where a run writes, and the rule that keeps a user's files safe: a run only ever removes
or replaces a folder that distillab created.

A finished run folder holds ``report.json`` and ``spec.json``; a run in progress is built
in ``OUT.partial``, whose first file is ``spec.json``. Any other non-empty folder, or a
file, at either place is refused with a SpecError that names it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from distillab.errors import SpecError
from distillab.inputs import slug


def default_out_dir(name: str) -> Path:
    """runs/<slug of the job name>: a job name never reaches outside runs/."""
    return Path("runs") / slug(name)


def is_run_folder(path: Path) -> bool:
    return (path / "report.json").is_file() and (path / "spec.json").is_file()


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _is_partial_run(path: Path) -> bool:
    return _is_empty_dir(path) or (path / "spec.json").is_file()


def finished_phases(partial: Path) -> list[str]:
    """'seed 0 scratch', ... for every phase of an unfinished run that wrote its result."""
    found = []
    for seed_dir in sorted(partial.glob("seed_*"), key=lambda p: p.name):
        for role in ("scratch", "distilled"):
            if (seed_dir / role / "result.json").is_file():
                found.append(f"{seed_dir.name.replace('_', ' ')} {role}")
    return found


def check_out_dir(out_dir: Path | str, *, overwrite: bool, resume: bool = False,
                  discard_unfinished: bool | None = None) -> tuple[Path, Path]:
    """(run folder, its .partial) as absolute paths, after refusing every place a run must
    not write. Creates and removes nothing. An unfinished run in ``.partial`` is never
    discarded silently: without ``resume`` it needs ``overwrite``."""
    text = str(out_dir)
    if not text.strip():
        raise SpecError("--out: empty path")
    out = Path(os.path.abspath(text))  # normalises '.', '..' and trailing slashes
    if not out.name:
        raise SpecError(f"--out {text}: the file-system root cannot be a run folder")
    partial = out.with_name(out.name + ".partial")
    try:
        if out.exists() and not out.is_dir():
            raise SpecError(f"--out {text}: {out} exists and is not a folder")
        if out.is_dir() and any(out.iterdir()):
            if not is_run_folder(out):
                raise SpecError(f"--out {text}: {out} is not empty and holds no distillab run; "
                                "refusing to touch it (choose a new or empty folder)")
            if not overwrite:
                raise SpecError(f"--out {text}: {out} already holds a finished run (report.json); "
                                "choose another --out or --overwrite")
        if partial.exists() or partial.is_symlink():
            if partial.is_symlink() or not partial.is_dir() or not _is_partial_run(partial):
                raise SpecError(f"--out {text}: {partial} exists and is not an unfinished distillab run; "
                                "refusing to touch it")
            discard = overwrite if discard_unfinished is None else discard_unfinished
            if not resume and not discard and not _is_empty_dir(partial):
                done = finished_phases(partial)
                checkpoints = len(list(partial.rglob("*.pt")))
                raise SpecError(
                    f"--out {text}: {partial} holds an unfinished run ({', '.join(done) or 'no phase'} finished, "
                    f"{checkpoints} checkpoint(s)); continue it with --resume, or discard it with --overwrite")
    except OSError as error:  # a folder we may not read, a path component that is a file ...
        raise SpecError(f"--out {text}: {error.strerror or error}") from None
    return out, partial


def start_partial(partial: Path, *, resume: bool) -> None:
    """Create (or, without resume, re-create) the .partial folder checked by check_out_dir;
    without resume, an unfinished run is only there when --overwrite allowed replacing it."""
    try:
        if partial.exists() and not resume:
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SpecError(f"cannot create the run folder {partial}: {error.strerror or error}") from None


def publish(partial: Path, out: Path) -> None:
    """Move a complete run from .partial to its place. An existing run there (allowed by
    --overwrite) is renamed aside first and removed only once the new one is in place."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    aside = None
    if out.exists():
        if not is_run_folder(out):  # the folder changed since the checks: never replace it
            raise SpecError(f"{out} is no longer an empty folder or a distillab run; the new run stays in {partial}")
        aside = out.with_name(f"{out.name}.replaced-{os.getpid()}")
        os.replace(out, aside)
    os.replace(partial, out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


# Keys a resumed run may change: they decide where things go or how long the run may take,
# never what a finished phase computed.
RESUME_FREE_KEYS = {"name", "output.plots", "output.tensorboard", "output.latency_repeats", "output.draft_prompts",
                    "output.draft_tokens", "output.draft_lookahead",
                    "constraints.max_duration_s", "cache.dir", "cache.max_gb", "accept_weak_teacher"}


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    return {prefix: value}


def spec_differences(saved: dict, new: dict) -> list[str]:
    """'key: old -> new' for every key whose change would change a resumed run's results."""
    before, after = _flatten(saved), _flatten(new)
    changed = []
    for key in sorted(set(before) | set(after)):
        old, new_value = before.get(key, "(unset)"), after.get(key, "(unset)")
        added_at_default = (old == "(unset)" and new_value is None) or (new_value == "(unset)" and old is None)
        if key in RESUME_FREE_KEYS or old == new_value or added_at_default:
            continue  # a key a newer version added, at its default (None), changes nothing
        changed.append(f"{key}: {before.get(key, '(unset)')!r} -> {after.get(key, '(unset)')!r}")
    return changed


def check_resume(partial: Path, record: dict) -> None:
    """--resume continues a run only under the spec it was started with."""
    import json

    saved_path = partial / "spec.json"
    if not saved_path.is_file():
        return  # nothing was started: a resume is a fresh run
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as error:
        raise SpecError(f"--resume: {saved_path} is unreadable ({error}); the run cannot be checked") from None
    changed = spec_differences(saved, json.loads(json.dumps(record)))
    if changed:
        raise SpecError(f"--resume: the spec differs from the one {partial} was started with, in keys that change "
                        "results: " + "; ".join(changed) + ". Resume with the original settings, or start a new "
                        "run (another --out, or --overwrite to discard the unfinished one)")
