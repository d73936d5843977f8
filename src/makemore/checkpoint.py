"""Run directories: written atomically, read without trusting anything (no pickle, JSON validated).

RUN/run.json                 format version, model name + config, train config, vocab, data provenance
RUN/model.safetensors        the best weights by val loss (what eval / sample / score use)
RUN/checkpoint.safetensors   latest weights + optimizer + RNG + sampler state, for exact resume
RUN/checkpoint.json          step, best val loss, elapsed time of that checkpoint
RUN/metrics.jsonl            one JSON object per log line
RUN/{train,val,test}.txt     the items of each split (line mode), so a run describes itself
RUN/samples.txt              samples drawn at the end of training
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from . import config as config_mod
from .data import Vocab
from .errors import MakemoreError
from .models import MODELS, LanguageModel, build_model

FORMAT_VERSION = 1
RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
METRICS_FILE = "metrics.jsonl"
MAX_CONFIG_BYTES = 1 << 20


# ---------------------------------------------------------------------------------------------------------- writing


def atomic_write(path: str | Path, data: bytes) -> None:
    """Temp file in the same directory -> fsync -> rename -> fsync the directory: old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    atomic_write(path, save_safetensors_bytes(plain))


def append_line(path: str | Path, obj: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(obj) + "\n")


# ---------------------------------------------------------------------------------------------------------- reading


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise MakemoreError(f"{path}: too large for a config file")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MakemoreError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MakemoreError(f"{path}: corrupt JSON ({error})") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        return load_safetensors_bytes(path.read_bytes())
    except FileNotFoundError:
        raise MakemoreError(f"{path}: missing") from None
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise MakemoreError(f"{path}: not a valid safetensors file ({str(error).splitlines()[0]})") from None


# ------------------------------------------------------------------------------------------------------------ runs


@dataclass
class RunSpec:
    """Everything in run.json, validated."""

    model_name: str
    model_config: Any
    train_config: dict[str, Any]
    vocab: Vocab
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model_name,
            "model_config": config_mod.to_dict(self.model_config),
            "train_config": self.train_config,
            "vocab": self.vocab.chars,
            "data": self.data,
        }


def parse_run_spec(obj: Any, where: str) -> RunSpec:
    if not isinstance(obj, dict):
        raise MakemoreError(f"{where}: expected a JSON object")
    version = obj.get("format_version")
    if not isinstance(version, int):
        raise MakemoreError(f"{where}: no format_version: not a makemore run")
    if version > FORMAT_VERSION:
        raise MakemoreError(f"{where}: run format {version} is newer than this makemore supports ({FORMAT_VERSION})")
    name = obj.get("model")
    if name not in MODELS:
        raise MakemoreError(f"{where}: unknown model {name!r}")
    model_config = config_mod.from_dict(MODELS[name].config_class, obj.get("model_config"), f"{where}: model_config")
    chars = obj.get("vocab")
    if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise MakemoreError(f"{where}: vocab must be a list of single characters")
    if len(set(chars)) != len(chars):
        raise MakemoreError(f"{where}: vocab has repeated characters")
    train_config, data = obj.get("train_config"), obj.get("data")
    if not isinstance(train_config, dict) or not isinstance(data, dict):
        raise MakemoreError(f"{where}: train_config and data must be JSON objects")
    return RunSpec(name, model_config, train_config, Vocab(chars), data)


def read_run_spec(run_dir: str | Path) -> RunSpec:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MakemoreError(f"{run_dir}: no such run directory")
    path = run_dir / RUN_FILE
    return parse_run_spec(read_json(path), str(path))


def load_weights(model: LanguageModel, path: str | Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Load weights into `model`, with one-line errors for missing keys and mismatched shapes."""
    tensors = load_tensors(path) if tensors is None else tensors
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise MakemoreError(
            f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in tensors.items():
        want = expected[name]
        if want.numel() > 0 and tensor.shape != want.shape:
            raise MakemoreError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(want.shape)}"
            )
        if tensor.dtype != want.dtype:
            raise MakemoreError(f"{path}: {name} has dtype {tensor.dtype}, the model expects {want.dtype}")
    model.load_state_dict(tensors)


def build_from_spec(spec: RunSpec, where: str = "run") -> LanguageModel:
    try:
        return build_model(spec.model_name, spec.model_config, spec.vocab.size)
    except (ValueError, RuntimeError) as error:
        raise MakemoreError(f"{where}: cannot build the model ({error})") from None


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RunSpec, LanguageModel]:
    """The best weights of a run, in eval mode."""
    run_dir = Path(run_dir)
    spec = read_run_spec(run_dir)
    model = build_from_spec(spec, str(run_dir))
    load_weights(model, run_dir / WEIGHTS_FILE)
    return spec, model.to(device).eval()


def read_split_items(run_dir: str | Path, split: str) -> list[str]:
    path = Path(run_dir) / f"{split}.txt"
    if not path.exists():
        return []
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]


def write_split_items(run_dir: str | Path, splits: dict[str, list[str]]) -> None:
    for name, items in splits.items():
        atomic_write(Path(run_dir) / f"{name}.txt", "".join(item + "\n" for item in items).encode("utf-8"))


# ---------------------------------------------------------------------------------------------- optimizer state


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


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}
