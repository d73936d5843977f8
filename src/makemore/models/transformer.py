"""GPT-style Transformer decoder: Vaswani et al. (2017), "Attention Is All You Need", as a decoder-only language
model (Radford et al. 2018/2019, GPT and GPT-2), with pre-LayerNorm blocks (Xiong et al. 2020) and the
initialisation and weight-decay habits of nanoGPT.

Attention goes through `F.scaled_dot_product_attention` (fused kernels on every device). Decoding keeps a
key/value cache per layer, so each new token costs one position, not the whole prefix. Positions are learned, so a
context longer than `block_size` is handled as a sliding window: the logits at position t >= block_size are those
of the last `block_size` tokens read afresh from position 0 (in `forward` and in `step` alike, so both agree).

Every boundary token starts an independent item: attention never crosses it and positions restart at it. One row
can therefore hold several packed items (the trainer's `--pack`) and each is read exactly as if it were alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check, field
from ..data import BOUNDARY
from .base import Dropout, LanguageModel, segment_starts, sequence_nll

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, n_head, t, head_size)


@dataclass
class TransformerConfig:
    block_size: int = field(32, "longest context (positions); longer contexts slide a window of this size")
    n_layer: int = field(3, "number of Transformer blocks")
    n_head: int = field(4, "attention heads per block (must divide n_embd)")
    n_embd: int = field(128, "width of the residual stream")
    dropout: float = field(0.1, "dropout on the residual branches and the embeddings")
    attn_dropout: float = field(0.0, "dropout on attention weights (slower on CPU: no fused attention kernel then)")
    bias: bool = field(True, "biases in the linear layers and LayerNorms")
    tie_weights: bool = field(False, "share the token embedding with the output layer (Press & Wolf 2017)")

    def __post_init__(self):
        check(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")
        check(min(self.n_layer, self.n_head, self.n_embd) >= 1, "n_layer, n_head and n_embd must be >= 1")
        check(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        check(0 <= self.dropout < 1 and 0 <= self.attn_dropout < 1, "dropout and attn_dropout must be in [0, 1)")
        # upper limits, so a typo or a crafted run.json fails here instead of exhausting memory
        check(self.block_size <= 65536, f"block_size must be <= 65536, got {self.block_size}")
        check(self.n_embd <= 65536 and self.n_layer <= 256, "n_embd must be <= 65536 and n_layer <= 256")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v of all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.attn_dropout
        self.resid_drop = Dropout(config.dropout)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        return q, k, v  # (B, nh, T, hs) each

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, C); allowed (B, 1, T, t + T): which keys each query may see; `past`: keys/values of the t
        earlier positions (decoding). Returns y (B, T, C) and the keys/values of all t + T positions."""
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, nh, t + T, hs)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.c_proj(y)), (k, v)


