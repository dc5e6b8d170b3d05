"""The strategy registry: a literal dict, the only names a spec or the service may use."""

from distillab.strategies.adaptive import Adaptive
from distillab.strategies.adaptive_v2 import AdaptiveV2
from distillab.strategies.adversarial import Adversarial
from distillab.strategies.attention import Attention
from distillab.strategies.base import Strategy
from distillab.strategies.dkd import DKD
from distillab.strategies.embedding_kd import EmbeddingKD
from distillab.strategies.feature import Feature
from distillab.strategies.layerwise import Layerwise
from distillab.strategies.multi_teacher import MultiTeacher
from distillab.strategies.none import NoDistillation
from distillab.strategies.progressive import Progressive
from distillab.strategies.relational import Relational
from distillab.strategies.response import Response
from distillab.strategies.selective import Selective
from distillab.strategies.self_distillation import SelfDistillation
from distillab.strategies.token_kd import TokenKD

# Other names users know a strategy by (Hinton et al. 2015 is response-based KD).
STRATEGY_ALIASES = {"hinton": "response"}

STRATEGIES: dict[str, type[Strategy]] = {
    "none": NoDistillation,
    "response": Response,
    "selective": Selective,
    "progressive": Progressive,
    "self": SelfDistillation,
    "dkd": DKD,
    "relational": Relational,
    "multi_teacher": MultiTeacher,
    "adversarial": Adversarial,
    "feature": Feature,
    "attention": Attention,
    "adaptive": Adaptive,
    "adaptive_v2": AdaptiveV2,
    "token_kd": TokenKD,
    "layerwise": Layerwise,
    "embedding_kd": EmbeddingKD,
}

__all__ = ["STRATEGIES", "Strategy"]


def catalog() -> list[dict]:
    """Every registered strategy with its summary, paper and parameters (default, bounds)."""
    rows = []
    for name, cls in STRATEGIES.items():
        params = {}
        for key, field in cls.Params.model_fields.items():
            bounds = {key: getattr(m, key) for m in field.metadata
                      for key in ("gt", "ge", "lt", "le", "min_length", "max_length") if getattr(m, key, None) is not None}
            params[key] = {"default": field.default, "description": field.description, **bounds}
        rows.append({"name": name, "summary": cls.summary, "paper": cls.paper, "params": params})
    return rows
