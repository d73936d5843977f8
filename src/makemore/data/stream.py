"""Continuous text ("stream mode"): one long character stream instead of a list of items.

The corpus is encoded once into a compact integer array `ids` (uint8 while the vocabulary has at most 256 symbols,
uint16 up to 65,536): ids[0] is BOUNDARY, the start of the text, and ids[1 + i] is character i. Target position p
(1 <= p <= n) means "predict ids[p] from ids[:p]". A split is a range [begin, end) of target positions cut from the
text in order, never shuffled: as in nanoGPT's Shakespeare setup the last 10% is val, and an optional test slice sits
just before it. Windows may read context from before a split's start (the text that really precedes it) but score
only targets inside it.

Training batches follow Dive into Deep Learning (Zhang, Lipton, Li & Smola), sec. 9.3 "Language Models":
- random sampling (default): B windows of window + 1 characters at uniformly random offsets;
- sequential partitioning (`--stateful`): the split is cut into B parallel streams read window after window, so a
  recurrent model carries its state from one batch to the next, detached every step: truncated backpropagation
  through time (Williams & Peng 1990), fast.ai's "don't reset the hidden state every batch" (Howard & Ruder 2018).

Evaluation predicts every held-out character exactly once, with as much context as the model allows: overlapping
sliding windows whose overlap is not scored (windowed models), or parallel streams with carried state (recurrent
models), each stream warmed up on the text before its first scored character.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from makemore.data.corpus import Corpus
from makemore.data.lines import IGNORE
from makemore.errors import MakemoreError

DEFAULT_WINDOW = 128  # training window for models without a block_size
# Sliding-window evaluation reads at most this many window positions per batch: a Transformer's forward over
# 64 windows of 128 runs at ~52k tokens/s on the 2-core CPU, over 1,024 windows at 35k (activations leave the cache)
EVAL_WINDOW_TOKENS = 8192
LEAD_IN = 16  # context characters before a split that count models see when fitting on it (>= any n-gram order)


# ------------------------------------------------------------------------------------------------- mode detection


# ---------------------------------------------------------------------------------------------------------- corpus


# ------------------------------------------------------------------------------------------------------- the splits


@dataclass
class EvalPlan:
    """How a stream is evaluated: sliding windows (stride < window: overlaps not scored) or carried state."""

    window: int
    stride: int
    carry_state: bool
    context: int | None  # how many past tokens the model reads (None: unbounded)

    def describe(self) -> str:
        if self.carry_state:
            return (
                f"carried state: parallel streams read in consecutive windows of {self.window} chars, each warmed "
                f"up on the {self.window} chars before its first scored char"
            )
        least = self.window - self.stride + 1  # tokens of context (including the current one) of the worst char
        what = f"sliding window of {self.window} chars, stride {self.stride}"
        if self.context is not None and least >= self.context:
            return f"{what}: every char sees the model's full context of {self.context} chars"
        return f"{what}: every char sees at least {least} chars of context (the model reads up to {self.window})"


def plan_eval(model: Any, window: int, stride: int | None = None) -> EvalPlan:  # model: a LanguageModel
    """Carried state for models that carry it; otherwise sliding windows of the training window. The default stride
    gives every character the model's full context when that costs at most 2x the windows of stride = window / 2."""
    if model.carries_state:
        return EvalPlan(window, window, True, None)
    context = model.context_size
    need = window if context is None else min(max(context, 1), window)
    if stride is None:
        full = window - need + 1  # the largest stride at which every scored char still has `need` chars of context
        stride = full if full >= window // 2 else max(1, window // 2)
    if not 1 <= stride <= window:
        raise MakemoreError(f"--stride must be in 1..{window} (the window), got {stride}")
    return EvalPlan(window, stride, False, context)


class EvalBatches:
    """An iterable of (x, y) batches that tells the evaluator whether to carry state from batch to batch."""

    def __init__(self, make: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]], carry_state: bool):
        self.make = make
        self.carry_state = carry_state

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.make()