class Block(nn.Module):
    """Pre-LN block: the residual stream is only ever added to, which keeps deep stacks trainable."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias),
            Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        a, cache = self.attn(self.ln_1(x), allowed, past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, cache


class Transformer(LanguageModel):
    packable = True  # boundaries reset attention and positions: packed items are independent

    def __init__(self, config: TransformerConfig, vocab_size: int):
        super().__init__(config, vocab_size)
        c = config
        self.wte = nn.Embedding(vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, vocab_size, bias=False)
        # GPT-2 initialisation: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 n_layer) so the
        # residual stream's variance does not grow with depth. Small logits at the start: loss ~ ln V.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
        if c.tie_weights:
            self.lm_head.weight = self.wte.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def context_size(self) -> int:
        return self.config.block_size

    def _window(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, T, C) and the attention mask (B, 1, T, T) of a window read from position 0."""
        T = idx.size(1)
        starts = segment_starts(idx)  # (B, T)
        t = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(t - starts))  # (B, T, C): positions restart at each boundary
        allowed = (t[None, None, :] <= t[None, :, None]) & (t[None, None, :] >= starts[:, :, None])  # (B, T, T)
        return x, allowed[:, None]

    def _run(self, idx: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Tokens idx (B, T <= block_size) at positions 0.. -> logits (B, T, V) and the keys/values of every layer."""
        x, allowed = self._window(idx)
        cache = []
        for block in self.blocks:
            x, kv = block(x, allowed)
            cache.append(kv)
        return self.lm_head(self.ln_f(x)), cache  # (B, T, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        bs = self.config.block_size
        logits, _ = self._run(idx[:, :bs])  # (B, min(T, bs), V)
        if T > bs:  # sliding window: position t sees tokens t - bs + 1 .. t, read from position 0
            windows = idx.unfold(1, bs, 1)[:, 1:].reshape(-1, bs)  # (B * (T - bs), bs)
            late = [self._run(chunk)[0][:, -1] for chunk in windows.split(4096)]  # bounded memory per chunk
            logits = torch.cat([logits, torch.cat(late).view(B, T - bs, -1)], dim=1)  # (B, T, V)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every layer for idx (B, T <= block_size): (B, n_head, T, T) each, rows = queries.

        Recomputed explicitly (the fused kernel never materialises them). Call it in eval mode (no dropout).
        """
        if idx.size(1) > self.config.block_size:
            raise ValueError(f"attention maps need at most block_size={self.config.block_size} tokens")
        x, allowed = self._window(idx)
        maps = []
        for block in self.blocks:
            q, k, _ = block.attn.qkv(block.ln_1(x))
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, T)
            maps.append(scores.masked_fill(~allowed, float("-inf")).softmax(-1))
            x, _ = block(x, allowed)
        return maps

    # ----- incremental decoding: keys/values of every layer in preallocated buffers (L, B, n_head, block_size, hs)
    # that each step writes one position of, the last tokens (to re-read a slid window), and where each row's current
    # item started (a boundary token restarts positions and hides everything before it). One query per step needs no
    # fused attention kernel, and calling the functional ops directly skips nn.Module overhead, which dominates at
    # batch size 1. A step writes into the buffers of the state it is given: a state is consumed by `step` (every
    # caller continues from the returned state, and `reorder_state` copies).
    def init_state(self, batch_size: int) -> dict[str, Any]:
        device = self.device
        return {
            "tokens": torch.empty(batch_size, 0, dtype=torch.long, device=device),
            "k": None,
            "v": None,
            "start": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def _empty_cache(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        c = self.config
        # empty, not zeros: a step reads only the positions written before it
        return like.new_empty(c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head)

    def step(self, idx: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        c = self.config
        bs, nh = c.block_size, c.n_head
        t = state["tokens"].size(1)  # positions already in the cache
        tokens = torch.cat([state["tokens"], idx[:, None]], dim=1)[:, -bs:]  # (B, <= bs)
        if t >= bs:  # the window slides: positions shift, so the cache is stale; read the window afresh
            logits, cache = self._run(tokens)
            keys, values = torch.stack([k for k, _ in cache]), torch.stack([v for _, v in cache])  # (L, B, nh, bs, hs)
            return logits[:, -1], {"tokens": tokens, "k": keys, "v": values, "start": state["start"]}
        B, C = idx.size(0), c.n_embd
        keys, values = state["k"], state["v"]
        if keys is None:
            keys, values = self._empty_cache(B, self.wte.weight), self._empty_cache(B, self.wte.weight)
        start = torch.where(idx == BOUNDARY, t, state["start"])  # (B,)
        x = F.embedding(idx, self.wte.weight) + F.embedding(t - start, self.wpe.weight)  # (B, C): one new position
        hidden = torch.arange(t + 1, device=idx.device) < start[:, None]  # (B, t + 1): before the item's start
        bias = torch.zeros(B, nh, 1, t + 1, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill_(hidden[:, None, None], float("-inf")).view(B * nh, 1, t + 1)
        hs = C // nh
        for i, block in enumerate(self.blocks):
            attn, mlp = block.attn, block.mlp
            h = F.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias)
            q, k, v = F.linear(h, attn.c_attn.weight, attn.c_attn.bias).view(B, 3, nh, hs).unbind(1)  # (B, nh, hs)
            keys[i, :, :, t], values[i, :, :, t] = k, v
            past_k = keys[i, :, :, : t + 1].reshape(B * nh, t + 1, hs)  # views: batch and heads merge without a copy
            past_v = values[i, :, :, : t + 1].reshape(B * nh, t + 1, hs)
            scores = torch.baddbmm(bias, q.reshape(B * nh, 1, hs), past_k.transpose(1, 2), alpha=hs**-0.5)
            y = torch.bmm(scores.softmax(-1), past_v).view(B, C)  # (B * nh, 1, hs) -> (B, C)
            x = x + F.linear(y, attn.c_proj.weight, attn.c_proj.bias)
            h = F.layer_norm(x, (C,), block.ln_2.weight, block.ln_2.bias)
            x = x + F.linear(F.gelu(F.linear(h, mlp[0].weight, mlp[0].bias)), mlp[2].weight, mlp[2].bias)
        x = F.layer_norm(x, (C,), self.ln_f.weight, self.ln_f.bias)
        logits = F.linear(x, self.lm_head.weight)  # (B, V)
        return logits, {"tokens": tokens, "k": keys, "v": values, "start": start}

    def reorder_state(self, state: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
        keys, values = state["k"], state["v"]
        if keys is not None:
            t = min(state["tokens"].size(1), self.config.block_size)  # copy only the positions in use
            new_keys, new_values = self._empty_cache(rows.numel(), keys), self._empty_cache(rows.numel(), values)
            new_keys[:, :, :, :t] = keys[:, :, :, :t].index_select(1, rows)
            new_values[:, :, :, :t] = values[:, :, :, :t].index_select(1, rows)
            keys, values = new_keys, new_values
        return {
            "tokens": state["tokens"].index_select(0, rows),
            "k": keys,
            "v": values,
            "start": state["start"].index_select(0, rows),
        }
