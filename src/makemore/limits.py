"""Size limits for configs that come from flags or from someone else's run.json.

A model config can be valid field by field and still describe a model that would exhaust memory (an extra zero in
--n-hidden, a crafted run.json). `allocation_budget` builds a model while counting the elements of every tensor its
constructor asks for, *before* each is allocated, and raises ValueError once the total passes the limit: no model
needs to describe its size, and nothing big is allocated first. (Building on the meta device would also avoid the
memory, but its random-init kernels import sympy and take seconds on first use.)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

MAX_MODEL_ELEMENTS = 1_000_000_000  # parameters + buffers (+ build temporaries); far above any char-level model

_SIZED_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn}  # size as *ints or one sequence
_TENSOR_FACTORIES = {torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones}  # self, then size


def _numel(size: Any) -> int:
    if isinstance(size, int):
        return max(size, 0)
    if isinstance(size, (tuple, list, torch.Size)) and all(isinstance(d, int) for d in size):
        return math.prod(max(d, 0) for d in size)
    return 0


def requested_elements(func: Any, args: tuple, kwargs: dict) -> int:
    """How many elements a factory call will allocate (0 when it is not a factory or the size can't be read)."""
    if func in _SIZED_FACTORIES:
        size = kwargs.get("size", args[0] if len(args) == 1 else args)
        return _numel(size)
    if func in _TENSOR_FACTORIES:
        size = kwargs.get("size", args[1] if len(args) == 2 else args[1:])
        return _numel(size)
    if func is torch.full or func is torch.Tensor.new_full:
        return _numel(args[1] if func is torch.Tensor.new_full and len(args) > 1 else args[0] if args else ())
    if func is torch.randint:
        return _numel(kwargs.get("size", args[-1] if args else ()))
    if func is torch.eye:
        n = args[0] if args else kwargs.get("n", 0)
        m = args[1] if len(args) > 1 else kwargs.get("m", n)
        return _numel((n, m if m is not None else n))
    return 0


class allocation_budget(TorchFunctionMode):  # noqa: N801 -- used like a function: `with allocation_budget():`
    """`with allocation_budget(limit): build()` raises ValueError before the build allocates more than `limit`."""

    def __init__(self, limit: int = MAX_MODEL_ELEMENTS):
        super().__init__()
        self.limit = limit
        self.total = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.total += requested_elements(func, args, kwargs)
        if self.total > self.limit:
            raise ValueError(
                f"the model would need more than {self.limit:,} parameters and buffers (at least {self.total:,}): "
                "choose smaller sizes"
            )
        return func(*args, **kwargs)
