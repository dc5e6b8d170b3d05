"""Teacher uploads: image classifiers (safetensors, ONNX) and language models (GGUF, a tar of
a Hugging Face folder), validated before they are kept; and the caller's models."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select

from distillab.errors import SpecError
from distillab.inputs import parse_document, text_problem
from distillab.service import registry
from distillab.service.db import RegisteredModel, utcnow
from distillab.service.deps import CurrentUser, ReadSession, audit_event, check_storage
from distillab.service.schemas import errors, model_public
from distillab.service.settings import Settings


def router(settings: Settings) -> APIRouter:
    router = APIRouter()
    models_dir = settings.data_dir.resolve() / "models"

    @router.post("/models", status_code=201, tags=["models"], responses=errors(400, 403, 422))
    async def upload_model(request: Request, user: CurrentUser,
                           name: Annotated[str, Query(min_length=1, max_length=200)],
                           task: Annotated[Literal["image_classification", "language_modeling"],
                                           Query(description="what the teacher does")] = "image_classification",
                           architecture: Annotated[str | None, Query(description="zoo name (GET /model-types); "
                                                                                 "image classifiers")] = None,
                           dataset: Annotated[str | None, Query(description="the data set it classifies")] = None,
                           model_args: Annotated[str, Query(description="JSON object of zoo arguments")] = "{}",
                           ) -> dict:
        """Upload a teacher. An image classifier: the request body is the safetensors or ONNX
        file, with its zoo ``architecture`` and ``dataset``. A language model
        (``task=language_modeling``): a GGUF file, or a tar(.gz) of a Hugging Face folder; it
        brings its own architecture and tokenizer and serves any text corpus."""
        def within_quota():
            with request.app.state.read_sessions() as session:
                check_storage(session, settings, user)

        await asyncio.to_thread(within_quota)
        if task == "language_modeling":
            return await _upload_language_model(request, user, name, architecture, dataset, model_args)
        from distillab.data import DATASETS
        from distillab.models.zoo import MODELS, parameter_count_on_meta

        problems = []
        for key, value in (("architecture", architecture), ("dataset", dataset)):
            if value is None:
                problems.append({"loc": ["query", key], "msg": "Field required (image classifiers)",
                                 "type": "missing"})
        if problems:
            raise RequestValidationError(problems)
        if architecture not in MODELS:
            problems.append({"loc": ["query", "architecture"], "msg": f"unknown architecture {architecture!r}",
                             "type": "value_error"})
        if dataset not in DATASETS or not (DATASETS[dataset].default_path or dataset == "digits"):
            problems.append({"loc": ["query", "dataset"], "msg": f"unknown or unavailable data set {dataset!r}",
                             "type": "value_error"})
        if text_problem(name):
            problems.append({"loc": ["query", "name"], "msg": text_problem(name), "type": "value_error"})
        args = None
        try:
            args = parse_document(model_args, "json", "model_args")
            if not isinstance(args, dict):
                raise SpecError("model_args: must be a JSON object")
        except SpecError as problem:
            args = None
            problems.append({"loc": ["query", "model_args"], "msg": str(problem), "type": "value_error"})
        if args is not None and not problems:
            info = DATASETS[dataset]
            try:
                count = parameter_count_on_meta(architecture, info.in_shape or (3, 32, 32), info.num_classes or 10,
                                                args, "model_args")
            except SpecError as problem:
                problems.append({"loc": ["query", "model_args"], "msg": str(problem), "type": "value_error"})
            else:
                if count > settings.max_model_parameters:
                    problems.append({"loc": ["query", "model_args"], "type": "value_error",
                                     "msg": f"{architecture} has {count:,} parameters; this service builds at most "
                                            f"{settings.max_model_parameters:,} (DISTILLAB_MAX_MODEL_PARAMETERS)"})
        if problems:
            raise RequestValidationError(problems)
        tmp, sha256, size, fmt = await registry.receive(request, models_dir, int(settings.max_upload_mb * 2**20))
        try:
            if fmt in registry.LANGUAGE_MODEL_FORMATS:
                raise registry.UploadError(400, f"a {'GGUF file' if fmt == registry.GGUF else 'tar archive'} is a "
                                                "language model: upload it with task=language_modeling")
            model_id, _ = await asyncio.to_thread(registry.validate_and_store, tmp, fmt, architecture, args,
                                                  dataset, models_dir)
        finally:
            tmp.unlink(missing_ok=True)
        return _register(user, name, architecture, args, fmt, sha256, size, dataset, model_id, request)

    async def _upload_language_model(request: Request, user, name: str, architecture, dataset, model_args) -> dict:
        problems = [{"loc": ["query", key], "type": "value_error",
                     "msg": f"a language model brings its own {what}; leave {key} unset"}
                    for key, value, what in (("architecture", architecture, "architecture and tokenizer"),
                                             ("dataset", dataset, "tokenizer and serves any corpus"),
                                             ("model_args", None if model_args == "{}" else model_args, "config"))
                    if value is not None]
        if text_problem(name):
            problems.append({"loc": ["query", "name"], "msg": text_problem(name), "type": "value_error"})
        if problems:
            raise RequestValidationError(problems)
        limit = int(settings.max_upload_mb * 2**20)
        tmp, sha256, size, fmt = await registry.receive(request, models_dir, limit)
        try:
            if fmt not in registry.LANGUAGE_MODEL_FORMATS:
                raise registry.UploadError(400, f"a language model upload is a GGUF file or a tar archive of a "
                                                f"Hugging Face folder; this is {fmt}")
            model_id, _, parameters = await asyncio.to_thread(
                registry.validate_and_store_language_model, tmp, fmt, models_dir, limit,
                settings.data_dir.absolute() / "cache", settings.max_model_parameters)
        finally:
            tmp.unlink(missing_ok=True)
        return _register(user, name, "causal_lm", {"parameters": parameters}, fmt, sha256, size, "", model_id,
                         request)

    def _register(user, name, architecture, args, fmt, sha256, size, dataset, model_id, request) -> dict:
        model = RegisteredModel(id=model_id, owner_id=user.id, name=name, architecture=architecture, model_args=args,
                                file_format=fmt, sha256=sha256, size_bytes=size, dataset=dataset, created_at=utcnow())
        with request.app.state.write_sessions.begin() as session:
            session.add(model)
            audit_event(session, user, "model.upload", model_id, name=name, sha256=sha256, size_bytes=size)
        return model_public(model)

    @router.get("/models", tags=["models"])
    def list_models(user: CurrentUser, session: ReadSession) -> list[dict]:
        models = session.scalars(select(RegisteredModel).where(RegisteredModel.owner_id == user.id)
                                 .order_by(RegisteredModel.created_at.desc())).all()
        return [model_public(m) for m in models]

    return router
