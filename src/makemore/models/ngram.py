"""Count-based n-gram models, fitted in closed form in one pass over the data: no gradient descent.

- add-k smoothing (Jurafsky & Martin, "Speech and Language Processing", ch. 3).
- interpolated modified Kneser-Ney (Kneser & Ney 1995; Chen & Goodman 1998, "An Empirical Study of Smoothing
  Techniques for Language Modeling", sec. 3.5): raw counts at the top order, continuation counts (the number of
  distinct left neighbours) below it, three discounts D1, D2, D3+ per order estimated from count-of-counts,
  interpolated down to the uniform distribution over the vocabulary, so every symbol keeps a non-zero probability:

      p_m(w | h) = (c_m(h w) - D_m(c_m(h w))) / c_m(h .)  +  gamma_m(h) p_(m-1)(w | h without its first symbol)
      gamma_m(h) = (D_m1 N1(h .) + D_m2 N2(h .) + D_m3+ N3+(h .)) / c_m(h .),       p_0(w) = 1 / V

  and p_m = p_(m-1) for a context h never seen at order m.

Counts are stored sparsely as sorted integer keys (the n-gram written in base V) with their counts, so high orders
cost memory only for n-grams that occur; the n-grams of one context are contiguous in that order, so scoring looks
up each context once and gathers its entries.

The start of an item. Contexts are left-padded with the boundary token (id 0), which is also the start symbol, so
the first predictions of an item see contexts like (0, 0, 0, e). Such a context holds no more evidence than (0, e):
the padding is not a history. Treating the padded n-grams as n-grams of the higher orders would discount the same
events once per order, and would give them a continuation count of 1 each (their only left neighbour is more
padding). As in KenLM (Heafield et al. 2013), an n-gram that starts at the item start is kept only at its true
length, with its raw count at every order (it has no left neighbours to count); a padded context longer than its
true length is therefore unseen at the higher orders, and the model falls through to the true length undiscounted.
In the key encoding this comes for free: leading zeros do not change a base-V number.

Those start n-grams are raw counts among continuation counts, so each order has a second set of three discounts for
them. The count-of-counts estimate is the same for both sets; --tune-discounts lets them differ (on names, order 7:
val NLL 1.9701 with one tuned set per order, 1.9673 with two).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from makemore.config import check, field
from makemore.data.lines import IGNORE
from makemore.errors import MakemoreError
from makemore.models.base import LanguageModel, sequence_nll
from makemore.models.ngram_discounts import HeldOutEvidence, tune_discounts

MAX_ORDER = 16
KEY_LIMIT = 2**62  # n-gram keys are int64: V ** order must stay below this
# --order auto: a higher order must lower the val NLL by this much (nats/token) to be preferred over a smaller one.
# Tuned discounts make high orders almost harmless, so the NLL keeps creeping down by 1e-4s up to any order tried.
MIN_GAIN = 1e-3


@dataclass
class NGramConfig:
    order: int = field(
        0,
        "n: predict each character from the previous n-1 (2 = the bigram table; auto: best val NLL)",
        names={"auto": 0},
    )
    smoothing: str = field("kneser-ney", "how unseen n-grams get probability", choices=("kneser-ney", "add-k"))
    k: float = field(0.1, "add-k smoothing: pseudo-count added to every n-gram (> 0)")
    tune_discounts: bool = field(True, "kneser-ney: refine the discounts on val (needs a val split)")
    max_order: int = field(12, "--order auto: the largest order tried")

    def __post_init__(self):
        check(0 <= self.order <= MAX_ORDER, f"--order must be auto (0) or in 1..{MAX_ORDER}, got {self.order}")
        check(1 <= self.max_order <= MAX_ORDER, f"--max-order must be in 1..{MAX_ORDER}, got {self.max_order}")
        check(self.k > 0, f"--k must be > 0 so unseen characters keep a non-zero probability, got {self.k}")


def context_windows(idx: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T) -> (B, T, length): the `length` tokens ending at each position, boundary-padded on the left."""
    B, T = idx.shape
    if length == 0:
        return idx.new_zeros(B, T, 0)
    padded = torch.cat([idx.new_zeros(B, length - 1), idx], dim=1)
    return padded.unfold(1, length, 1)


def encode_keys(windows: torch.Tensor, base: int) -> torch.Tensor:
    """(..., n) token windows -> (...) integer keys, the window read as a base-`base` number."""
    keys = torch.zeros(windows.shape[:-1], dtype=torch.long, device=windows.device)
    for j in range(windows.size(-1)):
        keys = keys * base + windows[..., j]
    return keys


