"""A trained network plus a memory of its training data (Khandelwal et al. 2020, "Generalization through
Memorization: Nearest Neighbor Language Models"):

    p(w | h) = lam * p_knn(w | h) + (1 - lam) * p_net(w | h),
    p_knn(w | h) = sum_j exp(-d_j / T) c_j(w) / sum_j exp(-d_j / T) n_j over the k stored states j nearest to h's
                   (squared distance d_j), c_j(w) being how often w followed state j in train, n_j how often j came.

The keys are the network's states before its output layer (what its lm_head reads) at the training positions,
projected onto their top `dim` principal axes and stored in float16, each distinct state once with the counts of the
characters that followed it (sparse: most states are followed by one character). Storing each state once makes the
neighbours well defined: every name's first state is the same, and k of its 25,000 copies would be an arbitrary pick
among equals.
A network trained for minutes is still learning when its time ends, and its memory of what followed similar
states makes up part of the difference (val, a GRU trained 7 minutes on names: 1.9139 alone, 1.8837 with its memory;
10 minutes on e-mail addresses: 1.1591 and 1.0926). `makemore knn RUN` builds one from a trained run (jobs/knn.py);
`--model auto` adds one to each recurrent member on small data (jobs/auto_plan.py).

Its run directory holds the network's run.json under members/0/ (as a mix does) and one model.safetensors with the
network's weights and the memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from makemore.config import check, field
from makemore.data.lines import IGNORE
from makemore.models.base import LanguageModel, sequence_nll
from makemore.models.knn_search import PROBES, cell_neighbours, cells_for, exact_distances, exact_neighbours, group
from makemore.models.rnn import GRU, GRUConfig, Recurrent

QUERY_PART = 2048  # queries whose neighbours' counts are read at once
# The temperature and the weight are chosen together on val (the distances' scale varies with the data and the
# network). Val NLL is sharp in the temperature: a GRU's memory on names gave 1.8917 at 5, 1.8877 at 7 and 1.8939 at
# 10, so the grid is fine: steps of 2^(1/4), ~19%, over the first sessions' range, 1 to 64 (with their 5, 10, 20
# and 50 kept, so a choice is never worse on val than it was), and the weight in steps of 0.01 up to 0.95. Below a
# temperature of 1 the weights would hang on float32 differences between the states of a batch and of a step (a
# memory chosen on its own training data went to 0.125). Each point costs little: the neighbours' counts of each
# val target are read once (neighbour_counts).
TEMPERATURES = tuple(sorted({2 ** (j / 4) for j in range(25)} | {5.0, 10.0, 20.0, 50.0}))
LAMS = tuple(j / 100 for j in range(1, 96))


@dataclass
class KNNConfig:
    n_keys: int = field(0, "distinct training states in the memory (set by `makemore knn`)")
    n_pairs: int = field(0, "distinct (state, next character) pairs in the memory (set by `makemore knn`)")
    n_state: int = field(0, "size of the network's state before its output layer (set by `makemore knn`)")
    dim: int = field(64, "the states' principal axes kept in the memory")
    k: int = field(64, "neighbours read per prediction")
    temperature: float = field(10.0, "softmax temperature over the neighbours' squared distances")
    lam: float = field(0.5, "weight of the neighbours' distribution against the network's")
    cells: int = field(0, "k-means cells the keys are grouped in, the nearest `probes` searched (0: exact search)")
    probes: int = field(PROBES, "cells searched per prediction (with cells)")

    def __post_init__(self):
        check(0 <= self.n_keys <= 1 << 24, f"n_keys must be in [0, 2^24], got {self.n_keys}")
        check(0 <= self.n_pairs <= 1 << 26, f"n_pairs must be in [0, 2^26], got {self.n_pairs}")
        check(0 <= self.n_state <= 65536, f"n_state must be in [0, 65536], got {self.n_state}")
        check(1 <= self.dim <= 4096, f"--dim must be in [1, 4096], got {self.dim}")
        check(1 <= self.k <= 1024, f"--k must be in [1, 1024], got {self.k}")
        check(self.temperature > 0, f"--temperature must be > 0, got {self.temperature}")
        check(0 <= self.lam <= 1, f"--lam must be in [0, 1], got {self.lam}")
        check(0 <= self.cells <= 1 << 20, f"cells must be in [0, 2^20], got {self.cells}")
        check(1 <= self.probes <= 1 << 20, f"probes must be in [1, 2^20], got {self.probes}")


class KNNLM(LanguageModel):
    """The network (its one member) and its memory; every prediction is the interpolation above. Without a member
    (what the registry builds from a config alone) the network is an untrained GRU of the registry's size, and the
    memory empty until `fit`: a knn run is made from a trained run (`makemore knn`) and loads from its directory."""

    trainable = False

    def __init__(self, config: KNNConfig, vocab_size: int, members: list[LanguageModel] | None = None):
        super().__init__(config, vocab_size)
        members = list(members or [GRU(GRUConfig(), vocab_size)])
        if len(members) != 1:
            raise ValueError(f"a knn model has one network, not {len(members)}")
        self.members = nn.ModuleList(members)  # the name a mix uses: describe() and exports read members
        if not isinstance(self.net, Recurrent) or self.net.n_labels:
            name = type(self.net).__name__
            raise ValueError(f"a memory is built for unlabelled rnn, gru and lstm models, not {name}")
        c = config
        self.register_buffer("mean", torch.zeros(c.n_state))  # (H,) the states' mean
        self.register_buffer("axes", torch.zeros(c.n_state, c.dim))  # (H, D) their principal axes
        self.register_buffer("keys", torch.zeros(c.n_keys, c.dim, dtype=torch.float16))  # (N, D)
        # what followed key j: next_tokens[p] next_counts[p] times, p in offsets[j] .. offsets[j + 1] - 1
        self.register_buffer("offsets", torch.zeros(c.n_keys + 1, dtype=torch.long))  # (N + 1,)
        self.register_buffer("next_tokens", torch.zeros(c.n_pairs, dtype=torch.long))  # (P,)
        self.register_buffer("next_counts", torch.zeros(c.n_pairs, dtype=torch.long))  # (P,)
        self.register_buffer("centres", torch.zeros(c.cells, c.dim, dtype=torch.float16))  # (C, D) with cells
        # (C + 1,) with cells: cell c holds keys[starts[c] : starts[c + 1]]
        self.register_buffer("starts", torch.zeros(c.cells + 1, dtype=torch.long))
        self._float_keys: torch.Tensor | None = None  # self.keys in float32 (see float_keys)
        self.register_load_state_dict_post_hook(lambda module, incompatible: setattr(module, "_float_keys", None))
        self._states: list[torch.Tensor] = []
        self.net.lm_head.register_forward_hook(lambda module, inputs, output: self._states.append(inputs[0]))

    @classmethod
    def from_members(cls, config: KNNConfig, vocab_size: int, load_member: Any) -> KNNLM:
        return cls(config, vocab_size, [load_member(0)])

    @property
    def net(self) -> LanguageModel:
        return self.members[0]

    @property
    def context_size(self) -> int | None:
        return self.net.context_size

    @property
    def carries_state(self) -> bool:
        return self.net.carries_state

    def parameter_count(self) -> int:
        return self.net.parameter_count()

    # ---------------------------------------------------------------------------------------------- the memory
    def project(self, states: torch.Tensor) -> torch.Tensor:
        """States (..., H) -> their coordinates on the kept principal axes (..., D)."""
        return (states.float() - self.mean) @ self.axes

    def float_keys(self) -> torch.Tensor:
        """The keys in float32 (N, D), converted once rather than at every step of sampling (the e-mails' memory:
        100 MB a step), and again when the keys change (fit, load_state_dict) or move to another device."""
        cached = self._float_keys
        if cached is None or cached.device != self.keys.device or cached.shape != self.keys.shape:
            self._float_keys = self.keys.float()
        return self._float_keys

    def neighbours(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest keys of each query (n, D) (with cells: among those in its `probes` nearest cells): squared
        distances up to a per-query constant (n, k) and indices (n, k). The constant (|q|^2) cancels in the softmax
        over a query's neighbours. Found in float32, their distances are then computed again in float64: a float32
        |key|^2 of ~500 is off by ~3e-5, which the samplers' own sums would not reproduce (export/ checks them)."""
        keys = self.float_keys()  # (N, D)
        if not self.config.cells:
            distances, indices = exact_neighbours(queries, keys, k)
        else:
            centres, probes = self.centres.float(), self.config.probes
            distances, indices = cell_neighbours(queries, keys, centres, self.starts, k, probes)
        return exact_distances(queries, keys, indices, distances), indices

    def neighbour_pairs(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (next token, count) pairs of every neighbour in `indices` (n, k), concatenated (m,), and how many
        each neighbour has (n k,)."""
        starts = self.offsets[indices].reshape(-1)  # (n k,)
        lengths = self.offsets[indices + 1].reshape(-1) - starts
        return ranges(starts, lengths), lengths

    def knn_probs(self, distances: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
        """p_knn (n, V) from the neighbours' distances and indices (n, k)."""
        d = distances.double()
        weights = torch.exp(-(d - d[:, :1]) / temperature)  # (n, k); relative to the nearest: no underflow
        pairs, lengths = self.neighbour_pairs(indices)
        rows = torch.arange(len(d)).repeat_interleave(lengths.view(len(d), -1).sum(1))  # (m,) their query
        mass = torch.zeros(len(d), self.vocab_size, dtype=torch.float64)  # (n, V)
        pair_mass = weights.reshape(-1).repeat_interleave(lengths) * self.next_counts[pairs]
        mass.index_put_((rows, self.next_tokens[pairs]), pair_mass, accumulate=True)
        return mass / mass.sum(1, keepdim=True)

    def interpolate(self, logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """log(lam p_knn + (1 - lam) p_net) (..., V) from the network's logits (..., V) and states (..., H)."""
        c = self.config
        if c.lam == 0 or not c.n_keys:
            return F.log_softmax(logits.float(), dim=-1)
        shape = logits.shape
        queries = self.project(states.reshape(-1, states.size(-1)))  # (n, D)
        p_knn = torch.cat(  # (n, V), in parts of QUERY_PART queries
            [self.knn_probs(*self.neighbours(part, c.k), c.temperature) for part in queries.split(QUERY_PART)]
        )
        p_net = F.softmax(logits.reshape(-1, shape[-1]).double(), dim=-1)
        return (c.lam * p_knn + (1 - c.lam) * p_net).log().float().view(shape)

    def _net_call(self, call: Any) -> tuple[Any, torch.Tensor]:
        """Run the network, returning what it returns and the states its lm_head read (..., H)."""
        self._states.clear()
        out = call()
        if len(self._states) != 1:
            raise RuntimeError(f"{type(self.net).__name__}: expected one lm_head call, got {len(self._states)}")
        return out, self._states.pop()

    # ----------------------------------------------------------------------------------------------- scoring
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        (logits, _), states = self._net_call(lambda: self.net(idx))  # (B, T, V), (B, T, H)
        logits = self.interpolate(logits, states)
        return logits, (sequence_nll(logits, targets) if targets is not None else None)

    def forward_with_state(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state: Any = None):
        (logits, _, state), states = self._net_call(lambda: self.net.forward_with_state(idx, None, state))
        logits = self.interpolate(logits, states)
        return logits, (sequence_nll(logits, targets) if targets is not None else None), state

    def init_state(self, batch_size: int) -> Any:
        return self.net.init_state(batch_size)

    def step(self, idx: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        (logits, state), states = self._net_call(lambda: self.net.step(idx, state))  # (B, V), (B, ..., H)
        last = states.reshape(idx.size(0), -1, states.size(-1))[:, -1]  # (B, H): the state that predicted
        return self.interpolate(logits, last), state

    def reorder_state(self, state: Any, rows: torch.Tensor) -> Any:
        return self.net.reorder_state(state, rows)

    def make_label_layers(self, n_labels: int, mode: str) -> None:
        raise ValueError("a knn model of a labelled run is not supported")

    # ----------------------------------------------------------------------------------------------- fitting
    @torch.no_grad()
    def fit(self, split: Any, val: Any = None, cells: int | None = None) -> None:
        """Remember the network's states on `split` (train), then choose the neighbours' temperature and weight
        on `val` (without val: the config's). Sets n_keys, n_state, cells and the memory's buffers; over EXACT_KEYS
        distinct states they are grouped in cells (models/knn_search.py), or in `cells` cells where given (0: exact
        search)."""
        states, values = read_states(self.net, split)  # (N, H), (N,)
        c = self.config
        c.n_state, c.dim = states.size(1), min(c.dim, states.size(1))
        self.mean, self.axes = principal_axes(states, c.dim)
        keys = self.project(states).half() + 0  # + 0: -0.0 becomes 0.0, one key
        keys, offsets, tokens, counts = distinct_states(keys, values, self.vocab_size)
        c.n_keys, c.n_pairs = len(keys), len(tokens)
        c.cells = cells_for(c.n_keys) if cells is None else min(cells, c.n_keys)
        self.centres, self.starts = torch.zeros(0, c.dim, dtype=torch.float16), torch.zeros(1, dtype=torch.long)
        if c.cells:
            self.centres, order, self.starts = group(keys.float(), c.cells)
            lengths = offsets.diff()[order]
            pairs = ranges(offsets[:-1][order], lengths)
            keys, tokens, counts, c.cells = keys[order], tokens[pairs], counts[pairs], len(self.centres)
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
        self.keys, self.offsets, self.next_tokens, self.next_counts = keys, offsets, tokens, counts
        self._float_keys = None
        if val is not None and len(val):
            c.temperature, c.lam = choose_settings(self, val)["chosen"]


@torch.no_grad()
def read_states(net: LanguageModel, split: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The states the network's lm_head reads at every real position of `split` (N, H), and the next tokens (N,)."""
    captured: list[torch.Tensor] = []
    hook = net.lm_head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    states, targets = [], []
    try:
        net.eval()
        for x, y in split.eval_batches(1024):
            captured.clear()
            net(x)
            real = y != IGNORE
            states.append(captured[-1][real].float())
            targets.append(y[real])
    finally:
        hook.remove()
    return torch.cat(states), torch.cat(targets)


def principal_axes(states: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The states' mean (H,) and their top `dim` principal axes (H, dim), each signed so that its largest entry is
    positive (an eigenvector's sign is arbitrary; this makes the memory the same on every run)."""
    mean = states.double().mean(0)
    centred = states.double() - mean
    covariance = centred.T @ centred / max(len(states) - 1, 1)  # (H, H)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    axes = vectors[:, -dim:].flip(1)  # (H, dim), the largest first
    signs = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    return mean.float(), (axes * signs).float()


def distinct_states(
    keys: torch.Tensor, values: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each distinct key (float16 rows, N x D) once, in sorted order (U, D), with the values that followed it and
    how often: unique key j was followed by tokens[p], counts[p] times, for p in offsets[j] .. offsets[j + 1] - 1.
    Returns (keys, offsets (U + 1,), tokens (P,), counts (P,)), P being the distinct (key, value) pairs."""
    unique, inverse = torch.unique(keys.view(torch.int16), dim=0, return_inverse=True)  # bit patterns: exact
    pairs, counts = torch.unique(inverse * vocab_size + values, return_counts=True)  # by key, then value
    lengths = torch.bincount(pairs // vocab_size, minlength=len(unique))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    return unique.view(torch.float16), offsets, pairs % vocab_size, counts


def ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """starts[i], starts[i] + 1, ..., starts[i] + lengths[i] - 1 for every i, concatenated (sum(lengths),)."""
    before = torch.cumsum(lengths, 0) - lengths  # where range i begins in the result
    return torch.repeat_interleave(starts - before, lengths) + torch.arange(int(lengths.sum()))


@torch.no_grad()
def choose_settings(model: KNNLM, val: Any) -> dict[str, Any]:
    """The (temperature, lam) of TEMPERATURES x LAMS with the lowest val NLL ("chosen"; lam 0: the network alone),
    that NLL ("val_nll") and the network's ("net_val_nll"). The neighbours, and their counts of each target, are
    found once."""
    net = model.net
    states, targets = read_states(net, val)
    p_target = []
    for x, y in val.eval_batches(1024):
        p_target.append(F.softmax(net(x)[0].double(), dim=-1)[y != IGNORE].gather(1, y[y != IGNORE][:, None])[:, 0])
    p_net = torch.cat(p_target)  # (n,) the network's probability of each val target
    distances, indices = model.neighbours(model.project(states), model.config.k)  # (n, k) each
    hits, totals = neighbour_counts(model, indices, targets)
    nearest = distances.double() - distances[:, :1].double()  # (n, k), relative to the nearest: no underflow
    lams = torch.tensor(LAMS, dtype=torch.float64)[:, None]  # (L, 1)
    net_nll = -p_net.log().mean().item()
    chosen, best = (TEMPERATURES[0], 0.0), net_nll
    for temperature in TEMPERATURES:
        weights = torch.exp(-nearest / temperature)
        p_knn = (weights * hits).sum(1) / (weights * totals).sum(1)  # (n,) p_knn of each target (knn_probs)
        nlls = -(lams * p_knn + (1 - lams) * p_net).log().mean(1)  # (L,)
        nll, at = nlls.min(0)
        if nll.item() < best:
            chosen, best = (temperature, LAMS[at.item()]), nll.item()
    return {"chosen": chosen, "val_nll": best, "net_val_nll": net_nll, "tokens": len(targets)}


def neighbour_counts(model: KNNLM, indices: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query's neighbours (n, k): how often the query's target followed each (hits, n x k) and how often
    anything did (totals, n x k), so that p_knn(target) = sum_j w_j hits_j / sum_j w_j totals_j for any weights."""
    n, k = indices.shape
    pairs, lengths = model.neighbour_pairs(indices)
    owner = torch.arange(n * k).repeat_interleave(lengths)  # (m,) the (query, neighbour) each pair belongs to
    counts = model.next_counts[pairs].double()
    totals = torch.zeros(n * k, dtype=torch.float64).index_add_(0, owner, counts)
    hit = model.next_tokens[pairs] == targets.repeat_interleave(k)[owner]
    hits = torch.zeros(n * k, dtype=torch.float64).index_add_(0, owner[hit], counts[hit])
    return hits.view(n, k), totals.view(n, k)
