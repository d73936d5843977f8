"""Where training runs: the device, autocast for the chosen dtype, fp16's gradient scaler, and the C allocator."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Any

import torch

from makemore.errors import MakemoreError


def resolve_device(name: str) -> torch.device:
    """A device name (or "auto") as a torch.device that is there; anything else is a one-line error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MakemoreError(f"--device: unknown device {name!r} (cpu, cuda, mps or auto)") from None
    if device.type not in ("cpu", "cuda", "mps"):  # e.g. "meta" parses, but holds no data to train on
        raise MakemoreError(f"--device: unsupported device {name!r} (cpu, cuda, mps or auto)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MakemoreError("--device cuda: no CUDA GPU is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MakemoreError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPUs here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MakemoreError("--device mps: no Apple GPU is available here")
    if device.type == "cpu" and device.index not in (None, 0):
        raise MakemoreError(f"--device {name}: the CPU is device cpu")
    return device


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Make glibc keep the large blocks a training step frees for the next step, instead of handing them back to
    the kernel and faulting fresh zeroed pages in again. By default it serves blocks over 128 KB with mmap until its
    adaptive threshold has seen enough frees: a small model's first few hundred CPU steps ran ~25% slower than
    the rest (Tiny Shakespeare, the stream preset: 15.2k against 21.1k tokens/s), which also made a time budget
    become a schedule ~20% too short (it is timed over those steps). Only speed changes: every number is the same.
    The memory kept is at most the largest step's. Linux with glibc only; elsewhere nothing happens. True if set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl): leave it be
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # 32 MB: glibc's largest mmap threshold (larger blocks still come from mmap); trim only past 1 GB of free top
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16/fp16 on the device; fp32: nothing."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception as one short line (compiler errors can run to pages)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def make_grad_scaler(device: torch.device, dtype: str) -> Any:
    """A GradScaler for fp16 (its narrow range underflows small gradients); None for fp32 and bf16.

    torch.amp.GradScaler also runs on CPU, so the fp16 path (scale, unscale before clipping, skipped steps) is the
    same code on every device and the CPU tests reach it.
    """
    if dtype != "fp16":
        return None
    try:
        return torch.amp.GradScaler(device.type)
    except (AttributeError, RuntimeError, TypeError):  # older PyTorch: CUDA-only scaler
        return torch.cuda.amp.GradScaler() if device.type == "cuda" else None
