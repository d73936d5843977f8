"""Run directories: written atomically, read without trusting anything (no pickle, JSON validated).

RUN/run.json                 format version, model name + config, train config, vocab, data provenance
RUN/model.safetensors        the best weights by val loss (what eval / sample / score use)
RUN/checkpoint.safetensors   latest weights + optimizer + RNG + sampler state, for exact resume; its JSON metadata
                             (step, best val loss, elapsed time, optimizer scalars) is in the same file's header,
                             so one rename replaces both (older runs kept it in RUN/checkpoint.json)
RUN/metrics.jsonl            one JSON object per log line
RUN/{train,val,test}.txt     the items of each split (line mode), so a run describes itself
RUN/samples.txt              samples drawn at the end of training
"""

from __future__ import annotations

import contextlib
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

from makemore import config as config_mod
from makemore.data.lines import Vocab
from makemore.errors import MakemoreError
from makemore.models import MODELS, LanguageModel, build_model
from makemore.models.mix import member_dir

FORMAT_VERSION = 1
CHECKPOINT_METADATA_KEY = "makemore.checkpoint"  # safetensors header entry holding the checkpoint's JSON
MAX_SAFETENSORS_HEADER = 100 << 20
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
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:  # name the file the user asked for, not the temp file beside it
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a run should be as readable as any file the user writes
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Tensors (and optional string metadata in the header) as one safetensors file, written atomically."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    atomic_write(path, save_safetensors_bytes(plain, metadata=metadata))


def append_line(path: str | Path, obj: dict) -> None:
    """Append one JSON line; if the write fails (disk full), cut the file back so no half line stays."""
    with open(path, "a", encoding="utf-8") as handle:
        size = handle.tell()
        try:
            handle.write(json.dumps(obj) + "\n")
            handle.flush()
        except OSError:
            with contextlib.suppress(OSError):
                handle.truncate(size)
            raise


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop log lines past `step` (written after the checkpoint a resume starts from) and unreadable (half-written)
    lines, so the log reads as if the run had never stopped. Returns how many lines were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            record_step = record.get("step", 0) if isinstance(record, dict) else None
            ok = isinstance(record_step, (int, float)) and record_step <= step
        except (UnicodeDecodeError, ValueError):
            ok = False
        if ok:
            kept.append(line + b"\n")
        else:
            dropped += 1
    if dropped:
        atomic_write(path, b"".join(kept))
    return dropped


