"""The one interface every model implements; the trainer, evaluator and sampler see nothing else.

    forward(idx (B, T), targets (B, T) | None) -> logits (B, T, V), mean NLL over non-padding targets | None
    penalty()                 -> extra training loss (e.g. an L2 term); never part of reported NLL
    init_state(batch_size)    -> empty decoding state
    step(idx (B,), state)     -> next-token logits (B, V), new state
    reorder_state(state, rows)-> state of the kept/reordered rows (finished samples leave, beams re-rank)
    fit(train, val=None)      -> closed-form fitting for count models (`trainable = False`); val for held-out choices
    attention_maps(idx)       -> per-layer (B, n_head, T, T) attention weights, for plots (attention models only)
    forward_with_state(idx, targets, state) -> logits, loss, state after idx: continue from the previous window
                                 (stream mode: truncated BPTT, stateful evaluation); default ignores the state

The default decoding state is a context buffer of the last `context_size` tokens and `step` recomputes `forward`
on it. Models with a cheaper incremental form (KV cache, recurrent state) override the three state methods.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from makemore.data.lines import BOUNDARY, IGNORE


def sequence_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL over targets that are not padding. logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE)


def masked_batch_norm(norm: nn.BatchNorm1d, h: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """BatchNorm over batch *and* time, with statistics from real positions only (padding would skew them).

    h (B, T, C). In eval mode, or without targets to tell padding apart, all positions use the same path.
    """
    B, T, C = h.shape
    flat = h.reshape(B * T, C)
    if not norm.training or targets is None:
        return norm(flat).view(B, T, C)
    real = (targets.reshape(-1) != IGNORE).nonzero(as_tuple=True)[0]
    out = torch.zeros_like(flat)
    out = out.index_copy(0, real, norm(flat.index_select(0, real)))
    return out.view(B, T, C)


_random = threading.local()  # the generator Dropout draws from on this thread (none set: torch's global one)


@contextlib.contextmanager
def dropout_generator(generator: torch.Generator | None) -> Iterator[None]:
    """Dropout on this thread draws from `generator` for the duration. Threads that train shards of one batch at
    once each get their own seeded generator: the global one would hand out its numbers in whatever order the
    threads happen to ask, and the run would not repeat."""
    before = getattr(_random, "generator", None)
    _random.generator = generator
    try:
        yield
    finally:
        _random.generator = before


class Dropout(nn.Module):
    """nn.Dropout (Srivastava et al. 2014) with cheaper random numbers on CPU.

    PyTorch's CPU dropout draws one random float per element, which made dropout a fifth of a small Transformer's
    training step. Here the keep/drop decision is one random byte per element, drawn 8 bytes per generator call:
    p is rounded to a multiple of 1/256 (0.2 -> 0.1992), and forward + backward cost about half. Other devices
    use F.dropout. Seeded by torch's global generator like nn.Dropout, or by this thread's `dropout_generator`.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p
        self.threshold = round(p * 256)  # drop when the byte is below it
        self.scale = 256 / (256 - self.threshold) if self.threshold < 256 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        generator = getattr(_random, "generator", None)
        words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), 2**63 - 1, generator=generator)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep.to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.threshold / 256:.4f}"


