"""What every spec section shares: strict models, numbers that refuse booleans, registry names."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from distillab.errors import close_matches


def _not_bool(value):
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


Number = Annotated[float, BeforeValidator(_not_bool)]  # booleans are not numbers (true is not 1.0)


def registered(name: str, registry, what: str) -> str:
    """``name`` if ``registry`` (a literal registry dict) has it, else a ValueError that suggests."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}{close_matches(name, registry)}")
    return name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