# ---------------------------------------------------------------------------------------------------------- reading


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise MakemoreError(f"{path}: too large for a config file")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MakemoreError(f"{path}: missing") from None
    except IsADirectoryError:
        raise MakemoreError(f"{path}: is a directory, expected a JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MakemoreError(f"{path}: corrupt JSON ({error})") from None
    except RecursionError:
        raise MakemoreError(f"{path}: corrupt JSON (nested too deeply)") from None
    except OSError as error:
        raise MakemoreError(f"{path}: cannot read ({error.strerror or error})") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_tensors_with_metadata(path)[0]


def load_tensors_with_metadata(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and its header metadata. Only parses: safetensors has no code to run."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MakemoreError(f"{path}: missing") from None
    except IsADirectoryError:
        raise MakemoreError(f"{path}: is a directory, expected a safetensors file") from None
    except OSError as error:
        raise MakemoreError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        header_size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or header_size > min(len(data) - 8, MAX_SAFETENSORS_HEADER):
            raise ValueError("truncated or not a safetensors file")
        header = json.loads(data[8 : 8 + header_size].decode("utf-8"))
        metadata = (header.get("__metadata__") or {}) if isinstance(header, dict) else {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("its header metadata is not a map of strings")
        return load_safetensors_bytes(data), metadata
    except (SafetensorError, ValueError, RuntimeError, RecursionError, OverflowError) as error:
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
    # Items are lines of UTF-8 text: a line break or a lone surrogate can never be one of their characters.
    # (In a stream-mode run, one continuous text, line breaks are ordinary characters.)
    stream = isinstance(obj.get("data"), dict) and obj["data"].get("mode") == "stream"
    bad = [c for c in chars if (c.splitlines() != [c] and not stream) or 0xD800 <= ord(c) <= 0xDFFF]
    if bad:
        raise MakemoreError(f"{where}: vocab has characters no text line can hold: {bad[:5]!r}")
    train_config, data = obj.get("train_config"), obj.get("data")
    if not isinstance(train_config, dict) or not isinstance(data, dict):
        raise MakemoreError(f"{where}: train_config and data must be JSON objects")
    max_len = data.get("max_len")
    if max_len is not None and (type(max_len) is not int or not 1 <= max_len <= 1 << 20):
        raise MakemoreError(f"{where}: data.max_len must be an integer in 1..{1 << 20}, got {max_len!r}")
    labels = data.get("labels")
    if labels is not None and not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise MakemoreError(f"{where}: data.labels must be a non-empty list of label names")
    return RunSpec(name, model_config, train_config, Vocab(chars), data)


def read_run_spec(run_dir: str | Path) -> RunSpec:
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MakemoreError(f"{run_dir}: is a file, not a run directory (a run is the directory that train --out made)")
    if not run_dir.is_dir():
        raise MakemoreError(f"{run_dir}: no such run directory")
    path = run_dir / RUN_FILE
    if not path.exists():
        raise MakemoreError(
            f"{path}: missing, so {run_dir} is not a (complete) makemore run; if training was stopped while it "
            "was starting, start it again with --force"
        )
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
                f"{path}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(want.shape)} "
                f"(from run.json's config and its vocabulary of {getattr(model, 'vocab_size', '?')} symbols)"
            )
        if tensor.dtype != want.dtype:
            raise MakemoreError(f"{path}: {name} has dtype {tensor.dtype}, the model expects {want.dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise MakemoreError(f"{path}: {name} holds NaN or infinite values")
    try:
        model.load_state_dict(tensors)
    except (RuntimeError, ValueError) as error:
        raise MakemoreError(f"{path}: weights do not fit the model ({str(error).splitlines()[0]})") from None


def build_from_spec(spec: RunSpec, where: str = "run", run_dir: str | Path | None = None) -> LanguageModel:
    """The (unloaded) model a run spec describes. With `run_dir`, a model made of members (a mix) builds each from
    the run.json under RUN/members/<i>/ (their weights are in the mix's own model.safetensors)."""

    def load_member(index: int) -> LanguageModel:
        place = member_dir(run_dir, index)
        member = read_run_spec(place)
        if member.vocab.size != spec.vocab.size:
            raise ValueError(f"member {index} has {member.vocab.size} symbols, the mix {spec.vocab.size}")
        return build_from_spec(member, str(place), place)

    labels, mode = spec.data.get("labels") or [], spec.data.get("label_mode") or "add"
    try:
        member_loader = load_member if run_dir else None
        return build_model(spec.model_name, spec.model_config, spec.vocab.size, member_loader, len(labels), mode)
    except (ValueError, RuntimeError) as error:
        raise MakemoreError(f"{where}: cannot build the model ({error})") from None


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RunSpec, LanguageModel]:
    """The best weights of a run, in eval mode."""
    run_dir = Path(run_dir)
    spec = read_run_spec(run_dir)
    model = build_from_spec(spec, str(run_dir / RUN_FILE), run_dir)
    load_weights(model, run_dir / WEIGHTS_FILE)
    return spec, model.to(device).eval()


def read_split_items(run_dir: str | Path, split: str) -> list[str]:
    path = Path(run_dir) / f"{split}.txt"
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise MakemoreError(f"{path}: not valid UTF-8 (byte {error.start}); the run directory is corrupt") from None
    except OSError as error:
        raise MakemoreError(f"{path}: cannot read ({error.strerror or error})") from None
    if "\x00" in text:
        raise MakemoreError(f"{path}: contains NUL bytes; the run directory is corrupt")
    return [line for line in text.split("\n") if line]


def write_split_items(run_dir: str | Path, splits: dict[str, list[str]]) -> None:
    for name, items in splits.items():
        atomic_write(Path(run_dir) / f"{name}.txt", "".join(item + "\n" for item in items).encode("utf-8"))
