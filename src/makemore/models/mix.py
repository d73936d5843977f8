"""A mixture of trained runs, its weights fitted on val, which the members never trained on:

- linear: p(w | h) = sum_i lambda_i p_i(w | h) (Jelinek & Mercer 1980, "Interpolated estimation of Markov source
  parameters from sparse data"), the weights fitted by EM;
- log-linear: p(w | h) = softmax_w(sum_i lambda_i log p_i(w | h)) (Klakow 1998), the weights by L-BFGS.

Count models and neural models make different mistakes, so their mixture beats each of them (mix_weights.py).

A mix is a model like any other: forward returns log p as logits, and its incremental state is the list of its
members' states (each member steps, then the distributions are combined). Its run directory holds each member's
run.json under members/<i>/ (the members' structure) and one model.safetensors with the weights of every member and
the mixture weights: it loads without the members' original runs and without executing code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from makemore.config import check, field
from makemore.data.lines import IGNORE
from makemore.errors import MakemoreError
from makemore.models.base import LanguageModel, sequence_nll
from makemore.models.mix_weights import COMBINES, HeldOut, fit

MEMBERS_DIR = "members"  # RUN_MIX/members/<i>/run.json


@dataclass
class MixConfig:
    n_members: int = field(0, "how many runs are mixed (set by `makemore mix`)")
    em_steps: int = field(1000, "at most this many EM iterations when fitting the weights on val")
    combine: str = field(
        "linear", "linear: sum_i w_i p_i; log-linear: softmax(sum_i w_i log p_i) (set by `makemore mix`)", COMBINES
    )

    def __post_init__(self):
        check(self.n_members >= 0, f"n_members must be >= 0, got {self.n_members}")
        check(self.em_steps >= 1, f"em_steps must be >= 1, got {self.em_steps}")
        check(self.combine in COMBINES, f"combine must be one of {', '.join(COMBINES)}, got {self.combine!r}")


def member_dir(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / MEMBERS_DIR / str(index)


class Mix(LanguageModel):
    """Linear interpolation of the next-symbol distributions of `members` (see the module docstring).

    Without members (what the registry builds from a config alone) it predicts the uniform distribution: members
    come from trained runs, through `makemore mix` or a loader given to `Mix.from_members`.
    """

    trainable = False

    def __init__(self, config: MixConfig, vocab_size: int, members: list[LanguageModel] | None = None):
        super().__init__(config, vocab_size)
        members = list(members or [])
        if config.n_members and not members:
            raise ValueError(f"a mix of {config.n_members} runs is built from its run directory")
        if members and len(members) != config.n_members:
            raise ValueError(f"n_members is {config.n_members} but {len(members)} members were given")
        for member in members:
            if member.vocab_size != vocab_size:
                raise ValueError(f"a member has {member.vocab_size} symbols, the mix {vocab_size}")
        self.members = nn.ModuleList(members)
        k = max(len(members), 1)
        self.register_buffer("weights", torch.full((len(members),), 1.0 / k, dtype=torch.float64))

    @classmethod
    def from_members(cls, config: MixConfig, vocab_size: int, load_member: Any) -> Mix:
        return cls(config, vocab_size, [load_member(i) for i in range(config.n_members)])

    @property
    def context_size(self) -> int | None:
        sizes = [member.context_size for member in self.members]
        return None if None in sizes else max(sizes, default=0)

    @property
    def carries_state(self) -> bool:
        # In stream mode a mix carries every member's context across windows: recurrent members their state, the
        # others the last characters they read (see member_logits_with_state), so each is scored as on its own.
        return bool(len(self.members))

    def parameter_count(self) -> int:
        return sum(member.parameter_count() for member in self.members)

    # ------------------------------------------------------------------------------------------------ fitting
    def fit(self, split: Any, val: Any = None) -> None:
        """Fit the mixture weights on `val` by EM; the members stay as trained (`split` is not used)."""
        if not len(self.members):
            return
        if val is None or len(val) == 0:
            raise MakemoreError("a mix fits its weights on val, and there is no val split")
        log_linear = self.config.combine == "log-linear"
        held_out = member_log_probs(self.members, val.eval_batches(1024), whole=log_linear)
        _, weights, _ = fit(held_out, self.config.combine, self.config.em_steps)
        self.weights = weights.to(self.weights.device)

    # ------------------------------------------------------------------------------------------------ scoring
    def _combine(self, member_logits: list[torch.Tensor]) -> torch.Tensor:
        """The mixture's log-probs (..., V) from each member's logits (..., V), skipping members with zero weight:
        log sum_i lambda_i p_i (linear), or log softmax(sum_i lambda_i log p_i) (log-linear)."""
        used = [(logits, weight) for logits, weight in zip(member_logits, self.weights.tolist()) if weight > 0]
        if self.config.combine == "log-linear":  # in float64: the weights (up to ~1) scale float32 rounding
            total = sum(F.log_softmax(logits.double(), dim=-1) * weight for logits, weight in used)
            return F.log_softmax(total, dim=-1).float()
        terms = [F.log_softmax(logits.float(), dim=-1) + math.log(weight) for logits, weight in used]
        return torch.logsumexp(torch.stack(terms), dim=0)  # (..., V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if not len(self.members):
            logits = torch.zeros(*idx.shape, self.vocab_size, device=idx.device)
        else:
            logits = self._combine([member(idx)[0] for member in self.members])  # (B, T, V)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss

    def member_logits_with_state(self, idx: torch.Tensor, state: list[Any] | None) -> tuple[list[torch.Tensor], list]:
        """Each member's logits (B, T, V) for window idx (B, T) that continues the text read before, and the state.

        Recurrent members continue from their carried state. The others keep the last characters they read and
        re-read them before idx: as many as their context needs, and at most enough to fill their context with idx,
        so that a Transformer whose context is twice the window reads every position with at least half its context
        (as its own sliding-window evaluation does) and never beyond its block size.
        """
        states = state if state is not None else [None] * len(self.members)
        T = idx.size(1)
        logits, carried = [], []
        for member, s in zip(self.members, states):
            if member.carries_state:
                out, _, s = member.forward_with_state(idx, None, s)
            else:
                text = idx if s is None else torch.cat([s, idx], dim=1)  # (B, t + T)
                out = member(text)[0][:, -T:]
                context = member.context_size if member.context_size is not None else T
                s = text[:, text.size(1) - min(context, max(context - T, T)) :]
            logits.append(out)
            carried.append(s)
        return logits, carried

    def forward_with_state(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state: Any = None):
        if not len(self.members):
            return *self.forward(idx, targets), None
        member_logits, state = self.member_logits_with_state(idx, state)
        logits = self._combine(member_logits)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss, state

    # ------------------------------------------------- incremental decoding: every member steps, then combine
    def init_state(self, batch_size: int) -> list[Any]:
        return [member.init_state(batch_size) for member in self.members]

    def make_label_layers(self, n_labels: int, mode: str) -> None:
        pass  # a mix of labelled runs: its members read the label token themselves

    def step(self, idx: torch.Tensor, state: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        if not len(self.members):
            return torch.zeros(idx.size(0), self.vocab_size, device=idx.device), state
        outputs = [member.step(idx, s) for member, s in zip(self.members, state)]
        return self._combine([logits for logits, _ in outputs]), [s for _, s in outputs]

    def reorder_state(self, state: list[Any], rows: torch.Tensor) -> list[Any]:
        return [member.reorder_state(s, rows) for member, s in zip(self.members, state)]


@torch.no_grad()
def member_log_probs(members: list[LanguageModel] | nn.ModuleList, batches: Iterable, whole: bool = False) -> HeldOut:
    """What each member says about each real target token of `batches`: log p (members, tokens), and with `whole`
    each member's whole log-distribution (members, tokens, V), which a log-linear mix is fitted on.

    Batches that carry state (stream mode: consecutive windows of parallel streams) are read as a mix reads them,
    every member continuing from what it read before (Mix.member_logits_with_state)."""
    for member in members:
        member.eval()
    carry, state = getattr(batches, "carry_state", False), None
    mix = Mix(MixConfig(n_members=len(members)), members[0].vocab_size, list(members)) if carry else None
    columns, dists, targets = [], [], []
    for x, y in batches:
        x, y = x.to(members[0].device), y.to(members[0].device)
        real = y != IGNORE
        if mix is not None:
            member_logits, state = mix.member_logits_with_state(x, state)
        else:
            member_logits = [member(x)[0] for member in members]
        log_dists = torch.stack([F.log_softmax(logits.double(), dim=-1)[real] for logits in member_logits])  # (K, n, V)
        columns.append(log_dists.gather(-1, y[real][None, :, None].expand(len(members), -1, 1)).squeeze(-1).cpu())
        if whole:
            dists.append(log_dists.float().cpu())
            targets.append(y[real].cpu())
    if not whole:
        return HeldOut(torch.cat(columns, dim=1))
    return HeldOut(torch.cat(columns, dim=1), torch.cat(dists, dim=1), torch.cat(targets))