def segment_starts(idx: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): index of the latest BOUNDARY token at or before each position (0 if none), i.e. where
    the item a position belongs to starts, for models that read packed rows (`packable`)."""
    t = torch.arange(idx.size(1), device=idx.device)
    return torch.where(idx == BOUNDARY, t, 0).cummax(dim=1).values


def small_output_layer(n_in: int, vocab_size: int) -> nn.Linear:
    """The lm_head, scaled down so the initial loss is close to ln V (lecture 4's fix for a hockey-stick loss)."""
    head = nn.Linear(n_in, vocab_size)
    with torch.no_grad():
        head.weight.mul_(0.1)
        head.bias.zero_()
    return head


class LanguageModel(nn.Module):
    trainable: bool = True
    # True when forward treats every BOUNDARY input token as the start of an independent item (nothing before it
    # is seen, positions restart): then several items may share one row (`TrainConfig.pack`), with the same loss.
    packable: bool = False

    @property
    def rows_independent(self) -> bool:
        """True when the rows of a training batch never interact (no batch statistics such as BatchNorm's) and all
        training randomness comes from makemore's `Dropout`: then a batch's gradient is the token-weighted sum of
        the gradients of any split of its rows, and the trainer may compute the parts on several threads at once."""
        return False

    def __init__(self, config: Any, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size

    @property
    def context_size(self) -> int | None:
        """How many past tokens the next prediction can depend on (None: unbounded)."""
        return None

    # ----- labels (models/labels.py): a labelled run's items start with a label token, id vocab_size + label
    n_labels: int = 0
    label_mode: str = ""

    def add_labels(self, n_labels: int, mode: str) -> LanguageModel:
        """This model conditioned on one of `n_labels` labels (`mode`: add, concat or state); the label layers
        are made after every other parameter, so the rest of the initialisation is the unlabelled model's."""
        self.n_labels, self.label_mode = n_labels, mode
        self.make_label_layers(n_labels, mode)
        return self

    def make_label_layers(self, n_labels: int, mode: str) -> None:
        raise ValueError(f"{type(self).__name__} does not take labels")

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        raise NotImplementedError

    def penalty(self) -> torch.Tensor | float:
        return 0.0

    def fit(self, split: Any, val: Any = None) -> None:
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient descent")

    @classmethod
    def from_members(cls, config: Any, vocab_size: int, load_member: Any) -> LanguageModel:
        """The model before its weights are loaded. Most models need only their config; a model made of other models
        (a mix) overrides this and asks `load_member(i)` for its i-th member (a loader that the caller supplies)."""
        return cls(config, vocab_size)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----- incremental decoding: the generic "recompute on the cropped context" fallback
    def init_state(self, batch_size: int) -> Any:
        return torch.empty(batch_size, 0, dtype=torch.long, device=self.device)

    def step(self, idx: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        context = torch.cat([state, idx[:, None]], dim=1)  # (B, t + 1)
        if self.context_size is not None:  # keep >= 1 token: order-1 models ignore it
            context = context[:, -max(self.context_size, 1) :]
        logits, _ = self(context)
        return logits[:, -1, :], context

    def reorder_state(self, state: Any, rows: torch.Tensor) -> Any:
        return state.index_select(0, rows)

    # ----- carried state across consecutive windows of a stream (truncated BPTT, stateful evaluation)
    def forward_with_state(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, state: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """forward(idx, targets), continuing from `state` (the state after the previous window; None: fresh), and
        the state after idx's last position. Models whose context is their window ignore it and return None;
        recurrent models override it (then `carries_state` is True)."""
        logits, loss = self(idx, targets)
        return logits, loss, None

    @property
    def carries_state(self) -> bool:
        return type(self).forward_with_state is not LanguageModel.forward_with_state

    # ----- introspection for plots (makemore plot attention)
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of each layer for idx (B, T): a list of (B, n_head, T, T) tensors, row = query position.
        Only attention models implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no attention")

    @property
    def device(self) -> torch.device:
        # called by every decoding call: the first parameter (or buffer) is found once, its device read each time
        # (moving a module keeps its parameter objects)
        probe = self.__dict__.get("_device_probe")
        if probe is None:
            probe = next(self.parameters(), None)
            probe = probe if probe is not None else next(self.buffers(), None)
            if probe is None:
                return torch.device("cpu")
            self.__dict__["_device_probe"] = probe
        return probe.device


def map_state(fn: Any, state: Any) -> Any:
    """Apply fn to every tensor of a state (a tensor, or tuples/lists/dicts of them), keeping the structure."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, part) for part in state)
    if isinstance(state, dict):
        return {key: map_state(fn, part) for key, part in state.items()}
    return state


def detach_state(state: Any) -> Any:
    """Cut the graph behind a carried state: gradients flow through one window only (truncated BPTT)."""
    return map_state(lambda t: t.detach(), state)