def find(keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, found) of each query in `keys` (sorted ascending); positions are valid only where found."""
    if keys.numel() == 0:
        return torch.zeros_like(query), torch.zeros(query.shape, dtype=torch.bool, device=query.device)
    pos = torch.searchsorted(keys, query.reshape(-1)).clamp(max=keys.numel() - 1).view(query.shape)
    return pos, keys[pos] == query


def lookup(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """values[keys == query] for each query, 0 where the key is absent. keys sorted ascending."""
    pos, found = find(keys, query)
    if keys.numel() == 0:
        return torch.zeros(query.shape, dtype=values.dtype, device=query.device)
    return torch.where(found, values[pos], torch.zeros((), dtype=values.dtype, device=values.device))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Fitting is a long series of small tensor operations: a second thread's synchronisation costs more than it
    saves, and stalls badly when the other core is busy (measured on 2 cores under load: 35 s vs 2.6 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------- counting


class NGramKeys:
    """The n-gram keys at every predicted position of a split, for any order: (context..., target) in base V."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, vocab_size: int):
        self.inputs, self.V = inputs, vocab_size
        self.real = targets != IGNORE  # (N, L)
        self.targets = targets[self.real]  # (tokens,)
        self.contexts = [torch.zeros_like(self.targets)]  # key of the last m symbols of the context, m = 0, 1, ...

    def _shifted(self, shift: int) -> torch.Tensor:
        """The input `shift` positions to the left of each predicted position (0 = its own input), 0 if none."""
        if shift == 0:
            return self.inputs[self.real]
        if shift >= self.inputs.size(1):
            return torch.zeros_like(self.targets)
        padded = torch.cat([self.inputs.new_zeros(self.inputs.size(0), shift), self.inputs[:, :-shift]], dim=1)
        return padded[self.real]

    def context(self, length: int) -> torch.Tensor:
        while len(self.contexts) <= length:
            m = len(self.contexts)  # add the symbol m places back as the new leading digit
            self.contexts.append(self.contexts[-1] + self._shifted(m - 1) * self.V ** (m - 1))
        return self.contexts[length]

    def grams(self, n: int, true_length: bool = True) -> torch.Tensor:
        """Keys of the n-grams ending at every predicted token. true_length: drop the padded copies of shorter
        n-grams, those whose first two symbols are both the boundary (the start is one boundary symbol)."""
        keys = self.context(n - 1) * self.V + self.targets
        if true_length and n >= 3:
            keys = keys[(self._shifted(n - 2) != 0) | (self._shifted(n - 3) != 0)]
        return keys


