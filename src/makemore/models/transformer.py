"""GPT-style Transformer decoder: Vaswani et al. (2017), "Attention Is All You Need", as a decoder-only language
model (Radford et al. 2018/2019, GPT and GPT-2), with pre-LayerNorm blocks (Xiong et al. 2020) and the
initialisation and weight-decay habits of nanoGPT.

Attention goes through `F.scaled_dot_product_attention` (fused kernels on every device), or, for short float32
windows on a CPU, through compiled loops that skip the masked pairs (`attention_kernel.py`). Decoding keeps a
key/value cache per layer, so each new token costs one position, not the whole prefix. Positions are learned, so a
context longer than `block_size` is handled as a sliding window: the logits at position t >= block_size are those
of the last `block_size` tokens read afresh from position 0 (in `forward` and in `step` alike, so both agree).

Every boundary token starts an independent item: attention never crosses it and positions restart at it. One row
can therefore hold several packed items (the trainer's `--pack`) and each is read exactly as if it were alone.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from makemore.config import check, field
from makemore.data.lines import BOUNDARY
from makemore.models.base import Dropout, LanguageModel, segment_starts, sequence_nll

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, n_head, t, head_size)

KERNEL_MAX_ROWS = 8  # batches up to this size step through the compiled kernel (transformer_kernel.py) ...
KERNEL_AFTER_DECODES = 8  # ... once this many decodes have started in the process (loading it costs ~0.5 s)
CACHE_POOL_BYTES = 256 << 20  # decoding-cache memory a model keeps for reuse (see CachePool)
# Items up to this many positions attend through attention_kernel.py on a CPU. It visits only the allowed pairs,
# so it wins where packing leaves few of them (names, 16 wide: forward + backward 0.7 ms vs 1.3 ms per layer, batch
# 32, 1 thread); on full causal windows of 32+ positions PyTorch's kernel is 1.7-3x faster (1 thread).
COMPILED_ATTENTION_MAX_T = 16


class CachePool:
    """Memory for KV caches, reused once no decoding state holds it. A fresh buffer costs a page fault per 4 KB on
    first touch, and on the 2-core CI VM that was a quarter of the time of sampling 1,000 names in one batch
    (6,400 faults per call; 116-125 ms with fresh buffers against 88-93 ms with reused memory, measured by
    switching glibc's mmap threshold). A buffer is free again when the tensors handed out from it are garbage,
    which weak references tell; sizes are rounded up to a power of two so similar requests share a buffer."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.entries: list[tuple[torch.Tensor, list[weakref.ref]]] = []  # (flat buffer, its users)

    def take(self, shape: tuple[int, ...], parts: int, like: torch.Tensor) -> list[torch.Tensor]:
        """`parts` uninitialised contiguous tensors of `shape`, with like's device and dtype."""
        numel = math.prod(shape)
        need = numel * parts
        free = [
            (flat.numel(), i)
            for i, (flat, users) in enumerate(self.entries)
            if need <= flat.numel() <= 2 * need
            and (flat.device, flat.dtype) == (like.device, like.dtype)
            and all(user() is None for user in users)
        ]
        if free:
            flat = self.entries.pop(min(free)[1])[0]
        else:
            flat = like.new_empty(1 << max(need - 1, 0).bit_length())
        tensors = [flat[p * numel : (p + 1) * numel].view(shape) for p in range(parts)]
        self._keep(flat, [weakref.ref(t) for t in tensors])
        return tensors

    def _keep(self, flat: torch.Tensor, users: list[weakref.ref]) -> None:
        size = flat.numel() * flat.element_size()
        while self.entries and self._bytes() + size > self.limit_bytes:
            idle = [i for i, (_, old) in enumerate(self.entries) if all(user() is None for user in old)]
            if not idle:
                return  # over the limit with buffers in use: this one is not kept
            self.entries.pop(idle[0])  # the oldest idle buffer
        if size <= self.limit_bytes:
            self.entries.append((flat, users))

    def _bytes(self) -> int:
        return sum(flat.numel() * flat.element_size() for flat, _ in self.entries)


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


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v of all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.attn_dropout
        self.resid_drop = Dropout(config.dropout)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """x (B, T, C) -> the projection (B, T, 3C) and its queries, keys, values as views (B, nh, T, hs) each."""
        B, T, C = x.shape
        qkv = linear(self.c_attn, x)
        q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        return qkv, (q, k, v)

    def forward(self, x: torch.Tensor, visible: Visibility) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, C) of a window read from position 0 -> y (B, T, C) and the window's keys and values."""
        B, T, C = x.shape
        qkv, (q, k, v) = self.qkv(x)
        dropout = self.attn_dropout if self.training else 0.0
        compiled = visible.compiled and qkv.dtype == torch.float32 and not dropout
        kernel = _attention_kernel() if compiled else None
        if kernel is not None:
            backward = torch.is_grad_enabled() and qkv.requires_grad
            y = CompiledAttention.apply(qkv, visible.starts, self.n_head, backward)  # (B, T, C)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible.allowed, dropout_p=dropout)  # (B, nh, T, hs)
            y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(linear(self.c_proj, y)), (k, v)


