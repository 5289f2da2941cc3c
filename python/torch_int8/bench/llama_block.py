"""A Llama-style decoder block for `bench models`: RMSNorm -> causal self-attention (scaled dot
product, no rotary embedding: it changes no layer shape) -> residual, RMSNorm -> SwiGLU MLP ->
residual, then a mean-pooled linear classifier so that the step's loss is cross-entropy over
labels, as the other models'. Written here (no transformers package needed). Defaults: Llama-2-7B's
shapes, hidden 4096, 32 heads, MLP 11008."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention and SwiGLU MLP, each added to the residual stream."""

    def __init__(self, hidden: int = 4096, heads: int = 32, mlp: int = 11008):
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = RMSNorm(hidden), RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)
        self.gate_up = nn.Linear(hidden, 2 * mlp, bias=False)
        self.down = nn.Linear(mlp, hidden, bias=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attn_norm(x))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    """One DecoderBlock and a mean-pooled linear classifier (the `bench models` step's loss)."""

    def __init__(self, hidden: int = 4096, heads: int = 32, mlp: int = 11008, classes: int = 1000):
        super().__init__()
        self.block = DecoderBlock(hidden, heads, mlp)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).mean(1))