class StreamSplit:
    """Target positions [begin, end) of a corpus; batches are windows of `window` inputs and their next chars."""

    def __init__(
        self,
        ids: np.ndarray,
        begin: int,
        end: int,
        window: int,
        stateful: bool = False,
        plan: EvalPlan | Callable[[], EvalPlan] | None = None,
    ):
        if not 1 <= begin <= end <= len(ids):
            raise MakemoreError(f"stream split [{begin}, {end}) is outside the text (1..{len(ids)})")
        if window < 1:
            raise MakemoreError(f"the window must be >= 1 character, got {window}")
        self.ids, self.begin, self.end, self.window, self.stateful = ids, begin, end, window, stateful
        self._plan = plan

    @property
    def plan(self) -> EvalPlan | None:
        """How to evaluate; decided when asked, as a count model's context is known only once it is fitted."""
        return self._plan() if callable(self._plan) else self._plan

    def __len__(self) -> int:
        return self.end - self.begin

    @property
    def tokens(self) -> int:
        return len(self)

    def windows(self, starts: np.ndarray, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ids[s : s + length] and targets ids[s + 1 : s + length + 1] for each start s: (B, length) each.

        Positions past the end of the text repeat its last character (callers mask those targets)."""
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length + 1)  # (B, length + 1)
        chunk = torch.from_numpy(self.ids[np.minimum(index, len(self.ids) - 1)].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]

    # ----- the whole split as one row, for count models fitted in closed form (same layout as LineSplit)
    def _row(self) -> tuple[torch.Tensor, torch.Tensor]:
        # a lead-in of the text before `begin`, not scored, gives the first targets their real n-gram context
        start = max(self.begin - 1 - LEAD_IN, 0)
        x, y = self.windows(np.array([start]), self.end - 1 - start)
        y[:, : self.begin - 1 - start] = IGNORE
        return x, y

    @property
    def inputs(self) -> torch.Tensor:
        return self._row()[0]

    @property
    def targets(self) -> torch.Tensor:
        return self._row()[1]

    # ----- training and evaluation batches
    def make_sampler(self, batch_size: int, seed: int) -> WindowSampler | SequentialSampler:
        kind = SequentialSampler if self.stateful else WindowSampler
        return kind(self, batch_size, self.window, seed)

    def eval_batches(self, batch_size: int) -> EvalBatches:
        plan = self.plan or EvalPlan(self.window, max(1, self.window // 2), False, None)
        if plan.carry_state:
            return EvalBatches(lambda: self._carried(plan, batch_size), True)
        return EvalBatches(lambda: self._sliding(plan, batch_size), False)

    def _sliding(self, plan: EvalPlan, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Window k scores targets [begin + k S, begin + (k + 1) S) and reads the W - S chars before them too."""
        last = len(self.ids) - 1  # the last target position of the text
        W = min(plan.window, last)
        S = min(plan.stride, W)
        lows = np.arange(self.begin, self.end, S)
        highs = np.minimum(lows + S, self.end)
        starts = np.clip(lows - 1 - (W - S), 0, last - W)  # near the text's ends the window shifts inward
        rows = max(1, min(batch_size, EVAL_WINDOW_TOKENS // W))
        for i in range(0, len(lows), rows):
            part = slice(i, i + rows)
            x, y = self.windows(starts[part], W)
            positions = torch.from_numpy(starts[part])[:, None] + 1 + torch.arange(W)  # (B, W) target positions
            low, high = torch.from_numpy(lows[part])[:, None], torch.from_numpy(highs[part])[:, None]
            yield x, y.masked_fill(~((positions >= low) & (positions < high)), IGNORE)

    def _carried(self, plan: EvalPlan, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """B parallel streams; stream b scores its own stretch and starts reading W chars before it (warm-up)."""
        W, n = plan.window, len(self)
        if n == 0:
            return
        # enough streams to batch, each long enough (>= 16 windows) that its warm-up costs little
        streams = max(1, min(batch_size, n // (16 * W)))
        bounds = self.begin + (np.arange(streams + 1) * n) // streams  # stream b scores [bounds[b], bounds[b + 1])
        reads = np.maximum(bounds[:-1] - 1 - W, 0)  # first input position of each stream
        longest = int((bounds[1:] - 1 - reads).max())  # targets from reads + 1 to bounds[b + 1] - 1
        lows, highs = torch.from_numpy(bounds[:-1])[:, None], torch.from_numpy(bounds[1:])[:, None]
        for k in range(math.ceil(longest / W)):
            starts = reads + k * W
            x, y = self.windows(starts, W)
            positions = torch.from_numpy(starts)[:, None] + 1 + torch.arange(W)  # (B, W)
            yield x, y.masked_fill(~((positions >= lows) & (positions < highs)), IGNORE)


# ------------------------------------------------------------------------------------------------------- samplers


class WindowSampler:
    """Random sampling: each batch is B windows at uniformly random offsets whose targets all lie in the split.

    Its state is the generator's, so resuming from a checkpoint draws exactly the batches a run without a break
    would have drawn."""

    carries_state = False

    def __init__(self, split: StreamSplit, batch_size: int, window: int, seed: int):
        if len(split) < window:
            raise MakemoreError(
                f"the training text has {len(split)} chars, fewer than one window of {window}: "
                "use a smaller --seq-len / --block-size or more text"
            )
        self.split, self.batch_size, self.window = split, batch_size, window
        self.low, self.high = split.begin - 1, split.end - 1 - window  # window starts, inclusive
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(self.low, self.high + 1, (self.batch_size,), generator=self.generator)
        return self.split.windows(starts.numpy(), self.window)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


class SequentialSampler:
    """Sequential partitioning: the split is cut into B equal stripes, batch k holds window k of every stripe.

    Each epoch starts at a random offset in [0, window) into the stripes (so window edges move), and with fresh
    state: `carry`, the model's state after the previous batch, is reset to None there. The trainer stores the
    detached new state back in `carry`; it is saved with the sampler so a resumed run continues it exactly.
    """

    carries_state = True

    def __init__(self, split: StreamSplit, batch_size: int, window: int, seed: int):
        self.split, self.batch_size, self.window = split, batch_size, window
        self.stripe = len(split) // batch_size
        if self.stripe < 2 * window:
            raise MakemoreError(
                f"--stateful: {len(split)} training chars in {batch_size} streams leaves {self.stripe} chars per "
                f"stream, under two windows of {window}; lower --batch-size or the window"
            )
        self.generator = torch.Generator().manual_seed(seed)
        self.carry: Any = None
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.epoch_state = self.generator.get_state()
        self.offset = int(torch.randint(self.window, (1,), generator=self.generator))
        self.per_epoch = (self.stripe - self.offset) // self.window
        self.position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position == self.per_epoch:
            self._start_epoch()
        if self.position == 0:
            self.carry = None  # new streams: a carried state would describe other text
        starts = self.split.begin - 1 + np.arange(self.batch_size) * self.stripe + self.offset
        self.position += 1
        return self.split.windows(starts + (self.position - 1) * self.window, self.window)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "epoch_state": self.epoch_state.clone(),
            "position": torch.tensor(self.position),
            **flatten_state(self.carry, "carry"),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["epoch_state"])
        self._start_epoch()
        self.position = int(state["position"])
        self.carry = unflatten_state(state, "carry")


def flatten_state(state: Any, prefix: str) -> dict[str, torch.Tensor]:
    """A model state (a tensor, or tuples/lists/dicts of them) as named tensors; the names record the structure:
    "carry.t0.t1" is state[0][1] of nested tuples, ".l" marks a list index, ".d" a dict key."""
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    out: dict[str, torch.Tensor] = {}
    if isinstance(state, (tuple, list)):
        kind = "t" if isinstance(state, tuple) else "l"
        for i, part in enumerate(state):
            out.update(flatten_state(part, f"{prefix}.{kind}{i}"))
        return out
    if isinstance(state, dict) and all(isinstance(k, str) and "." not in k for k in state):
        for key, part in state.items():
            out.update(flatten_state(part, f"{prefix}.d{key}"))
        return out
    raise TypeError(f"cannot save a carried state of type {type(state).__name__}")


def unflatten_state(tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """The inverse of flatten_state (missing tuple/list entries, saved from None, come back as None)."""
    if prefix in tensors:
        return tensors[prefix]
    children: dict[str, str] = {}  # first path component -> its kind
    for name in tensors:
        if name.startswith(prefix + "."):
            part = name[len(prefix) + 1 :].split(".", 1)[0]
            children[part] = part[0]
    if not children:
        return None
    kinds = set(children.values())
    if kinds == {"d"}:
        return {part[1:]: unflatten_state(tensors, f"{prefix}.{part}") for part in children}
    if len(kinds) != 1 or not kinds <= {"t", "l"}:
        raise ValueError(f"mixed structure in saved state {prefix!r}")
    kind = kinds.pop()
    size = max(int(part[1:]) for part in children) + 1
    items = [unflatten_state(tensors, f"{prefix}.{kind}{i}") for i in range(size)]
    return tuple(items) if kind == "t" else items


# ------------------------------------------------------------------------------------------------------------- runs


def stream_splits(
    corpus: Corpus, data: dict[str, Any], model: Any, stride: int | None = None, where: str = "run.json"
) -> dict[str, StreamSplit]:
    """The splits recorded in a run's `data` (offsets, window, stateful), evaluated as `plan_eval` decides."""
    offsets, window = data.get("offsets"), data.get("window")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise MakemoreError(f"{where}: data.window must be a positive integer, got {window!r}")
    if not isinstance(offsets, dict) or "train" not in offsets or "val" not in offsets:
        raise MakemoreError(f"{where}: data.offsets must map train, val (and test) to [begin, end]")
    plan_eval(model, window, stride)  # a bad --stride fails here, before anything runs

    def plan() -> EvalPlan:  # asked again at evaluation time: --order auto fixes an n-gram's context when fitted
        return plan_eval(model, window, stride)

    splits = {}
    for name, pair in offsets.items():
        ok = isinstance(pair, list) and len(pair) == 2 and all(type(v) is int for v in pair)
        if not ok or not 1 <= pair[0] <= pair[1] <= corpus.n_chars + 1:
            raise MakemoreError(f"{where}: data.offsets.{name} must be [begin, end] within the text, got {pair!r}")
        splits[name] = StreamSplit(corpus.ids, pair[0], pair[1], window, bool(data.get("stateful")), plan)
    return splits
