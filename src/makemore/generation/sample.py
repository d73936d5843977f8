"""One decoder for every model: batched sampling and greedy decoding, with exact constraints by logit masking.

Search for the most probable items (exact best-first search, and beam search) lives in search.py.

It sees models only through `init_state` / `step` / `reorder_state`, so each model's own incremental state (a
rolling context window, recurrent state, a KV cache) does the work and no step recomputes the prefix:

- The prefix is fed once, for one row, and the state is then copied to the n rows (`reorder_state` with repeated
  row indices).
- All n items are one batch; rows that emitted the end token leave the batch (`reorder_state` keeps the rest) once
  they are a quarter of it (until then they ride along, fed the end token, their output fixed), so the batch
  shrinks as items finish without a state copy at every step, and the loop stops when the last one has.
- Sampling uses the Gumbel-max trick with noise drawn for all n output rows at every step (Gumbel 1954; Maddison
  et al. 2014): item i at step t always uses the same random numbers whoever else is still in the batch. Seeded
  runs therefore repeat exactly, and `generate_recompute` (the naive path: every row, whole prefix, every step)
  gives the very same items, which the tests check.

`decode_smc` runs a particle filter on top of the same masks, so that items follow the model conditioned on the
constraints rather than the per-step renormalised model.

Decoding options act on the next-token logits (B, V) of each step, after the constraint mask (constraints.py):
mask, then temperature, then top-k, then top-p. Log-probabilities reported with items are at temperature 1 with no
top-k/top-p: `logprob` under the model conditioned step by step on the constraints (masked and renormalised), and
`model_logprob` under the model alone (the item's probability, prefix and end token included, as `score` gives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from makemore.data.lines import BOUNDARY
from makemore.generation.common import Generated, prime
from makemore.generation.constraints import Constraint, length_constraint
from makemore.models import LanguageModel

SMALL_BATCH = 8  # decodes of at most this many rows on the CPU take `_decode_small`
COMPACT_AT = 0.25  # ended rows leave the batch once they are this fraction of it
SHARE_UNTIL = 0.5  # rows share states until this fraction of them are distinct


@dataclass
class DecodeOptions:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False


def filter_logits(logits: torch.Tensor, options: DecodeOptions) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on logits (B, V); removed entries become -inf."""
    logits = logits.float()
    if options.temperature != 1.0:
        logits = logits / max(options.temperature, 1e-8)
    if options.top_k is not None and options.top_k < logits.size(-1):
        kth = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p is not None and options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= options.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniform u in [0, 1): argmax(logits + noise) is a sample from softmax(logits)."""
    return u.log_().neg_().log_().neg_()  # in place: u is a fresh tensor


def choose(logits: torch.Tensor, options: DecodeOptions, noise: torch.Tensor | None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V): argmax if greedy, else a sample (Gumbel-max with `noise` (B, V))."""
    if options.greedy:
        return logits.argmax(-1)
    return (filter_logits(logits, options) + noise).argmax(-1)


def _mask(logits: torch.Tensor, constraint: Constraint, states: torch.Tensor, t: int) -> torch.Tensor:
    """Constraint mask on logits (B, V) of rows in DFA `states` whose items have t characters."""
    if constraint.trivial and constraint.min_len <= t < constraint.max_len:
        return logits  # only lengths are constrained, and this position is free
    return logits.masked_fill(~constraint.allowed(states, t), float("-inf"))


