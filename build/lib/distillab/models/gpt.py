"""A small GPT/Llama-style decoder for language-model students, nanoGPT-readable: pre-norm
blocks of causal self-attention and an MLP, RMSNorm, rotary position embeddings (as the
Llama-family teachers use), tied input/output embeddings.

``GPT(in_shape=(context_length,), num_classes=vocab_size, ...)`` fits the zoo's builder
signature: the "classes" of a language model are its vocabulary. ``forward(ids)`` returns
logits (B, T, V); ``forward(ids, hidden_states=True)`` also returns every block's output
(for layer-wise distillation). ``generate`` decodes greedily with a key/value cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (B, T, D)
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotary_tables(head_dim: int, length: int, theta: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim / 2) of RoPE (Su et al. 2021)."""
    inverse = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inverse)  # (T, hd/2)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):  # x (B, H, T, hd); cos, sin (T, hd/2)
    x1, x2 = x[..., ::2], x[..., 1::2]  # (B, H, T, hd/2) each
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout

    def forward(self, x, cos, sin, past=None, probabilities: bool = False):
        """x (B, T, D); past: (k, v) of earlier positions. Returns (output, (k, v)) and, with
        ``probabilities``, the attention probabilities (B, H, T, T) too (computed explicitly)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, hd) each
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, T_past + T, hd)
        if probabilities:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            attention = scores.masked_fill(~causal, float("-inf")).softmax(-1)  # (B, H, T, T)
            y = F.dropout(attention, self.dropout, self.training) @ v  # (B, H, T, hd)
            return self.out(y.transpose(1, 2).reshape(B, T, D)), (k, v), attention
        # with a cache, one new position attends to everything before it: no mask needed
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, D)), (k, v)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attention = Attention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cos, sin, past=None, probabilities: bool = False):  # (B, T, D)
        attended, present, *attention = self.attention(self.norm1(x), cos, sin, past, probabilities)
        x = x + self.drop(attended)
        return x + self.drop(self.mlp(self.norm2(x))), present, *attention


class GPT(nn.Module):
    def __init__(self, in_shape, num_classes, layers: int = 4, dim: int = 256, heads: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, rope_theta: float = 10_000.0):
        super().__init__()
        if len(tuple(in_shape)) != 1:
            raise ValueError(f"gpt takes token ids: in_shape must be (context_length,), got {tuple(in_shape)}")
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim ({dim}) must split into {heads} heads of an even size")
        self.context_length, self.vocab_size = int(in_shape[0]), int(num_classes)
        self.embed = nn.Embedding(num_classes, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, num_classes, bias=False)
        self.head.weight = self.embed.weight  # tied (Press & Wolf 2017): most of a small LM's parameters
        cos, sin = rotary_tables(dim // heads, self.context_length, rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            for projection in (block.attention.out, block.mlp[2]):
                nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids, hidden_states: bool = False, attentions: bool = False):  # ids (B, T) int64
        """Logits (B, T, V); with ``hidden_states`` / ``attentions``, (logits, {"hidden_states":
        [embeddings, block 1, ..., block L] each (B, T, D), "attentions": per block (B, H, T, T)}),
        the layout transformers uses."""
        T = ids.shape[1]
        if T > self.context_length:
            raise ValueError(f"{T} tokens exceed the model's context of {self.context_length}")
        x = self.embed(ids)  # (B, T, D)
        states, maps = [x], []
        for block in self.blocks:
            x, _, *attention = block(x, self.cos[:T], self.sin[:T], probabilities=attentions)
            states.append(x)
            maps += attention
        logits = self.head(self.norm(x))  # (B, T, V)
        if not (hidden_states or attentions):
            return logits
        return logits, {"hidden_states": states if hidden_states else [], "attentions": maps}

    @torch.no_grad()
    def generate(self, ids, new_tokens: int, temperature: float | None = None, generator=None):
        """Continuation of ids (B, T0) by ``new_tokens`` tokens, one position per step with a
        key/value cache (B, T0 + new_tokens): greedy, or sampled at ``temperature``."""
        past = [None] * len(self.blocks)
        x, start = ids, 0
        for _ in range(new_tokens):
            T = x.shape[1]
            if start + T > self.context_length:
                raise ValueError(f"generation would exceed the model's context of {self.context_length}")
            h = self.embed(x)
            cos, sin = self.cos[start : start + T], self.sin[start : start + T]
            for index, block in enumerate(self.blocks):
                h, past[index] = block(h, cos, sin, past[index])[:2]
            logits = self.head(self.norm(h[:, -1])).float()  # (B, V)
            if temperature is None:
                next_token = logits.argmax(-1, keepdim=True)  # (B, 1)
            else:
                next_token = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
            ids = torch.cat([ids, next_token], dim=1)
            start, x = start + T, next_token
        return ids
