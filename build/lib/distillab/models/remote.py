"""A teacher served over HTTP by ``distillab serve-teacher``: it reveals only its top-k
probabilities per input (at the server's fixed temperature), never weights or full logits.

``RemoteTeacher`` is a module like any teacher: it returns (B, K) log-probabilities in which
the k revealed classes hold their own and the rest share the tail mass evenly, so the teacher
cache fills from it exactly as from a local teacher. ``top_k`` tells the response strategy to
compare only the k classes and one tail bucket (``losses.topk_bucket_kl``), so the even spread
never acts as a target.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from torch import nn

from distillab.errors import CheckpointError

TOPK_PATH = "/v1/topk"
INFO_PATH = "/v1/info"
NPY = "application/x-npy"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class RemoteTeacher(nn.Module):
    def __init__(self, url: str, api_key: str | None, in_shape, num_classes: int, where: str = "teacher",
                 timeout_s: float = 120.0):
        super().__init__()
        import httpx

        self.url, self.where, self.num_classes = url.rstrip("/"), where, num_classes
        self.client = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        info = self._call("GET", INFO_PATH).json()
        try:
            self.top_k, self.temperature = int(info["k"]), float(info["temperature"])
            self.fingerprint, served_classes = str(info["fingerprint"]), int(info["num_classes"])
            served_shape = tuple(info["in_shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}.url: {self.url}{INFO_PATH} is not a distillab teacher server "
                                  f"(answered {str(info)[:200]})") from None
        if served_classes != num_classes:
            raise CheckpointError(f"{where}.url: the served teacher has {served_classes} classes but the dataset has "
                                  f"{num_classes}")
        if served_shape != tuple(in_shape):
            raise CheckpointError(f"{where}.url: the served teacher takes inputs of shape {served_shape}, the data "
                                  f"is {tuple(in_shape)}")
        if not 1 <= self.top_k <= num_classes:
            raise CheckpointError(f"{where}.url: the server reveals k = {self.top_k} of {num_classes} classes")

    def _call(self, method: str, path: str, **kwargs):
        import httpx

        try:
            response = self.client.request(method, self.url + path, **kwargs)
        except httpx.HTTPError as error:
            raise CheckpointError(f"{self.where}.url: cannot reach {self.url} ({error})") from None
        if response.status_code == 401:
            raise CheckpointError(f"{self.where}.url: {self.url} refused the API key (set it in the environment "
                                  f"variable named by {self.where}.api_key_env)")
        if response.status_code != 200:
            raise CheckpointError(f"{self.where}.url: {self.url}{path} answered HTTP {response.status_code}: "
                                  f"{response.text[:300]}")
        return response

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # (B, *in_shape) -> (B, K) log-probabilities
        body = npy_bytes(inputs.detach().float().cpu().numpy())
        answer = self._call("POST", TOPK_PATH, content=body, headers={"Content-Type": NPY}).json()
        try:
            indices = torch.as_tensor(answer["indices"], dtype=torch.int64)  # (B, k)
            probabilities = torch.as_tensor(answer["probabilities"], dtype=torch.float32)  # (B, k)
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise CheckpointError(f"{self.where}.url: the server's answer is not top-k indices and "
                                  "probabilities") from None
        batch = inputs.shape[0]
        if indices.shape != (batch, self.top_k) or probabilities.shape != (batch, self.top_k):
            raise CheckpointError(f"{self.where}.url: the server returned {tuple(indices.shape)} values for a batch "
                                  f"of {batch}; it announced k = {self.top_k}")
        if (indices.min() < 0 or indices.max() >= self.num_classes or not torch.isfinite(probabilities).all()
                or probabilities.min() < 0 or probabilities.sum(-1).max() > 1 + 1e-3):
            raise CheckpointError(f"{self.where}.url: the server returned invalid classes or probabilities")
        rest = self.num_classes - self.top_k
        tail = (1.0 - probabilities.sum(-1)).clamp(min=1e-12)  # (B,)
        # the tail mass spread evenly: no class outside the k can beat one inside it
        spread = torch.log(tail / rest) if rest else torch.full((batch,), -math.inf)
        log_probs = spread.unsqueeze(-1).expand(batch, self.num_classes).clone()  # (B, K)
        log_probs.scatter_(1, indices, probabilities.clamp(min=1e-12).log())
        return log_probs.to(inputs.device)
