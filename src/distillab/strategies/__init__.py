"""The strategy registry: a literal dict, the only names a spec or the service may use."""

from distillab.strategies.adaptive import Adaptive
from distillab.strategies.adversarial import Adversarial
from distillab.strategies.attention import Attention
from distillab.strategies.base import Strategy
from distillab.strategies.dkd import DKD
from distillab.strategies.feature import Feature
from distillab.strategies.multi_teacher import MultiTeacher
from distillab.strategies.none import NoDistillation
from distillab.strategies.progressive import Progressive
from distillab.strategies.relational import Relational
from distillab.strategies.response import Response
from distillab.strategies.selective import Selective
from distillab.strategies.self_distillation import SelfDistillation

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
}

__all__ = ["STRATEGIES", "Strategy"]
