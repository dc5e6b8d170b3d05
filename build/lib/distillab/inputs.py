"""Untrusted input made safe before it reaches pydantic, torch or the database.

Specs arrive as YAML or JSON files on the CLI and as JSON bodies on the service. Both are
read here with the same limits: no YAML aliases (an alias bomb expands to gigabytes), no
duplicate keys (the second value would silently win), nesting at most ``MAX_DEPTH`` deep (a
deeper document ends in a RecursionError somewhere else), strings without control
characters or lone surrogates (PostgreSQL refuses NUL; a surrogate cannot be encoded), and
only finite numbers.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata

import yaml

from distillab.errors import SpecError

MAX_DEPTH = 32
_ALLOWED_CONTROL = {"\t", "\n", "\r"}


class SpecLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """PyYAML's safe loader (libyaml's parser where installed: a 1 MB spec in a fraction of a
    second) with duplicate keys refused. Aliases are refused by ``load_yaml``."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str):
    """One YAML document, safely. Its events are read first (libyaml's parser does not recurse):
    an alias (``*name``: a few can stand for billions of values) or nesting deeper than
    MAX_DEPTH (which would overflow the recursive composer) is refused before anything is built."""
    depth = 0
    for event in yaml.parse(text, Loader=SpecLoader):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a spec; write the value out", event.start_mark)
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecursionError
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader subclass


def _refuse_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_document(text: str, kind: str, where: str):
    """Parse YAML or JSON text (``kind`` "yaml" or "json"); a SpecError names ``where``."""
    name = "JSON" if kind == "json" else "YAML"
    try:
        if kind == "json":
            data = json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
        else:
            data = load_yaml(text)
    except RecursionError:
        raise SpecError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, yaml.YAMLError) as error:
        raise SpecError(f"{where}: not valid {name}: {_one_line(error)}") from None
    problems = check_values(data)
    if problems:
        loc, message = problems[0]
        raise SpecError(f"{where}: {'.'.join(map(str, loc)) or '(top level)'}: {message}")
    return data


def check_values(data, loc: tuple = (), depth: int = 0, limit: int = 20) -> list[tuple[tuple, str]]:
    """(location, problem) for every value that no spec may hold: nesting deeper than
    MAX_DEPTH, strings with control characters or lone surrogates, NaN or infinity, keys
    that are not strings. Stops after ``limit`` problems."""
    problems: list[tuple[tuple, str]] = []
    stack = [(data, loc, depth)]
    while stack and len(problems) < limit:
        value, where, level = stack.pop()
        if level > MAX_DEPTH:
            problems.append((where, f"nested more than {MAX_DEPTH} levels deep"))
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    problems.append((where, f"key {key!r} is not a string"))
                    continue
                problem = text_problem(key)
                if problem:
                    problems.append(((*where, _printable(key)), f"key {problem}"))
                    continue
                stack.append((item, (*where, key), level + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, (*where, index), level + 1) for index, item in enumerate(value))
        elif isinstance(value, str):
            problem = text_problem(value)
            if problem:
                problems.append((where, problem))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append((where, f"{value} is not allowed: numbers must be finite"))
    return problems


def text_problem(text: str) -> str | None:
    """Why a string may not be stored or used as a name, or None."""
    for char in text:
        if "\ud800" <= char <= "\udfff":
            return "contains a lone surrogate (not valid Unicode text)"
        if char not in _ALLOWED_CONTROL and unicodedata.category(char) == "Cc":
            return f"contains the control character U+{ord(char):04X}"
    return None


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def _one_line(error: Exception) -> str:
    """A parser error on one line: 'problem (line L, column C)'."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return _short(f"{error.problem}{where}", 300)
    return _short(" ".join(str(error).split()), 300)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


_SLUG_DROP = re.compile(r"[^a-z0-9._-]+")


def slug(name: str, default: str = "distillation") -> str:
    """A folder name from a job name: lower-case ASCII letters, digits, '.', '_' and '-'; never
    '.', '..' or a leading dot, at most 80 characters."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = _SLUG_DROP.sub("-", ascii_name.lower()).strip("-.")
    text = re.sub(r"-{2,}", "-", text)[:80].strip("-.")
    return text or default
