"""GPT-style Transformer decoder: Vaswani et al. (2017), "Attention Is All You Need", as a decoder-only language
model (Radford et al. 2018/2019, GPT and GPT-2), with pre-LayerNorm blocks (Xiong et al. 2020) and the
initialisation and weight-decay habits of nanoGPT.

One definition serves training and decoding: `Block` and `CausalSelfAttention` take a mask of the keys each query
may see and, when decoding, a `KVCache` that the attention appends this call's keys and values to, so each new
token costs one position, not the whole prefix. Attention is `F.scaled_dot_product_attention` (fused kernels on
every device). Compiled (Numba) decoding and attention kernels and a cache-memory pool used to sit beside this;
none bought 20% on sampling or training as a user runs them, so they were removed (docs/performance.md).

Every boundary token starts an independent item: attention never crosses it and positions restart at it. One row
can therefore hold several packed items (the trainer's `--pack`) and each is read exactly as if it were alone.
Positions are learned, so a context longer than `block_size` is handled as a sliding window: the logits at position
t >= block_size are those of the last `block_size` tokens read afresh from position 0 (in `forward` and in `step`
alike, so both agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from makemore.config import check, field
from makemore.data.lines import BOUNDARY
from makemore.models.base import Dropout, LanguageModel, segment_starts, sequence_nll
from makemore.models.labels import LabelTable, check_mode, take_item_labels


@dataclass
class TransformerConfig:
    block_size: int = field(32, "longest context (positions); longer contexts slide a window of this size")
    n_layer: int = field(3, "number of Transformer blocks")
    n_head: int = field(4, "attention heads per block (must divide n_embd)")
    n_embd: int = field(128, "width of the residual stream")
    dropout: float = field(0.15, "dropout on the residual branches and the embeddings")
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


class KVCache(NamedTuple):
    """One layer's keys and values while decoding: buffers (block_size, B, n_head, head_size) whose first t
    positions are filled (views into the `DecodeState`'s buffers of all layers)."""

    keys: torch.Tensor
    values: torch.Tensor
    t: int

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes k, v (B, n_head, T, head_size) at positions t.. and returns all keys and values so far, as views
        (B, n_head, t + T, head_size). Written in place: a decoding state is consumed by the step given it."""
        end = self.t + k.size(2)
        self.keys[self.t : end] = k.permute(2, 0, 1, 3)  # (T, B, nh, hs)
        self.values[self.t : end] = v.permute(2, 0, 1, 3)
        return self.keys[:end].permute(1, 2, 0, 3), self.values[:end].permute(1, 2, 0, 3)


def visible_keys(starts: torch.Tensor) -> torch.Tensor:
    """starts (B, T): where each query's item starts -> mask (B, 1, T, T), True where query i may see key j: its own
    item's keys up to itself. Computed once per forward and shared by every layer."""
    t = torch.arange(starts.size(1), device=starts.device)
    return ((t[None, None, :] <= t[None, :, None]) & (t[None, None, :] >= starts[:, :, None]))[:, None]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v of all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.attn_dropout
        self.resid_drop = Dropout(config.dropout)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> queries, keys, values (B, T, n_head, head_size) each, views of one projection."""
        B, T, C = x.shape
        return self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).unbind(2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). mask (B, 1, T, S): the keys each query may see, S = T, or t + T with a cache
        that already holds t positions."""
        B, T, C = x.shape
        q, k, v = (part.transpose(1, 2) for part in self.qkv(x))  # (B, nh, T, hs) each
        if cache is not None:  # decoding: attend over every position cached so far, this call's included
            k, v = cache.append(k, v)  # (B, nh, S, hs)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_drop(self.c_proj(y))

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention probabilities (B, n_head, T, T) of `forward` (no cache), which the fused kernel never
        materialises: for plots."""
        q, k, _ = (part.transpose(1, 2) for part in self.qkv(x))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, T)
        return scores.masked_fill(~mask, float("-inf")).softmax(-1)


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class DecodeState:
    """What `Transformer.step` continues from. Keys and values of all layers live in one buffer per kind,
    positions outermost: a step writes one contiguous slab, a reorder copies the slabs in use in one call, memory
    pages are first touched only as positions fill, and attention reads the strided views at full speed (measured:
    1.4 ms per SDPA call against 2.0 ms with each row's positions contiguous, 1,000 rows, 8 positions). Buffers
    are allocated empty: a step reads only positions written before it."""

    tokens: torch.Tensor  # (B, block_size): the window's tokens, to re-read it once it slides
    start: torch.Tensor  # (B,): where each row's current item starts (a boundary token hides what came before)
    keys: torch.Tensor  # (block_size, n_layer, B, n_head, head_size)
    values: torch.Tensor
    t: int = 0  # positions read so far (block_size once the window slides)

    def layer(self, i: int) -> KVCache:
        return KVCache(self.keys[:, i], self.values[:, i], self.t)


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

    @property
    def rows_independent(self) -> bool:
        return self.config.attn_dropout == 0  # attention dropout draws from torch's global generator

    def make_label_layers(self, n_labels: int, mode: str) -> None:
        check_mode("transformer", mode, ("add", "state"))
        self.label_emb = LabelTable(n_labels, self.config.n_embd, std=0.02)  # the scale of GPT-2's embeddings

    def _run(
        self, idx: torch.Tensor, state: DecodeState | None = None, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens idx (B, T) read from position 0, no item longer than block_size -> logits (B, T, V). With a
        state (t = 0), every layer's keys and values are also written into its cache. `label` (B, T, C): a labelled
        model's label vectors, added to the inputs."""
        starts = segment_starts(idx)  # (B, T)
        positions = torch.arange(idx.size(1), device=idx.device) - starts  # positions restart at each boundary
        mask = visible_keys(starts)  # (B, 1, T, T)
        x = self.wte(idx) + self.wpe(positions)
        return self._decode(x if label is None else x + label, mask, state)

    def _decode(self, x: torch.Tensor, mask: torch.Tensor, state: DecodeState | None) -> torch.Tensor:
        """Token + position embeddings x (B, T, C) -> logits (B, T, V), through every block."""
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if state is None else state.layer(i))
        return self.lm_head(self.ln_f(x))

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape
        bs = self.config.block_size
        label = None
        if self.n_labels:  # each item's label vector at its every position (add) or at its start (state)
            idx, labels, at_start = take_item_labels(idx, self.vocab_size)
            label = self.label_emb(labels)  # (B, T, n_embd)
            if self.label_mode == "state":
                label = label * at_start[..., None].to(label.dtype)
        # packed rows wider than block_size whose items all fit it (positions restart at boundaries): one pass
        whole = T > bs and int((torch.arange(T, device=idx.device) - segment_starts(idx)).max()) < bs
        logits = self._run(idx if whole else idx[:, :bs], label=label if whole or label is None else label[:, :bs])
        if T > bs and not whole:  # sliding window: position t sees tokens t - bs + 1 .. t, read from position 0
            windows = idx.unfold(1, bs, 1)[:, 1:].reshape(-1, bs)  # (B * (T - bs), bs)
            if label is None:
                late = [self._run(chunk)[:, -1] for chunk in windows.split(4096)]  # bounded memory per chunk
            else:  # the label vectors of the same windows
                vectors = label.unfold(1, bs, 1)[:, 1:].permute(0, 1, 3, 2).reshape(-1, bs, label.size(-1))
                late = [self._run(c, label=v)[:, -1] for c, v in zip(windows.split(4096), vectors.split(4096))]
            logits = torch.cat([logits, torch.cat(late).view(B, T - bs, -1)], dim=1)  # (B, T, V)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every layer for idx (B, T <= block_size): (B, n_head, T, T) each, rows = queries.
        Call it in eval mode (no dropout)."""
        if idx.size(1) > self.config.block_size:
            raise ValueError(f"attention maps need at most block_size={self.config.block_size} tokens")
        starts = segment_starts(idx)
        mask = visible_keys(starts)
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device) - starts)  # (B, T, C)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.ln_1(x), mask))
            x = block(x, mask)
        return maps

    # ----- incremental decoding: the same blocks, one position per step, over a KV cache (`DecodeState`). A step
    # writes into the buffers of the state it is given: a state is consumed by `step` (callers continue from the
    # returned state; `reorder_state` copies).
    def init_state(self, batch_size: int) -> DecodeState:
        c, like = self.config, self.wte.weight
        shape = (c.block_size, c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head)
        return DecodeState(
            tokens=torch.empty(batch_size, c.block_size, dtype=torch.long, device=like.device),
            start=torch.zeros(batch_size, dtype=torch.long, device=like.device),
            keys=like.new_empty(shape),
            values=like.new_empty(shape),
        )

    def step(self, idx: torch.Tensor, state: DecodeState) -> tuple[torch.Tensor, DecodeState]:
        t, bs = state.t, self.config.block_size  # t: positions already in the cache
        if t >= bs:  # the window slides: positions shift, so re-read the window afresh into the cache
            tokens = torch.cat([state.tokens[:, 1:], idx[:, None]], dim=1)  # (B, block_size)
            logits = self._run(tokens, replace(state, tokens=tokens, t=0))  # (B, block_size, V)
            return logits[:, -1], replace(state, tokens=tokens, t=bs)
        state.tokens[:, t] = idx
        start = torch.where(idx == BOUNDARY, t, state.start)  # (B,)
        x = self.wte(idx) + self.wpe(t - start)  # (B, C): the one new position
        mask = torch.arange(t + 1, device=idx.device) >= start[:, None]  # (B, t + 1): the item's keys so far
        logits = self._decode(x[:, None], mask[:, None, None], state)  # (B, 1, V)
        return logits[:, 0], replace(state, start=start, t=t + 1)

    def reorder_state(self, state: DecodeState, rows: torch.Tensor) -> DecodeState:
        new = self.init_state(rows.numel())
        t = state.t  # copy only the positions in use
        new.tokens[:, :t] = state.tokens[:, :t].index_select(0, rows)
        torch.index_select(state.keys[:t], 2, rows, out=new.keys[:t])  # [:t] of a contiguous buffer: contiguous
        torch.index_select(state.values[:t], 2, rows, out=new.values[:t])
        return replace(new, start=state.start.index_select(0, rows), t=t)