def count_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique keys and how often each occurs (NumPy: its radix sort is much faster than torch's on CPU)."""
    unique, counts = np.unique(keys.cpu().numpy(), return_counts=True)
    return torch.from_numpy(unique), torch.from_numpy(counts.astype(np.float64))


class KneserNeyCounts:
    """The count tables of every order of one corpus, built lazily, for a model of any order N.

    raw(m): the m-grams at their true length with raw counts (what the top order uses).
    adjusted(m): what order m contributes below the top: continuation counts N1+(. w), except raw counts for
    m-grams that start at the item start (they have no left neighbours to count).
    """

    def __init__(self, grams: NGramKeys):
        self.grams, self.V = grams, grams.V
        self._raw: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._adjusted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def raw(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        if m not in self._raw:
            self._raw[m] = count_keys(self.grams.grams(m))
        return self._raw[m]

    def adjusted(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        if m not in self._adjusted:
            keys, raw = self.raw(m)
            longer, _ = self.raw(m + 1)
            # each distinct (m+1)-gram "v w" gives its suffix w one distinct left neighbour v
            suffixes, continuation = count_keys(longer % self.V**m)
            counts = lookup(suffixes, continuation, keys)
            if m >= 2:
                counts = torch.where(keys < self.V ** (m - 1), raw, counts)  # starts with the start symbol
            self._adjusted[m] = (keys, counts)
        return self._adjusted[m]

    def tables(self, order: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (keys, counts) that a model of this order uses at its orders 1..order."""
        return [self.adjusted(m) for m in range(1, order)] + [self.raw(order)]


def standard_discounts(counts: torch.Tensor) -> torch.Tensor:
    """(D1, D2, D3+) from the count-of-counts n1..n4 of one order (Chen & Goodman 1998, eq. 26).

    Y = n1 / (n1 + 2 n2),  Dk = k - (k + 1) Y n(k+1) / nk. Where an nk is 0 (low orders have no small continuation
    counts; tiny corpora) Dk falls back to 0.5 k, as KenLM's --discount_fallback does; every Dk stays in [0.01, k]
    so that each count keeps a non-negative share and the lower order always gets some mass.
    """
    n = [float((counts == k).sum()) for k in range(1, 5)]
    y = n[0] / (n[0] + 2 * n[1]) if n[0] + 2 * n[1] > 0 else 0.5
    discounts = []
    for k in (1, 2, 3):
        d = k - (k + 1) * y * n[k] / n[k - 1] if n[k - 1] > 0 else 0.5 * k
        discounts.append(min(max(d, 0.01), float(k)))
    return torch.tensor(discounts, dtype=torch.float64)


def context_stats(
    keys: torch.Tensor, counts: torch.Tensor, base: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per context (a key without its last symbol): sorted context keys, index of its first n-gram, and
    (total, n1, n2, n3+) rows: its count total and how many of its n-grams have count 1, 2, >= 3."""
    contexts, sizes = torch.unique_consecutive(keys // base, return_counts=True)
    starts = sizes.cumsum(0) - sizes
    owner = torch.repeat_interleave(sizes)  # context index of every n-gram
    stats = torch.zeros(contexts.numel(), 4, dtype=torch.float64)
    stats[:, 0].index_add_(0, owner, counts)
    for j, hit in enumerate((counts == 1, counts == 2, counts >= 3), start=1):
        stats[:, j].index_add_(0, owner, hit.double())
    return contexts, starts, stats


def pick_order(orders: list[int], held_out_nll: Callable[[int], float]) -> int:
    """The order with the best held-out NLL, where a higher order must gain MIN_GAIN to win; orders are tried in
    increasing order and the search stops after two orders without such a gain (higher ones only get sparser)."""
    best_nll, best = math.inf, orders[0]
    for n in orders:
        nll = held_out_nll(n)
        if nll < best_nll - MIN_GAIN:
            best_nll, best = nll, n
        elif n >= best + 2:
            break
    return best


# ---------------------------------------------------------------------------------------------------- the model


class NGram(LanguageModel):
    """A count n-gram model: add-k or interpolated modified Kneser-Ney (see the module docstring)."""

    trainable = False

    def __init__(self, config: NGramConfig, vocab_size: int):
        super().__init__(config, vocab_size)
        if config.order and vocab_size**config.order >= KEY_LIMIT:
            raise ValueError(f"order {config.order} with {vocab_size} symbols overflows 64-bit n-gram keys")
        # Saved state: the fitted order (what --order auto picked), the count tables of the orders in use
        # concatenated (offsets[i] is where the i-th starts; add-k has only the top order), and the discounts
        # (what --tune-discounts chose), so a loaded run reproduces the same probabilities.
        self.register_buffer("fitted_order", torch.tensor(config.order, dtype=torch.long))
        self.register_buffer("keys", torch.zeros(0, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("offsets", torch.zeros(0, dtype=torch.long))
        self.register_buffer("discounts", torch.zeros(0, 2, 3, dtype=torch.float64))  # (orders, 2, 3)
        self._prepare()

    @property
    def order(self) -> int:
        """The order in use: the configured one, or the one --order auto picked (1 until then)."""
        return max(int(self.fitted_order), 1)

    @property
    def context_size(self) -> int:
        return self.order - 1

    # ------------------------------------------------------------------------------------------------ fitting
    def fit(self, split, val=None) -> None:
        """Count on `split`; `val` (never test) picks --order auto and tunes the discounts."""
        c = self.config
        kneser_ney = c.smoothing == "kneser-ney"
        wants = {"--order auto": c.order == 0, "--tune-discounts": kneser_ney and c.tune_discounts}
        needs_val = [flag for flag, on in wants.items() if on]
        if needs_val and (val is None or len(val) == 0):
            raise MakemoreError(f"{' and '.join(needs_val)} need a val split (or give --order N --no-tune-discounts)")
        if c.order:
            orders = [c.order]
        else:  # up to the largest order whose keys fit in 64 bits
            orders = [m for m in range(1, c.max_order + 1) if m == 1 or self.vocab_size**m < KEY_LIMIT]
        grams = NGramKeys(split.inputs.cpu(), split.targets.cpu(), self.vocab_size)
        held_out = None
        if val is not None and len(val):
            held_out = NGramKeys(val.inputs.cpu(), val.targets.cpu(), self.vocab_size)
        device = self.device
        self.cpu()  # counting runs on the CPU (NumPy); the tables follow the model back to its device
        with one_thread():
            if kneser_ney:
                self._fit_kneser_ney(KneserNeyCounts(grams), held_out, orders)
            else:
                self._fit_add_k(grams, held_out, orders)
        self.to(device)

    def _fit_add_k(self, grams: NGramKeys, held_out: NGramKeys | None, orders: list[int]) -> None:
        no_discounts = torch.zeros(0, 2, 3, dtype=torch.float64)

        def tables(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            # add-k keeps every padded window as its own n-gram: its context (0, 0, e) is counted apart from (0, e)
            return [count_keys(grams.grams(n, true_length=False))]

        def held_out_nll(n: int) -> float:
            self._store(n, tables(n), no_discounts)
            return self._held_out_nll(held_out)

        n = orders[0] if len(orders) == 1 else pick_order(orders, held_out_nll)
        self._store(n, tables(n), no_discounts)

    def _fit_kneser_ney(self, counts: KneserNeyCounts, held_out: NGramKeys | None, orders: list[int]) -> None:
        V = self.vocab_size
        evidence: dict[int, HeldOutEvidence] = {}
        tuned: dict[int, torch.Tensor] = {}

        def standard(n: int) -> torch.Tensor:
            # (n, 2, 3): D1, D2, D3+ of each order, for n-grams inside an item and for those at its start;
            # the count-of-counts give one estimate for both, tuning on val may move them apart
            return torch.stack([standard_discounts(c) for _, c in counts.tables(n)])[:, None, :].repeat(1, 2, 1)

        def standard_nll(n: int) -> float:
            if n not in evidence:
                evidence[n] = held_out_evidence(counts.tables(n), held_out.grams(n, true_length=False), V)
            return evidence[n].nll(standard(n), V).item()

        def tuned_nll(n: int) -> float:
            standard_nll(n)
            tuned[n] = tune_discounts(evidence[n], standard(n), V)
            return evidence[n].nll(tuned[n], V).item()

        n = orders[0]
        if len(orders) > 1:
            n = pick_order(orders, standard_nll)
            if self.config.tune_discounts:  # tuning helps high orders most: start one below the standard choice
                n = pick_order([m for m in orders if m >= n - 1], tuned_nll)
        elif self.config.tune_discounts:
            tuned_nll(n)
        self._store(n, counts.tables(n), tuned.get(n, standard(n)))

    def _store(self, n: int, tables: list[tuple[torch.Tensor, torch.Tensor]], discounts: torch.Tensor) -> None:
        self.fitted_order.fill_(n)
        self.keys = torch.cat([keys for keys, _ in tables])
        self.counts = torch.cat([counts for _, counts in tables])
        self.offsets = torch.tensor([0] + [len(keys) for keys, _ in tables]).cumsum(0)
        self.discounts = discounts.clone()
        self._prepare()

    @torch.no_grad()
    def _held_out_nll(self, held_out: NGramKeys) -> float:
        probs = self._probs(held_out.context(self.order - 1))  # (tokens, V)
        return -probs.gather(1, held_out.targets[:, None]).log().mean().item()

    # ------------------------------------------------------------------------------------------------ scoring
    def _prepare(self) -> None:
        """Scoring tables derived from the saved state (not saved themselves), all orders concatenated.

        Per context: its key, where its n-grams start, how many there are, and the weight `back` of the lower
        order; per n-gram: its last symbol and its probability share, so that p_m(. | h) = shares + back p_(m-1).
        """
        V, derived = self.vocab_size, []
        for i in range(self.offsets.numel() - 1):
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            keys, counts = self.keys[start:end], self.counts[start:end]
            contexts, starts, stats = context_stats(keys, counts, V)
            sizes = torch.diff(torch.cat([starts, starts.new_tensor([keys.numel()])]))
            owner = torch.repeat_interleave(sizes)  # context index of each n-gram
            total = stats[:, 0]
            if self.config.smoothing == "add-k":  # (c + k) / (total + k V) = c / (total + k V) + back / V
                denominator = total + self.config.k * V
                kept, freed = counts, self.config.k * V
            else:  # the discounts free mass, which the lower order spreads
                at_start = (contexts < V ** (i - 1)) if i >= 1 else torch.zeros_like(contexts, dtype=torch.bool)
                chosen = self.discounts[i][at_start.long()]  # (contexts, 3): the set each context uses
                denominator = total
                which = torch.stack([counts == 1, counts == 2, counts >= 3], dim=-1).double()  # (n-grams, 3)
                kept = counts - (which * chosen[owner]).sum(-1)
                freed = (stats[:, 1:] * chosen).sum(-1)
            back = freed / denominator
            derived.append((contexts, starts + start, sizes, back, keys % V, kept / denominator[owner]))
        names = ("ctx_keys", "ctx_starts", "ctx_sizes", "ctx_back", "symbols", "shares")
        dtypes = (torch.long, torch.long, torch.long, torch.float64, torch.long, torch.float64)
        for j, (name, dtype) in enumerate(zip(names, dtypes)):
            parts = [d[j] for d in derived]
            value = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
            self.register_buffer(name, value.to(self.keys.device), persistent=False)
        self.register_buffer(
            "ctx_offsets", torch.tensor([0] + [len(d[0]) for d in derived]).cumsum(0), persistent=False
        )

    def _probs(self, context_keys: torch.Tensor) -> torch.Tensor:
        """(P,) keys of the last order-1 symbols -> (P, V) next-symbol probabilities."""
        V, P = self.vocab_size, context_keys.numel()
        probs = torch.full((P, V), 1.0 / V, dtype=torch.float64, device=context_keys.device)  # order 0: uniform
        levels = self.ctx_offsets.numel() - 1
        for i in range(levels):
            m = self.order - levels + 1 + i  # the order of this level (add-k has only the top one)
            a, b = int(self.ctx_offsets[i]), int(self.ctx_offsets[i + 1])
            pos, found = find(self.ctx_keys[a:b], context_keys % V ** (m - 1))  # (P,)
            back = torch.where(found, self.ctx_back[a:b][pos], 1.0) if b > a else torch.ones_like(probs[:, 0])
            sizes = torch.where(found, self.ctx_sizes[a:b][pos], 0) if b > a else torch.zeros_like(pos)
            probs.mul_(back[:, None])  # an unseen context leaves the lower order as it is
            rows = torch.repeat_interleave(sizes)  # (E,) the position of each n-gram seen after its context
            first = self.ctx_starts[a:b][pos] - (sizes.cumsum(0) - sizes) if b > a else pos
            entries = first[rows] + torch.arange(rows.numel(), device=rows.device)  # (E,) index into the tables
            probs.view(-1).index_add_(0, rows * V + self.symbols[entries], self.shares[entries])
        return probs

    def log_probs(self, context: torch.Tensor) -> torch.Tensor:
        """(..., order-1) left-padded contexts -> (..., V) log-probabilities of the next symbol."""
        probs = self._probs(encode_keys(context, self.vocab_size).reshape(-1))
        return probs.log_().view(*context.shape[:-1], self.vocab_size)  # in place: (P, V) can be large

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.log_probs(context_windows(idx, self.order - 1)).float()  # (B, T, V)
        loss = sequence_nll(logits, targets) if targets is not None else None
        return logits, loss

    # ------------------------------------------------------------------- incremental decoding: a context lookup
    def init_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, self.order - 1, dtype=torch.long, device=self.device)  # all padding

    def step(self, idx: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context = torch.cat([state, idx[:, None]], dim=1)[:, 1:]  # (B, order-1): the last order-1 symbols
        return self.log_probs(context).float(), context

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The tables' sizes depend on the data they were fitted on: take the saved tensors' shapes.
        for name in ("fitted_order", "keys", "counts", "offsets", "discounts"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.keys.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._prepare()


def held_out_evidence(tables: list[tuple[torch.Tensor, torch.Tensor]], grams: torch.Tensor, V: int) -> HeldOutEvidence:
    """What each order knows about each held-out n-gram (tokens,): the count of the n-gram and the total, n1, n2
    and n3+ of its context, at each order."""
    rows, at_start = [], []
    for m, (keys, counts) in enumerate(tables, start=1):
        tail = grams % V**m  # the last m symbols
        at_start.append(tail // V < V ** (m - 2) if m >= 2 else torch.zeros_like(tail, dtype=torch.bool))
        contexts, _, stats = context_stats(keys, counts, V)
        pos, found = find(contexts, tail // V)
        context_rows = (
            torch.where(found[:, None], stats[pos], 0.0) if contexts.numel() else stats.new_zeros(len(tail), 4)
        )
        rows.append(torch.cat([lookup(keys, counts, tail)[:, None], context_rows], dim=1))
    rows, at_start = torch.stack(rows), torch.stack(at_start)  # (orders, tokens, 5), (orders, tokens)
    # Many held-out tokens see exactly the same evidence at every order: score each distinct case once, weighted.
    flat = torch.cat([rows, at_start[..., None].double()], dim=-1).transpose(0, 1).reshape(rows.size(1), -1)
    distinct, weights = torch.unique(flat, dim=0, return_counts=True)
    distinct = distinct.view(len(distinct), len(tables), 6).transpose(0, 1)
    return HeldOutEvidence(distinct[..., :5], distinct[..., 5] > 0, weights.double())