@torch.inference_mode()
def decode(
    model: LanguageModel,
    n: int,
    constraint: Constraint,
    options: DecodeOptions | None = None,
    generator: torch.Generator | None = None,
    details: bool = True,
) -> list[Generated]:
    """n items as one batch, every one satisfying `constraint`; finished rows leave the batch.

    With details=False the log-probabilities are not computed (faster) and are reported as nan.
    """
    options = options or DecodeOptions()
    if model.training:
        model.eval()
    device = model.device
    constraint = constraint.to(device)
    if n <= SMALL_BATCH and device.type == "cpu":
        return _decode_small(model, n, constraint, options, generator, details)
    prefix = constraint.prefix_ids
    logits, state, prefix_logprobs = prime(model, n, prefix, device, expand=False)
    parent = torch.zeros(n, dtype=torch.long, device=device)  # the state row of each batch row, while shared
    V = logits.size(-1)
    steps = constraint.max_len - len(prefix) + 1  # the last step can only emit the end token
    tokens = torch.zeros(n, steps, dtype=torch.long, device=device)  # BOUNDARY-filled: a row's end is its first 0
    model_lp = torch.zeros(n, steps, device=device) if details else None
    masked_lp = torch.zeros(n, steps, device=device) if details else None
    active = torch.arange(n, device=device)  # which output row each batch row belongs to
    B = n  # rows still in the batch
    states = constraint.initial_states(n)
    done = None  # (B,) rows whose item has ended but that ride along (fed the end token) until the next compaction
    for j in range(steps):
        t = len(prefix) + j
        masked = _mask(logits, constraint, states, t)
        noise = None
        if not options.greedy:
            u = torch.rand(n, V, generator=generator, device=device)  # every output row's numbers, every step
            noise = gumbel(u if B == n else u.index_select(0, active))
        next_ids = choose(masked, options, noise)  # (B,)
        if done is not None:
            next_ids = next_ids.masked_fill(done, BOUNDARY)  # an ended row's buffers stay BOUNDARY: its end holds
        rows = slice(None) if B == n else active
        tokens[rows, j] = next_ids
        if details:
            model_lp[rows, j] = torch.log_softmax(logits.float(), -1).gather(1, next_ids[:, None]).squeeze(1)
            if masked is not logits:
                masked_lp[rows, j] = torch.log_softmax(masked.float(), -1).gather(1, next_ids[:, None]).squeeze(1)
            else:
                masked_lp[rows, j] = model_lp[rows, j]
        ended = next_ids == BOUNDARY
        n_ended = int(ended.sum())  # the one host sync per step
        if j == steps - 1 or n_ended == B:
            break
        if not constraint.trivial:
            states = constraint.advance(states, next_ids)
        done = ended if n_ended else None
        if n_ended >= B * COMPACT_AT:  # compact once enough have ended: each reorder copies the state (a KV cache)
            keep = (~ended).nonzero(as_tuple=True)[0]
            active, next_ids, states = active[keep], next_ids[keep], states[keep]
            if parent is None:
                state = model.reorder_state(state, keep)
            else:
                parent = parent[keep]
            B -= n_ended
            done = None
        if parent is None:
            logits, state = model.step(next_ids, state)
        else:
            logits, state, parent = _shared_step(model, state, parent, next_ids, V)
    return _collect(prefix, tokens, model_lp, masked_lp, prefix_logprobs, details)


