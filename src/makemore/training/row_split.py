"""Data parallelism inside one process: the rows of a batch in shards, each shard's forward and backward on its
own thread, the gradients summed in a fixed order.

At makemore's sizes a training step is hundreds of small ops. Two intra-op threads barely shorten it (each op is
too small to share), but two shards of rows run side by side do: PyTorch releases the GIL inside every op, so the
threads overlap nearly all of their work. Valid for models whose rows never interact (`rows_independent`); the
gradient is then the token-weighted sum of the shards' gradients, the gradient of the batch's mean NLL.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager

import torch

from makemore.data.lines import IGNORE
from makemore.models import LanguageModel
from makemore.models.base import dropout_generator


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of a shard's dropout at a step: a function of (seed, step, shard), so resumed runs repeat exactly."""
    return ((seed * 1_000_003 + step) * 4099 + shard) % (1 << 63)


class RowSplitter:
    """Computes a batch's gradient as `parts` shards of rows on as many threads; the same numbers on every run for a
    given (seed, step, parts): each shard's dropout has its own seeded stream, and the sum runs in shard order."""

    def __init__(self, model: LanguageModel, seed: int):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.seed = seed
        self.pool: ThreadPoolExecutor | None = None
        self.pool_size = 0

    def _workers(self, count: int) -> ThreadPoolExecutor:
        if self.pool is None or self.pool_size != count:
            self.close()
            # one intra-op thread per shard thread: the cores are shared out by shards, not inside ops
            self.pool = ThreadPoolExecutor(count, "makemore-shard", initializer=torch.set_num_threads, initargs=(1,))
            self.pool_size = count
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def gradients(
        self,
        forward: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        x: torch.Tensor,
        y: torch.Tensor,
        step: int,
        parts: int,
        context: Callable[[], AbstractContextManager],
    ) -> torch.Tensor:
        """Set every parameter's .grad (in place where it exists) to the gradient of the batch's mean NLL plus the
        model's penalty, from `parts` shards of rows on as many threads (this one included); return the batch's mean
        NLL, detached.

        x, y (B, T). `context()` is entered on each thread around its forward (autocast is per thread)."""
        tokens = [int((part != IGNORE).sum()) for part in y.tensor_split(parts)]
        total = sum(tokens)
        shards = [
            (shard, xs, ys, count / total)
            for shard, (xs, ys, count) in enumerate(zip(x.tensor_split(parts), y.tensor_split(parts), tokens))
            if count > 0  # a shard of padding only has no loss (its mean would be NaN)
        ]

        def run(shard: int, xs: torch.Tensor, ys: torch.Tensor, weight: float):
            generator = torch.Generator().manual_seed(shard_seed(self.seed, step, shard))
            with context(), dropout_generator(generator):
                _, loss = forward(xs, ys)
            grads = torch.autograd.grad(loss * weight, self.params, allow_unused=True)
            return loss.detach() * weight, grads

        pending = [self._workers(parts - 1).submit(run, *shard) for shard in shards[1:]] if len(shards) > 1 else []
        results = []
        try:
            if shards:
                results.append(run(*shards[0]))
        finally:  # every thread is done before anything returns or raises
            wait(pending)
        results += [future.result() for future in pending]
        penalty = self.model.penalty()
        if isinstance(penalty, torch.Tensor) and penalty.requires_grad:
            results.append((torch.zeros(()), torch.autograd.grad(penalty, self.params, allow_unused=True)))
        if not results:  # a batch of padding only: the unsplit forward says what that gives (NaN)
            for param in self.params:
                param.grad = None if param.grad is None else param.grad.zero_()
            with context():
                return forward(x, y)[1].detach()
        loss = results[0][0]
        for part, _ in results[1:]:
            loss = loss + part
        self._set_gradients([grads for _, grads in results])
        return loss

    def _set_gradients(self, shard_grads: list[tuple[torch.Tensor | None, ...]]) -> None:
        """Every parameter's .grad = its shards' gradients summed in shard order (the same sum on every run)."""
        for index, param in enumerate(self.params):
            parts = [grads[index] for grads in shard_grads if grads[index] is not None]
            if not parts:
                param.grad = None if param.grad is None else param.grad.zero_()
                continue
            total = parts[0]
            for part in parts[1:]:  # out of place: autograd may hand one tensor to two parameters
                total = total + part
            if param.grad is not None:
                param.grad.copy_(total)
            else:  # a lone part is copied: clipping scales every .grad in place
                param.grad = total if len(parts) > 1 else total.clone()
