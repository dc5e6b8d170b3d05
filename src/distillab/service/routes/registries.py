"""The registries: the strategies, and the model types, zoo architectures, teacher formats and
data sets this service accepts."""

from __future__ import annotations

from fastapi import APIRouter

from distillab.service import registry
from distillab.service.deps import CurrentUser
from distillab.service.settings import Settings


def router(settings: Settings) -> APIRouter:
    router = APIRouter()
    @router.get("/strategies", tags=["registries"])
    def strategies(_user: CurrentUser) -> list[dict]:
        """The distillation strategies, with their parameters and defaults."""
        from distillab.strategies import catalog

        return catalog()

    @router.get("/model-types", tags=["registries"])
    def model_types(_user: CurrentUser) -> dict:
        """Model types, zoo architectures, teacher file formats and the installed data sets."""
        from distillab.data import DATASETS
        from distillab.data.corpora import CORPORA
        from distillab.models.hf import PRETRAINED
        from distillab.models.zoo import MODELS
        from distillab.tasks.language_modeling import LM_STUDENTS

        return {
            "model_types": [{"type": "image_classifier", "input": "(C, H, W) images", "output": "class logits"},
                            {"type": "language_model", "input": "(T,) token ids", "output": "next-token logits",
                             "task": "language_modeling"}],
            "architectures": sorted(MODELS),
            "language_model_students": sorted(LM_STUDENTS),
            "teacher_formats": [registry.SAFETENSORS, registry.ONNX, registry.GGUF, "hf (tar archive)"],
            "pretrained_teachers": {name: entry.summary for name, entry in PRETRAINED.items()},
            "datasets": sorted(name for name, info in DATASETS.items() if info.default_path or name == "digits"),
            "text_corpora": sorted(name for name in CORPORA if name != "text_folder"),
        }

    return router
