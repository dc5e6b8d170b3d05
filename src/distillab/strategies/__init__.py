"""The strategy registry: a literal dict, the only names a spec or the service may use."""

from distillab.strategies.base import Strategy
from distillab.strategies.none import NoDistillation
from distillab.strategies.response import Response
from distillab.strategies.selective import Selective

STRATEGIES: dict[str, type[Strategy]] = {
    "none": NoDistillation,
    "response": Response,
    "selective": Selective,
}

__all__ = ["STRATEGIES", "Strategy"]