def _shared_step(
    model: LanguageModel, state: Any, parent: torch.Tensor, next_ids: torch.Tensor, V: int
) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """One step for rows that share states: rows whose items so far are equal (all of them after the prefix, at
    most V after one character, ...) have equal states, so each distinct (state row, token) pair is stepped once.
    parent (B,): the state row of each batch row. Returns logits (B, V), the state, and the new parent, or None
    once there is little left to share (over half the rows distinct): from then on the state has a row per row."""
    pairs = parent * V + next_ids
    distinct, inverse = torch.unique(pairs, return_inverse=True)  # (G,), (B,)
    if distinct.numel() > SHARE_UNTIL * pairs.numel():
        logits, state = model.step(next_ids, model.reorder_state(state, parent))
        return logits, state, None
    logits, state = model.step(distinct % V, model.reorder_state(state, distinct // V))
    return logits.index_select(0, inverse), state, inverse


def _decode_small(
    model: LanguageModel,
    n: int,
    constraint: Constraint,
    options: DecodeOptions,
    generator: torch.Generator | None,
    details: bool,
) -> list[Generated]:
    """`decode` for a few rows on the CPU: the same items from the same random numbers, with the per-step
    bookkeeping in NumPy, since at this size a step costs its number of calls, not their arithmetic (one item at a
    time is interactive use). Rows that end ride along to the last one; the random numbers of every step are drawn
    before the first (the same stream: torch's CPU generator fills a tensor serially)."""
    prefix = constraint.prefix_ids
    logits, state, prefix_logprobs = prime(model, n, prefix, torch.device("cpu"))
    V = logits.size(-1)
    steps = constraint.max_len - len(prefix) + 1
    noise = None if options.greedy else gumbel(torch.rand(steps, n, V, generator=generator)).numpy()  # (steps, n, V)
    result = _small_steps(model, n, constraint, options, logits, state, noise, steps, details)
    tokens, model_lp, masked_lp = (torch.from_numpy(a) for a in result)
    return _collect(prefix, tokens, model_lp, masked_lp, prefix_logprobs, details)


def _small_steps(
    model: LanguageModel,
    n: int,
    constraint: Constraint,
    options: DecodeOptions,
    logits: torch.Tensor,
    state: Any,
    noise: np.ndarray | None,
    steps: int,
    details: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The step loop of `_decode_small`: tokens, model log-probs and masked log-probs (zeros unless `details`),
    each (n, steps)."""
    prefix = constraint.prefix_ids
    tokens = np.zeros((n, steps), dtype=np.int64)
    model_lp = np.zeros((n, steps), dtype=np.float32)
    masked_lp = np.zeros((n, steps), dtype=np.float32)
    states = constraint.initial_states(n)
    done = np.zeros(n, dtype=bool)
    rows = np.arange(n)
    for j in range(steps):
        masked = _mask(logits, constraint, states, len(prefix) + j)
        scores = filter_logits(masked, options).numpy()  # (n, V); the logits themselves unless options change them
        next_ids = scores.argmax(1) if noise is None else (scores + noise[j]).argmax(1)
        next_ids[done] = BOUNDARY  # an ended row's buffers stay BOUNDARY: its end holds
        tokens[:, j] = next_ids
        if details:
            model_lp[:, j] = _log_softmax(logits.numpy())[rows, next_ids]
            masked_lp[:, j] = model_lp[:, j] if masked is logits else _log_softmax(masked.numpy())[rows, next_ids]
        done |= next_ids == BOUNDARY
        if j == steps - 1 or done.all():
            break
        next_tensor = torch.from_numpy(next_ids)
        if not constraint.trivial:
            states = constraint.advance(states, next_tensor)
        logits, state = model.step(next_tensor, state)
    return tokens, model_lp, masked_lp


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Rows (B, V) in float64; a row with no allowed entry (an ended row's) gives nan, as torch's does."""
    with np.errstate(invalid="ignore"):
        shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


@torch.inference_mode()
def decode_smc(
    model: LanguageModel,
    n: int,
    particles: int,
    constraint: Constraint,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[Generated]:
    """n items that follow the model conditioned on the constraint, by sequential Monte Carlo (a particle filter).

    Masking alone samples q(x) = prod_t p(x_t | x_<t, allowed), which is not p(x | constraint): it over-weights
    items whose early characters made the constraint hard to meet (a rare suffix is then forced at --max-len). Each
    item here has its own population of `particles` masked samples, weighted by w = p(x) / q(x) = prod_t Z_t (Z_t:
    the probability the model gave to the allowed tokens at step t) and resampled within the population whenever
    its effective sample size falls below half (Doucet, de Freitas & Gordon 2001; for language models: Lew et al.
    2023, "Sequential Monte Carlo Steering of Large Language Models"). One particle per population is returned,
    picked by weight. As `particles` grows, items approach the exact conditional of the model at `temperature`.
    """
    if model.training:
        model.eval()
    device = model.device
    constraint = constraint.to(device)
    prefix = constraint.prefix_ids
    M, N = particles, n * particles
    logits, state, prefix_logprobs = prime(model, N, prefix, device)
    V = logits.size(-1)
    steps = constraint.max_len - len(prefix) + 1
    tokens = torch.zeros(N, steps, dtype=torch.long, device=device)  # per particle; a row's end is its first 0
    model_lp = torch.zeros(N, steps, device=device)
    masked_lp = torch.zeros(N, steps, device=device)
    log_w = torch.zeros(N, dtype=torch.float64, device=device)  # log importance weight since the last resampling
    alive = torch.ones(N, dtype=torch.bool, device=device)  # particles that have not ended
    active = torch.arange(N, device=device)  # the particle of each batch row
    states = constraint.initial_states(N)
    first = torch.arange(n, device=device) * M  # the first particle of each population
    for j in range(steps):
        masked = _mask(logits, constraint, states, len(prefix) + j)
        scaled, scaled_masked = logits.float() / temperature, masked.float() / temperature
        u = torch.rand(active.numel(), V, generator=generator, device=device)
        next_ids = (scaled_masked + gumbel(u)).argmax(-1)  # a sample of the masked, tempered model
        tokens[active, j] = next_ids
        model_lp[active, j] = torch.log_softmax(logits.float(), -1).gather(1, next_ids[:, None]).squeeze(1)
        masked_lp[active, j] = torch.log_softmax(masked.float(), -1).gather(1, next_ids[:, None]).squeeze(1)
        log_w[active] += (torch.logsumexp(scaled_masked, -1) - torch.logsumexp(scaled, -1)).double()  # log Z_t
        ended = next_ids == BOUNDARY
        alive[active[ended]] = False
        if j == steps - 1 or not bool(alive.any()):
            break
        states = constraint.advance(states, next_ids)
        w = torch.softmax(log_w.view(n, M), dim=1)  # (n, M)
        resample = (1.0 / (w * w).sum(1)) < M / 2  # effective sample size below half
        if bool(resample.any()):
            ancestors = torch.arange(N, device=device).view(n, M)
            picks = torch.multinomial(w[resample], M, replacement=True, generator=generator)  # (r, M)
            ancestors[resample] = picks + first[resample, None]
            ancestors = ancestors.view(-1)
            tokens, model_lp, masked_lp, alive = (
                tokens[ancestors],
                model_lp[ancestors],
                masked_lp[ancestors],
                alive[ancestors],
            )
            log_w = log_w.view(n, M).masked_fill(resample[:, None], 0.0).view(-1)
            row_of = torch.full((N,), -1, dtype=torch.long, device=device)
            row_of[active] = torch.arange(active.numel(), device=device)
            active = alive.nonzero(as_tuple=True)[0]
            rows = row_of[ancestors[active]]  # the batch row of each live particle's ancestor (alive, so present)
        elif bool(ended.any()):
            rows = (~ended).nonzero(as_tuple=True)[0]
            active = active[rows]
        else:
            logits, state = model.step(next_ids, state)
            continue
        next_ids, states = next_ids[rows], states[rows]
        state = model.reorder_state(state, rows)
        logits, state = model.step(next_ids, state)
    picks = torch.multinomial(torch.softmax(log_w.view(n, M), dim=1), 1, generator=generator).squeeze(1)  # (n,)
    chosen = first + picks
    return _collect(prefix, tokens[chosen], model_lp[chosen], masked_lp[chosen], prefix_logprobs, True)


def _collect(
    prefix: list[int],
    tokens: torch.Tensor,
    model_lp: torch.Tensor | None,
    masked_lp: torch.Tensor | None,
    prefix_logprobs: list[float],
    details: bool,
) -> list[Generated]:
    """Per-row results from the (n, steps) buffers; a row's item ends at its first BOUNDARY."""
    tokens_np = tokens.cpu().numpy()
    ended = tokens_np == BOUNDARY
    lengths = np.where(ended.any(1), ended.argmax(1), tokens_np.shape[1])  # characters after the prefix
    rows, n_chars = tokens_np.tolist(), lengths.tolist()  # whole-array conversions: per-row numpy calls are slow
    if not details or model_lp is None or masked_lp is None:
        return [Generated(prefix + ids[:n], math.nan, math.nan, []) for ids, n in zip(rows, n_chars)]
    counted = np.arange(tokens_np.shape[1])[None, :] <= lengths[:, None]  # the characters and the end token
    model_np = model_lp.cpu().double().numpy()
    model_sums = (np.where(counted, model_np, 0.0).sum(1) + math.fsum(prefix_logprobs)).tolist()
    masked_sums = np.where(counted, masked_lp.cpu().double().numpy(), 0.0).sum(1).tolist()
    return [
        Generated(prefix + ids[:n], masked, total, prefix_logprobs + per_token[: n + 1])
        for ids, n, masked, total, per_token in zip(rows, n_chars, masked_sums, model_sums, model_np.tolist())
    ]


@torch.inference_mode()
def generate_recompute(
    model: LanguageModel,
    n: int,
    constraint: Constraint,
    options: DecodeOptions | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """The naive reference path (the original makemore's): all n rows to the end, `forward` on the whole sequence
    at every step, no state. Same random numbers as `decode`, so the same items; for tests and benchmarks."""
    options = options or DecodeOptions()
    model.eval()
    device = model.device
    constraint = constraint.to(device)
    prefix = constraint.prefix_ids
    seq = torch.tensor([[BOUNDARY] + prefix] * n, dtype=torch.long, device=device)  # (n, 1 + len(prefix))
    done = torch.zeros(n, dtype=torch.bool, device=device)
    states = constraint.initial_states(n)
    steps = constraint.max_len - len(prefix) + 1
    for j in range(steps):
        logits = model(seq)[0][:, -1, :]  # (n, V): the whole prefix recomputed
        masked = _mask(logits, constraint, states, len(prefix) + j)
        noise = None if options.greedy else gumbel(torch.rand(n, logits.size(-1), generator=generator, device=device))
        next_ids = choose(masked, options, noise).masked_fill(done, BOUNDARY)
        seq = torch.cat([seq, next_ids[:, None]], dim=1)
        done |= next_ids == BOUNDARY
        if bool(done.all()):
            break
        states = constraint.advance(states, next_ids)
    out = []
    for row in seq[:, 1:].tolist():
        ids = row[len(prefix) :]
        out.append(prefix + ids[: ids.index(BOUNDARY)] if BOUNDARY in ids else prefix + ids)
    return out


@torch.inference_mode()
def generate(
    model: LanguageModel,
    n: int,
    max_len: int,
    options: DecodeOptions | None = None,
    prefix: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """n items as lists of token ids (the prefix included, boundary excluded); each 1 to max_len tokens."""
    constraint = length_constraint(model.vocab_size, max_len, prefix, min_len=1)
    return [g.ids for g in decode(model, n, constraint, options, generator, details=False)]
