"""Tuning an n-gram model's Kneser-Ney discounts on held-out data: the held-out NLL as a smooth function of the
discounts (gathered once per order), and a small quasi-Newton minimiser over them."""

from __future__ import annotations

from collections.abc import Callable

import torch


# ------------------------------------------------------------------------------------------- discount tuning
class HeldOutEvidence:
    """What each order knows about each held-out token, arranged so that the NLL is cheap in the discounts.

    With share_m = (c - D(c)) / total and back_m = (D1 n1 + D2 n2 + D3 n3+) / total (1 for an unseen context),
    p = share_N + back_N (share_(N-1) + back_(N-1) (... + back_1 / V)): everything but D is fixed here, and share_m
    and back_m are linear in the six discounts of order m, so the NLL and its gradient take a few matrix products.
    """

    def __init__(self, rows: torch.Tensor, at_start: torch.Tensor, weights: torch.Tensor):
        """rows (orders, cases, 5): count, total, n1, n2, n3+; at_start (orders, cases): the context is at the item
        start; weights (cases,): how many held-out tokens each case stands for."""
        self.weights = weights / weights.sum()
        seen, total = rows[..., 0], rows[..., 1]
        inverse = torch.where(total > 0, 1 / total.clamp(min=1), 0.0)  # (orders, tokens)
        self.seen_share = seen * inverse
        self.unseen = (total == 0).double()  # back = 1: the lower order as it is
        which = torch.stack([seen == 1, seen == 2, seen >= 3], dim=-1).double()  # the discount each count takes
        start = at_start[..., None].double()  # the second set of discounts serves contexts at the item start
        self.share_linear = torch.cat([-which * (1 - start), -which * start], dim=-1) * inverse[..., None]  # (o, t, 6)
        singles = rows[..., 2:]  # n1, n2, n3+ of the context
        self.back_linear = torch.cat([singles * (1 - start), singles * start], dim=-1) * inverse[..., None]

    def nll(self, discounts: torch.Tensor, vocab_size: int, grad: bool = False):
        """Mean NLL of the held-out tokens under discounts (orders, 2, 3); with grad, also dNLL/ddiscounts."""
        flat = discounts.reshape(-1, 6, 1)
        share = torch.bmm(self.share_linear, flat).squeeze(-1) + self.seen_share  # (orders, tokens)
        back = torch.bmm(self.back_linear, flat).squeeze(-1) + self.unseen
        lower = [torch.full_like(share[0], 1.0 / vocab_size)]  # lower[m]: the probability below order m + 1
        for m in range(len(share)):
            lower.append(share[m] + back[m] * lower[-1])
        probs = lower.pop()
        loss = -(self.weights * probs.log()).sum()
        if not grad:
            return loss
        # backward by hand (a few products instead of an autograd graph per L-BFGS step)
        upstream = -self.weights / probs  # dNLL/dprobs of the current order
        grads = []
        for m in reversed(range(len(share))):
            grads.append(self.share_linear[m].T @ upstream + self.back_linear[m].T @ (upstream * lower[m]))
            upstream = upstream * back[m]
        return loss, torch.stack(grads[::-1]).view_as(discounts)


def tune_discounts(evidence: HeldOutEvidence, start: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Discounts (orders, 2, 3) that minimise the held-out NLL, from the count-of-counts estimates, by L-BFGS.

    Chen & Goodman (1998) tune their discounts on held-out data too. Each Dk stays inside (0, k) through a sigmoid,
    so every estimate on the way is a proper distribution.
    """
    scale = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)

    def nll_and_grad(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        ratio = torch.sigmoid(theta)
        loss, grad = evidence.nll(scale * ratio, vocab_size, grad=True)
        return loss.item(), grad * scale * ratio * (1 - ratio)

    theta = minimize(nll_and_grad, torch.logit((start / scale).clamp(1e-3, 1 - 1e-3)))
    tuned = scale * torch.sigmoid(theta)
    before, after = (evidence.nll(d, vocab_size).item() for d in (start, tuned))
    return tuned if after <= before else start


def minimize(
    fun: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
    x: torch.Tensor,
    max_iter: int = 100,
    memory: int = 10,
    tolerance: float = 1e-8,
) -> torch.Tensor:
    """L-BFGS with a backtracking (Armijo) line search (Nocedal & Wright 2006, alg. 7.4) for a few dozen variables.

    Here rather than torch.optim.LBFGS: constructing a torch optimizer imports the dynamo compiler, which costs more CPU
    time (~2 s) than fitting the whole model.
    """
    value, grad = fun(x)
    steps: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (s, y, 1 / y.s) of recent iterations
    for _ in range(max_iter):
        direction, alphas = -grad.flatten(), []  # two-loop recursion: direction = -H grad
        for s, y, rho in reversed(steps):
            alphas.append(rho * (s @ direction))
            direction -= alphas[-1] * y
        if steps:
            s, y, _ = steps[-1]
            direction *= (s @ y) / (y @ y)
        for (s, y, rho), alpha in zip(steps, reversed(alphas)):
            direction += (alpha - rho * (y @ direction)) * s
        slope = grad.flatten() @ direction
        if slope >= 0:  # not a descent direction: forget the curvature pairs, go downhill
            direction, slope, steps = -grad.flatten(), -(grad.flatten() @ grad.flatten()), []
        if -slope < tolerance**2:
            break
        step = 1.0
        while True:
            candidate = x + step * direction.view_as(x)
            new_value, new_grad = fun(candidate)
            if new_value <= value + 1e-4 * step * slope.item() or step < 1e-10:
                break
            step /= 2
        s, y = (candidate - x).flatten(), (new_grad - grad).flatten()
        if s @ y > 1e-12:
            steps = (steps + [(s, y, 1 / (s @ y).item())])[-memory:]
        done = value - new_value < tolerance
        x, value, grad = candidate, new_value, new_grad
        if done:
            break
    return x