class CompiledAttention(torch.autograd.Function):
    """Causal attention within items, forward and backward by `attention_kernel`: qkv (B, T, 3C) -> y (B, T, C)."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, starts: torch.Tensor, n_head: int, backward: bool) -> torch.Tensor:
        kernel = _attention_kernel()
        qkv, starts = qkv.detach().contiguous(), starts.contiguous()
        B, T, C3 = qkv.shape
        y = qkv.new_empty(B, T, C3 // 3)
        # the probabilities, kept for backward; without a backward to come, one row's worth of scratch
        probs = qkv.new_empty(B if backward else 1, n_head, T, T)
        kernel.forward(qkv.numpy(), starts.numpy(), n_head, y.numpy(), probs.numpy())
        ctx.save_for_backward(qkv, starts, probs)
        ctx.n_head = n_head
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        qkv, starts, probs = ctx.saved_tensors
        dqkv = torch.zeros_like(qkv)
        kernel = _attention_kernel()
        kernel.backward(qkv.numpy(), starts.numpy(), ctx.n_head, probs.numpy(), dy.contiguous().numpy(), dqkv.numpy())
        return dqkv, None, None, None


@dataclass
class Visibility:
    """Which keys each query of a window (read from position 0) may see: its own item's, up to itself."""

    starts: torch.Tensor  # (B, T): the position where each query's item starts
    compiled: bool  # whether attention may run through the compiled kernel (which reads `starts`)

    @functools.cached_property
    def allowed(self) -> torch.Tensor:
        """The same as a mask (B, 1, T, T), for `scaled_dot_product_attention`."""
        t = torch.arange(self.starts.size(1), device=self.starts.device)
        return ((t[None, None, :] <= t[None, :, None]) & (t[None, None, :] >= self.starts[:, :, None]))[:, None]


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

    def forward(self, x: torch.Tensor, visible: Visibility) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, cache = self.attn.forward(layer_norm(self.ln_1, x), visible)
        x = x + a
        up, act, down, drop = self.mlp
        h = linear(up, layer_norm(self.ln_2, x))  # (B, T, 4C)
        h = act(h) if act._forward_hooks else F.gelu(h)
        x = x + drop(linear(down, h))
        return x, cache


# At these sizes a training step is hundreds of small ops: calling the layers' functions on their parameters instead
# of the modules (nn.Module.__call__, Sequential) made forward and backward ~25% faster. A layer with a forward
# hook (--diagnostics records activations with them) is called as a module, so the hook runs.
def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return module(x) if module._forward_hooks else F.linear(x, module.weight, module.bias)


