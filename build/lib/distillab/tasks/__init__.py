"""Tasks: what a sample is and how success is measured. A literal registry (design rule 2)."""

from distillab.tasks.base import Evaluation, Task
from distillab.tasks.image_classification import ImageClassification
from distillab.tasks.language_modeling import LanguageModeling
from distillab.tasks.text_embedding import TextEmbedding

TASKS: dict[str, Task] = {
    "image_classification": ImageClassification(),
    "language_modeling": LanguageModeling(),
    "text_embedding": TextEmbedding(),
}

__all__ = ["TASKS", "Evaluation", "Task"]
