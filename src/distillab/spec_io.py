"""Spec documents: read a YAML or JSON file, apply ``--set`` overrides, resolve paths against the
spec's folder, and validate into a ``JobSpec``, with every error named by its key path."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from distillab.errors import SpecError
from distillab.inputs import check_values, parse_document
from distillab.spec import MAX_SPEC_BYTES, JobSpec, error_messages


def parse_spec(data: dict | JobSpec, *, teacher_files: bool = True) -> JobSpec:
    """Validate a dict into a JobSpec; a SpecError lists every problem with its key path.
    ``teacher_files=False`` accepts teacher checkpoints that are not on this machine (a
    finished run's student is rebuilt without its teacher)."""
    if isinstance(data, JobSpec):
        return data
    if not isinstance(data, dict):
        raise SpecError(f"(spec): expected a mapping of keys, got {type(data).__name__}")
    problems = check_values(data)
    if problems:
        raise SpecError(_listing([f"{'.'.join(map(str, loc)) or '(spec)'}: {message}" for loc, message in problems]))
    try:
        return JobSpec.model_validate(data, context={"teacher_files": teacher_files})
    except ValidationError as error:
        raise SpecError(_listing(error_messages(error))) from None


def _listing(messages: list[str]) -> str:
    """One problem on one line; several, one per line under a heading."""
    if len(messages) == 1:
        return f"invalid spec: {messages[0]}"
    return "invalid spec:\n  " + "\n  ".join(messages)


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``key.path=value`` in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise SpecError(f"--set {assignment!r}: expected key.path=value")
    key, raw = assignment.split("=", 1)
    value = parse_document(raw, "yaml", f"--set {key}")
    parts = key.strip().split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def read_spec_file(path: Path) -> dict:
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file" if path.exists() else None
        raise SpecError(f"{path}: {'no such spec file' if kind is None else kind + ', not a spec file'}")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {path.stat().st_size:,} bytes; a spec may have at most {MAX_SPEC_BYTES:,}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise SpecError(f"{path}: cannot read ({error.strerror})") from None
    data = parse_document(text, "json" if path.suffix == ".json" else "yaml", str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of keys at the top level")
    return data


SPEC_PATH_KEYS = (("data", "path"), ("teacher", "checkpoint"), ("cache", "dir"))


def resolve_spec_paths(data: dict, folder: Path) -> dict:
    """Relative paths in a spec file (data.path, teacher.checkpoint, cache.dir) resolved against
    the file's folder, so a spec runs the same from any working folder."""

    def resolved(value):
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            return str((folder / value).resolve())
        return str(Path(value).expanduser()) if isinstance(value, str) and value.startswith("~") else value

    for section, key in SPEC_PATH_KEYS:
        node = data.get(section)
        for entry in node if isinstance(node, list) else [node]:
            if isinstance(entry, dict) and key in entry:
                entry[key] = resolved(entry[key])
    data_section = data.get("data")
    if isinstance(data_section, dict):  # the corpora of a mixture
        for field in ("dataset", "mixture"):
            for entry in data_section.get(field) if isinstance(data_section.get(field), list) else []:
                if isinstance(entry, dict) and "path" in entry:
                    entry["path"] = resolved(entry["path"])
    return data


def load_spec(path: Path | str, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """A spec file, its relative paths resolved against its folder, then the ``--set`` overrides
    (whose relative paths are the working folder's, as typed)."""
    path = Path(path)
    data = resolve_spec_paths(read_spec_file(path), path.resolve().parent)
    for assignment in overrides:
        apply_override(data, assignment)
    return parse_spec(data)