def layer_norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    if module._forward_hooks:
        return module(x)
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


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
        # compiled small-batch step: None = automatic (after KERNEL_AFTER_DECODES decodes), True/False = always/never
        self.use_kernel: bool | None = None
        # decodes started, the weights as the kernel reads them (with the parameter versions they were read at), and
        # the arrays the current decode steps with (None: PyTorch). A plain dict: nn.Module attribute writes are slow
        self._decoding: dict[str, Any] = {"decodes": 0, "weights": None, "versions": None, "now": None}
        self._cache_pool = CachePool(CACHE_POOL_BYTES)

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

    def _window(self, idx: torch.Tensor) -> tuple[torch.Tensor, Visibility]:
        """Embeddings (B, T, C) of a window read from position 0, and which keys its queries see."""
        starts = segment_starts(idx)  # (B, T)
        t = torch.arange(idx.size(1), device=idx.device)
        positions = t - starts  # (B, T): positions restart at each boundary
        x = self.drop(self.wte(idx) + self.wpe(positions))  # (B, T, C)
        # the compiled kernel's work grows with the pairs it visits, PyTorch's with T^2: the kernel for short items
        compiled = idx.device.type == "cpu" and not torch.compiler.is_compiling()
        if compiled and idx.size(1) > COMPILED_ATTENTION_MAX_T:
            compiled = int(positions.max()) < COMPILED_ATTENTION_MAX_T
        return x, Visibility(starts, compiled)

    def _run(self, idx: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Tokens idx (B, T) read from position 0, no item longer than block_size -> logits (B, T, V) and the
        keys/values of every layer."""
        x, visible = self._window(idx)
        cache = []
        for block in self.blocks:
            x, kv = block(x, visible)
            cache.append(kv)
        return linear(self.lm_head, layer_norm(self.ln_f, x)), cache  # (B, T, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        bs = self.config.block_size
        # packed rows wider than block_size whose items all fit it (positions restart at boundaries): one pass
        whole = T > bs and int((torch.arange(T, device=idx.device) - segment_starts(idx)).max()) < bs
        logits, _ = self._run(idx if whole else idx[:, :bs])  # (B, T or min(T, bs), V)
        if T > bs and not whole:  # sliding window: position t sees tokens t - bs + 1 .. t, read from position 0
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
        x, visible = self._window(idx)
        maps = []
        for block in self.blocks:
            _, (q, k, _) = block.attn.qkv(block.ln_1(x))
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, T)
            maps.append(scores.masked_fill(~visible.allowed, float("-inf")).softmax(-1))
            x, _ = block(x, visible)
        return maps

    # ----- incremental decoding. The state: keys/values of every layer in preallocated buffers (block_size, L, B,
    # n_head, hs) that each step writes one position of; the tokens read so far in a (B, block_size) buffer (to
    # re-read the window once it slides); t, how many positions are in use; and where each row's current item
    # started (a boundary token restarts positions and hides everything before it). One query per step needs no
    # fused attention kernel, and calling the functional ops directly skips nn.Module overhead. A step writes into
    # the buffers of the state it is given: a state is consumed by `step` (callers continue from the returned
    # state, and `reorder_state` copies). Small batches on the CPU step through the compiled kernel instead. With
    # the kernels on, a reorder that only drops rows (finished items leaving a large batch) copies no cache: the
    # state's "rows" then maps each row to its row in the shared buffers, which the attention kernel reads through.
    def init_state(self, batch_size: int) -> dict[str, Any]:
        decoding = self._decoding
        decoding["decodes"] += 1
        decoding["now"] = self._kernel_arrays() if self._kernel_wanted() else None  # the weights, for this decode
        return {
            "t": 0,
            "tokens": None,  # (B, block_size), allocated with the cache on the first step
            "k": None,
            "v": None,
            "start": torch.zeros(batch_size, dtype=torch.long, device=self.device),
            "rows": None,  # (B,) the row of each row in k/v, when reorders shared them; None: row b is row b
        }

    def _new_cache(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, like = self.config, self.wte.weight
        # empty, not zeros: a step reads only the positions written before it
        # positions outermost: a step writes one contiguous slab, a reorder copies the slabs in use, and memory
        # pages are touched only as positions fill (fresh pages cost a fault each: ~2 us per 4 KB)
        shape = (c.block_size, c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head)
        tokens = torch.empty(batch_size, c.block_size, dtype=torch.long, device=like.device)
        keys, values = self._cache_pool.take(shape, 2, like)
        return tokens, keys, values

    def step(self, idx: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        c = self.config
        bs, nh, t = c.block_size, c.n_head, state["t"]  # t: positions already in the cache
        if t >= bs:  # the window slides: positions shift, so the cache is stale; read the window afresh
            tokens = torch.cat([state["tokens"][:, 1:], idx[:, None]], dim=1)  # (B, bs)
            logits, cache = self._run(tokens)
            keys = torch.stack([k for k, _ in cache]).permute(3, 0, 1, 2, 4).contiguous()  # (bs, L, B, nh, hs)
            values = torch.stack([v for _, v in cache]).permute(3, 0, 1, 2, 4).contiguous()
            state = {"t": t + 1, "tokens": tokens, "k": keys, "v": values, "start": state["start"], "rows": None}
            return logits[:, -1], state
        kernel_weights = self._decoding["now"] if not torch.is_grad_enabled() else None  # kernels have no backward
        if state.get("rows") is not None and (kernel_weights is None or idx.size(0) <= KERNEL_MAX_ROWS):
            state = self._copy_rows(state, torch.arange(idx.size(0)))  # only the attention kernel reads through rows
        tokens, keys, values = state["tokens"], state["k"], state["v"]
        if keys is None:
            tokens, keys, values = self._new_cache(idx.size(0))
        state = {"t": t + 1, "tokens": tokens, "k": keys, "v": values, "start": state["start"], "rows": state["rows"]}
        if kernel_weights is not None and idx.size(0) <= KERNEL_MAX_ROWS:
            logits = _kernel().step_kernel(
                idx.numpy(), t, state["start"].numpy(), tokens.numpy(), keys.numpy(), values.numpy(), kernel_weights, nh
            )
            return torch.from_numpy(logits), state
        tokens[:, t] = idx
        start = state["start"] = torch.where(idx == BOUNDARY, t, state["start"])  # (B,)
        x = F.embedding(idx, self.wte.weight) + F.embedding(t - start, self.wpe.weight)  # (B, C): one new position
        if kernel_weights is not None:
            return self._step_compiled(x, state, kernel_weights), state
        B, C = idx.size(0), c.n_embd
        hs = C // nh
        hidden = torch.arange(t + 1, device=idx.device) < start[:, None]  # (B, t + 1): before the item's start
        bias = torch.zeros(B, nh, 1, t + 1, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill_(hidden[:, None, None], float("-inf")).view(B * nh, 1, t + 1)
        for i, block in enumerate(self.blocks):
            attn, mlp = block.attn, block.mlp
            h = F.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias)
            qkv = F.linear(h, attn.c_attn.weight, attn.c_attn.bias)  # (B, 3C)
            q, k, v = qkv.view(B, 3, nh, hs).unbind(1)  # (B, nh, hs) each
            keys[t, i], values[t, i] = k, v
            past_k = keys[: t + 1, i].permute(1, 2, 0, 3).reshape(B * nh, t + 1, hs)
            past_v = values[: t + 1, i].permute(1, 2, 0, 3).reshape(B * nh, t + 1, hs)
            scores = torch.baddbmm(bias, q.reshape(B * nh, 1, hs), past_k.transpose(1, 2), alpha=hs**-0.5)
            y = torch.bmm(scores.softmax(-1), past_v).view(B, C)  # (B * nh, 1, hs) -> (B, C)
            x = x + F.linear(y, attn.c_proj.weight, attn.c_proj.bias)
            h = F.layer_norm(x, (C,), block.ln_2.weight, block.ln_2.bias)
            x = x + F.linear(F.gelu(F.linear(h, mlp[0].weight, mlp[0].bias)), mlp[2].weight, mlp[2].bias)
        x = F.layer_norm(x, (C,), self.ln_f.weight, self.ln_f.bias)
        return F.linear(x, self.lm_head.weight), state  # (B, V)

    def _step_compiled(self, x: torch.Tensor, state: dict[str, Any], weights: tuple) -> torch.Tensor:
        """The rest of `step` for a large batch with the kernels on: the matmuls in PyTorch (MKL), the rest
        compiled and in place (attention with its cache writes; each residual add fused with the next LayerNorm),
        as the step is then mostly small elementwise work. x (B, C): the embedded tokens; `state`: already advanced (its
        t counts this position). Returns logits (B, V)."""
        kernel = _kernel()
        ln1_w, ln1_b, ln2_w, ln2_b, lnf_w, lnf_b = (weights[i] for i in (2, 3, 8, 9, 14, 15))  # `_kernel_arrays`
        rows = state["rows"] if state["rows"] is not None else torch.arange(x.size(0))
        arrays = (state["t"] - 1, state["start"].numpy(), state["k"].numpy(), state["v"].numpy(), rows.numpy())
        x_np, h = x.numpy(), torch.empty_like(x)
        h_np, no_branch = h.numpy(), np.empty((0, x.size(1)), np.float32)
        kernel.add_layer_norm(x_np, no_branch, ln1_w[0], ln1_b[0], h_np)
        layers, head = self._decoding["matrices"]  # the matmuls' weights: tensors sharing the arrays' memory
        for i, (attn_w_t, attn_b_t, proj_w_t, proj_b_t, fc_w_t, fc_b_t, out_w_t, out_b_t) in enumerate(layers):
            y = kernel.attend(torch.addmm(attn_b_t, h, attn_w_t).numpy(), *arrays, i, self.config.n_head)  # (B, C)
            kernel.add_layer_norm(x_np, torch.addmm(proj_b_t, torch.from_numpy(y), proj_w_t).numpy(), ln2_w[i],
                                  ln2_b[i], h_np)  # fmt: skip
            branch = torch.addmm(out_b_t, F.gelu(torch.addmm(fc_b_t, h, fc_w_t)), out_w_t).numpy()  # (B, C)
            last = i + 1 == len(layers)
            kernel.add_layer_norm(x_np, branch, lnf_w if last else ln1_w[i + 1], lnf_b if last else ln1_b[i + 1], h_np)
        return h @ head  # (B, V)

    def reorder_state(self, state: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
        shareable = (
            state["k"] is not None
            and self._decoding["now"] is not None
            and rows.numel() > KERNEL_MAX_ROWS
            and bool((rows[1:] > rows[:-1]).all())  # rows dropped, none repeated: no two rows write one buffer row
        )
        if not shareable:
            return self._copy_rows(state, rows)
        kept = rows if state.get("rows") is None else state.get("rows").index_select(0, rows)
        tokens, start = state["tokens"].index_select(0, rows), state["start"].index_select(0, rows)
        return {"t": state["t"], "tokens": tokens, "k": state["k"], "v": state["v"], "start": start, "rows": kept}

    def _copy_rows(self, state: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
        """The state of `rows` in buffers of its own."""
        tokens, keys, values = state["tokens"], state["k"], state["v"]
        if keys is not None:
            t = min(state["t"], self.config.block_size)  # copy only the positions in use
            physical = rows if state.get("rows") is None else state.get("rows").index_select(0, rows)
            new_tokens, new_keys, new_values = self._new_cache(rows.numel())
            new_tokens[:, :t] = tokens[:, :t].index_select(0, rows)
            torch.index_select(keys[:t], 2, physical, out=new_keys[:t])  # [:t] of a contiguous buffer: contiguous
            torch.index_select(values[:t], 2, physical, out=new_values[:t])
            tokens, keys, values = new_tokens, new_keys, new_values
        start = state["start"].index_select(0, rows)
        return {"t": state["t"], "tokens": tokens, "k": keys, "v": values, "start": start, "rows": None}

    def sample_rows(
        self, state: dict[str, Any], logits: np.ndarray, noise: np.ndarray, steps: int, chars: int,
        min_len: int, max_len: int, temperature: float, greedy: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:  # fmt: skip
        """A whole small decode in one compiled call (see `LanguageModel.sample_rows`), when the kernels are on
        and the items cannot outgrow the window."""
        weights = self._decoding["now"]
        if weights is None or torch.is_grad_enabled() or state["k"] is None or logits.shape[0] > KERNEL_MAX_ROWS:
            return None
        if state.get("rows") is not None:
            state = self._copy_rows(state, torch.arange(logits.shape[0]))
        if state["t"] + steps - 1 > self.config.block_size:  # the last step never feeds the model
            return None
        arrays = (state["start"].numpy(), state["tokens"].numpy(), state["k"].numpy(), state["v"].numpy())
        return _kernel().sample_rows(
            logits,
            noise,
            steps,
            chars,
            min_len,
            max_len,
            temperature,
            greedy,
            state["t"],
            *arrays,
            weights,
            self.config.n_head,
        )

    def _kernel_wanted(self) -> bool:
        """Whether small-batch steps of a decode starting now run compiled: CPU, float32, eval mode, policy."""
        wanted = self.use_kernel if self.use_kernel is not None else self._decoding["decodes"] > KERNEL_AFTER_DECODES
        return bool(
            wanted
            and _kernel() is not None
            and not self.training
            and not torch.is_grad_enabled()
            and self.wte.weight.device.type == "cpu"
            and self.wte.weight.dtype == torch.float32
        )

    def _kernel_arrays(self) -> tuple:
        """The weights as the kernel reads them (matrices (in, out), per-layer ones stacked), rebuilt after any
        parameter change (an optimizer step bumps the versions, `load_state_dict` too)."""
        decoding = self._decoding
        params = decoding.get("params") or decoding.setdefault("params", list(self.parameters()))
        versions = [p._version for p in params] + [self.wte.weight.data_ptr()]  # moved: new data, all at once
        if decoding["versions"] != versions:
            c, blocks = self.config, self.blocks

            def stack(get, transpose=False):
                return np.stack([_array(get(b).t() if transpose else get(b)) for b in blocks])

            def zeros_if_none(t, size):
                return t if t is not None else torch.zeros(size)

            arrays = (
                _array(self.wte.weight),
                _array(self.wpe.weight),
                stack(lambda b: b.ln_1.weight),
                stack(lambda b: zeros_if_none(b.ln_1.bias, c.n_embd)),
                stack(lambda b: b.attn.c_attn.weight, transpose=True),
                stack(lambda b: zeros_if_none(b.attn.c_attn.bias, 3 * c.n_embd)),
                stack(lambda b: b.attn.c_proj.weight, transpose=True),
                stack(lambda b: zeros_if_none(b.attn.c_proj.bias, c.n_embd)),
                stack(lambda b: b.ln_2.weight),
                stack(lambda b: zeros_if_none(b.ln_2.bias, c.n_embd)),
                stack(lambda b: b.mlp[0].weight, transpose=True),
                stack(lambda b: zeros_if_none(b.mlp[0].bias, 4 * c.n_embd)),
                stack(lambda b: b.mlp[2].weight, transpose=True),
                stack(lambda b: zeros_if_none(b.mlp[2].bias, c.n_embd)),
                _array(self.ln_f.weight),
                _array(zeros_if_none(self.ln_f.bias, c.n_embd)),
                _array(self.lm_head.weight.t()),
                np.zeros(self.lm_head.weight.size(0), dtype=np.float32),
            )
            per_layer = [torch.from_numpy(arrays[i]) for i in (4, 5, 6, 7, 10, 11, 12, 13)]  # attn_w ... out_b
            layers = [tuple(w[i] for w in per_layer) for i in range(c.n_layer)]
            decoding["matrices"] = (layers, torch.from_numpy(arrays[16]))
            decoding["weights"], decoding["versions"] = arrays, versions
        return decoding["weights"]


@functools.cache
def _kernel() -> Any:
    """The compiled-kernel module, imported on first use (importing Numba takes a while); None without Numba."""
    try:
        from makemore.models.kernels import transformer_kernel
    except ImportError:
        return None
    return transformer_kernel


@functools.cache
def _attention_kernel() -> Any:
    """The compiled attention (attention_kernel.py), imported on first use; None without Numba."""
    try:
        from makemore.models.kernels import attention_kernel
    except ImportError:
        return None
    return attention_kernel


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous float32 copy (a copy: the kernel must not see later in-place updates half-way)."""
    return tensor.detach().float().contiguous().numpy().copy()
