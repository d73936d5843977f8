"""Optimizer state in a checkpoint: tensors to safetensors, the rest to JSON, checked before it is loaded."""

from __future__ import annotations

import math
from typing import Any

import torch

from makemore.errors import MakemoreError


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state_dict -> (tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{key}"] = value
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    where: str = "checkpoint",
) -> dict[str, Any]:
    """Inverse of flatten_optimizer. Given the optimizer it is meant for, also check that the saved state fits it
    (same groups and settings of the same types, finite numbers, moment tensors shaped like their parameters), so
    a tampered checkpoint fails here with one line instead of inside optimizer.step()."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    loaded = {"state": state, "param_groups": meta["param_groups"]}
    if optimizer is not None:
        check_optimizer_state(loaded, optimizer, where)
    return loaded


def _same_kind(value: Any, reference: Any) -> bool:
    if reference is None or isinstance(reference, bool):
        return value is None or type(value) is type(reference)
    if isinstance(reference, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(reference, (tuple, list)):
        return (
            isinstance(value, (tuple, list))
            and len(value) == len(reference)
            and all(_same_kind(v, r) for v, r in zip(value, reference))
        )
    return type(value) is type(reference)


def check_optimizer_state(loaded: dict[str, Any], optimizer: torch.optim.Optimizer, where: str) -> None:
    reference = optimizer.state_dict()
    groups = loaded["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(reference["param_groups"]):
        raise MakemoreError(f"{where}: optimizer state has other parameter groups than this model's optimizer")
    shapes: dict[int, torch.Size] = {}
    for group, ref_group, params in zip(groups, reference["param_groups"], optimizer.param_groups):
        if not isinstance(group, dict) or set(group) != set(ref_group) or group["params"] != ref_group["params"]:
            raise MakemoreError(f"{where}: optimizer state has other parameter groups than this model's optimizer")
        for key, value in group.items():
            if key != "params" and not _same_kind(value, ref_group[key]):
                raise MakemoreError(f"{where}: optimizer setting {key} = {value!r} is not valid")
        shapes.update(zip(ref_group["params"], (p.shape for p in params["params"])))
    for param_id, entries in loaded["state"].items():
        if param_id not in shapes:
            raise MakemoreError(f"{where}: optimizer state for unknown parameter {param_id}")
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                if value.dim() > 0 and value.shape != shapes[param_id]:
                    raise MakemoreError(f"{where}: optimizer {key} of parameter {param_id} has the wrong shape")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise MakemoreError(f"{where}: optimizer {key} of parameter {param_id} is not finite")
            elif not _same_kind(value, 0.0):
                raise MakemoreError(f"{where}: optimizer {key} of parameter {param_id} is not a number")
