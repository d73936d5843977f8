"""Fitting a mix's weights on held-out tokens, for its two ways of combining members' next-symbol distributions:

- linear: p = sum_i w_i p_i, the weights a distribution (Jelinek & Mercer 1980), fitted by EM (Dempster, Laird &
  Rubin 1977). It needs only the probability each member gives each held-out token.
- log-linear: p = softmax(sum_i w_i log p_i), the weights >= 0 and free to sum to more or less than 1 (Klakow 1998,
  "Log-linear interpolation of language models"; Hinton 2002's product of experts). A token that every member
  finds likely gets more than any of them gives it, so a mix of similar networks gains where a linear one cannot.
  It needs each member's whole distribution at each held-out token. The NLL is convex in the weights (a
  log-sum-exp of linear functions minus a linear function), so L-BFGS finds the optimum.

Both include every single member (a weight of 1 on it, 0 on the others), so a mix is never worse on the tokens it
was fitted on than its best member.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from makemore.models.ngram import one_thread

COMBINES = ("linear", "log-linear")
# log-linear: fitted on at most this many held-out tokens (an evenly spaced subset; every token is scored), so that a
# million-item val fits in memory and seconds; below NEGLIGIBLE a weight is 0 (the member is dropped from the mix).
FIT_TOKENS = 200_000
NEGLIGIBLE = 1e-3


@dataclass
class HeldOut:
    """What members said about held-out tokens: log p_i(token) (K, N) float64 and, for log-linear fitting, each
    member's whole log-distribution (K, N, V) float32 (None when only the linear mix is wanted)."""

    log_probs: torch.Tensor
    log_dists: torch.Tensor | None = None
    targets: torch.Tensor | None = None  # (N,) the token ids, with log_dists


def mixture_nll(log_probs: torch.Tensor, weights: torch.Tensor) -> float:
    """Mean NLL of the linear mixture with `weights` (K,), given member log-probs (K, tokens)."""
    return -torch.logsumexp(log_probs + weights.log()[:, None], dim=0).mean().item()


def fit_weights(log_probs: torch.Tensor, steps: int = 1000, tolerance: float = 1e-10) -> torch.Tensor:
    """Linear mixture weights (K,) that maximise the likelihood of held-out tokens, by EM from uniform weights.

    E step: each member's posterior share of each token; M step: the new weight of a member is its mean share.
    Each step raises the likelihood, which is concave in the weights, so EM heads for the global optimum; but when
    that optimum is a single member, EM only approaches it slowly (1/t). Picking the best of the EM result and the
    K single members makes the mixture never worse on the fitting data than its best member.
    """
    K = log_probs.size(0)
    weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
    with one_thread():  # many small steps: see ngram.one_thread
        for _ in range(steps):
            shares = torch.softmax(log_probs + weights.log()[:, None], dim=0)  # (K, tokens)
            updated = shares.mean(dim=1)
            done = (updated - weights).abs().max().item() < tolerance
            weights = updated
            if done:
                break
    candidates = [weights] + [F.one_hot(torch.tensor(k), K).double() for k in range(K)]
    return min(candidates, key=lambda w: mixture_nll(log_probs, w))


def log_linear_nll(log_dists: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> float:
    """Mean NLL of softmax(sum_i w_i log p_i) at `targets` (N,), given log-distributions (K, N, V); in chunks."""
    total = 0.0
    w = weights.double()[:, None, None]
    for start in range(0, targets.numel(), 65_536):
        chunk = log_dists[:, start : start + 65_536].double()  # (K, n, V)
        mixed = F.log_softmax((chunk * w).sum(0), dim=-1)  # (n, V)
        total -= mixed.gather(-1, targets[start : start + 65_536, None]).sum().item()
    return total / max(targets.numel(), 1)


def fit_log_linear(
    log_dists: torch.Tensor, targets: torch.Tensor, log_probs: torch.Tensor, steps: int = 500
) -> tuple[torch.Tensor, float]:
    """Log-linear weights (K,) >= 0 that minimise the NLL of softmax(sum_i w_i log p_i) on held-out tokens.

    The weights are softplus(r) (non-negative, so a member cannot be used "against"), optimised by L-BFGS from
    w_i = 1/K on an evenly spaced subset of at most FIT_TOKENS tokens; weights under NEGLIGIBLE become 0. The best
    of that and the single members (scored on every token; a member alone is its own log-probs `log_probs` (K, N))
    is returned, with its mean NLL on every token."""
    K, N = log_dists.shape[:2]
    every = torch.arange(0, N, max(1, -(-N // FIT_TOKENS)))
    dists, picked = log_dists[:, every].double(), targets[every]  # (K, n, V), (n,)
    start = torch.log(torch.expm1(torch.tensor(1.0 / K, dtype=torch.float64)))  # softplus(start) = 1/K
    raw = torch.full((K,), start.item(), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([raw], max_iter=steps, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        mixed = F.log_softmax((dists * F.softplus(raw)[:, None, None]).sum(0), dim=-1)  # (n, V)
        loss = -mixed.gather(-1, picked[:, None]).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    weights = F.softplus(raw.detach())
    weights = torch.where(weights < NEGLIGIBLE, torch.zeros_like(weights), weights)
    alone = -log_probs.mean(dim=1)  # (K,) softmax(1 * log p_k) = p_k
    nll = log_linear_nll(log_dists, targets, weights)
    if nll <= alone.min().item():
        return weights, nll
    return F.one_hot(alone.argmin(), K).double(), alone.min().item()


def fit(held_out: HeldOut, combine: str, em_steps: int = 1000) -> tuple[str, torch.Tensor, float]:
    """(combine, weights, val NLL) for `combine` "linear", "log-linear", or "best": both, the one with the lower NLL
    on the held-out tokens (a tie keeps the linear mix; a mix of one member is linear, that member as it is)."""
    if combine == "best" and held_out.log_probs.size(0) == 1:
        combine = "linear"
    fitted = []
    if combine in ("linear", "best"):
        weights = fit_weights(held_out.log_probs, em_steps)
        fitted.append(("linear", weights, mixture_nll(held_out.log_probs, weights)))
    if combine in ("log-linear", "best"):
        if held_out.log_dists is None or held_out.targets is None:
            raise ValueError("a log-linear mix is fitted on the members' whole distributions")
        fitted.append(("log-linear", *fit_log_linear(held_out.log_dists, held_out.targets, held_out.log_probs)))
    if not fitted:
        raise ValueError(f"combine must be one of {', '.join(COMBINES)} or best, got {combine!r}")
    return min(fitted, key=lambda result: result[2])


__all__ = ["COMBINES", "HeldOut", "fit", "fit_log_linear", "fit_weights", "log_linear_nll", "mixture_nll"]
