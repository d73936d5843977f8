"""The HTML export: one page, no network, the weights embedded, a JavaScript sampler (templates/families.js: the
model families; templates/sampler.js: sampling, labels and the page). A labelled run's page has a label selector
(any label: p(item), or one label; the URL may also ask for a blend, ?label=female=0.7,male=0.3).

The weights travel as one gzip stream (each tensor's bytes stored plane by plane: the sign/exponent bytes of a
float compress, the low mantissa bytes do not), base85 in a <script> element; the page inflates them with the
browser's DecompressionStream and computes in float64. float32 weights give makemore's log-probabilities to about
1e-6; float16 weights halve the page, at ~1e-3 nats per item (measured: at most 1.3e-3 on 300 val items of the
gru and transformer defaults). `auto` keeps float32 when the page fits.
"""

from __future__ import annotations

import gzip
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from makemore.errors import MakemoreError
from makemore.export.common import Exported, Source
from makemore.export.families import describe, model_name
from makemore.export.numpy_export import template
from makemore.runs import checkpoint as ckpt

PRECISIONS = ("auto", "float32", "float16")
MAX_BYTES = 2_000_000
# base85 (5 characters per 4 bytes; base64 takes 6 per 4 and would push the gru/lstm defaults over 2 MB): printable
# ASCII without the characters that could end or confuse the <script> element or the HTML around it
ALPHABET = bytes(c for c in range(33, 127) if chr(c) not in "\"&'<>\\`$%")
assert len(ALPHABET) == 85


def base85(data: bytes) -> str:
    """Big-endian groups of 4 bytes (the last zero-padded) as 5 digits each, most significant first."""
    padded = data + b"\0" * (-len(data) % 4)
    groups = np.frombuffer(padded, dtype=">u4").astype(np.int64)
    digits = np.stack([groups // 85**k % 85 for k in range(4, -1, -1)], axis=1)
    return np.frombuffer(ALPHABET, dtype=np.uint8)[digits].tobytes().decode("ascii")


def pack(arrays: dict[str, np.ndarray], precision: str) -> tuple[dict[str, dict[str, Any]], bytes]:
    """(manifest name -> dtype, shape, offset; gzip of the planes of all tensors)."""
    manifest, chunks, offset = {}, [], 0
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype == np.float32:  # network weights: the chosen precision
            array = array.astype(np.float16 if precision == "float16" else np.float32)
        elif array.dtype == np.float64:  # probabilities (n-gram shares, back-off weights): float32 keeps 1e-7
            array = array.astype(np.float32)
        elif array.dtype == np.int64 and name.rsplit(".", 1)[-1] != "ctx_keys":  # small integers: the narrowest type
            top = int(np.abs(array).max()) if array.size else 0
            low = int(array.min()) if array.size else 0
            kind = np.uint8 if low >= 0 and top < 256 else np.int16 if top < 2**15 else np.int32
            array = array.astype(kind)
        array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))
        size = array.dtype.itemsize
        planes = array.reshape(-1).view(np.uint8).reshape(-1, size).T.tobytes()
        manifest[name] = {"dtype": str(array.dtype), "shape": list(array.shape), "offset": offset}
        chunks.append(planes)
        offset += len(planes)
    return manifest, gzip.compress(b"".join(chunks), compresslevel=9, mtime=0)


def render(source: Source, precision: str, title: str | None) -> bytes:
    spec, arrays = describe(source.model)
    manifest, blob = pack(arrays, precision)
    config = source.describe()
    parameters = source.model.parameter_count()
    name = model_name(source.model)
    size = f"{parameters:,} parameters" if parameters else f"{sum(a.size for a in arrays.values()):,} table entries"
    labels = f", labels {', '.join(source.labels)}" if source.labels else ""
    config["about"] = (
        f"{name} model, {size}, {len(source.spec.vocab.chars)} characters{labels}; weights in {precision}. "
        "Everything runs in this page: nothing is sent anywhere."
    )
    config["tensors"] = manifest
    config["weights"] = {"bytes": len(blob), "alphabet": ALPHABET.decode("ascii")}
    text = json.dumps(config, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")
    page = template("page.html").decode("utf-8")
    for key, value in (
        ("__TITLE__", html.escape(title or f"{source.run_dir.name}: make more")),
        ("__CONFIG__", text),
        ("__WEIGHTS__", base85(blob)),
        ("__FAMILIES_JS__", template("families.js").decode("utf-8")),
        ("__SAMPLER_JS__", template("sampler.js").decode("utf-8")),
    ):
        page = page.replace(key, value)
    return page.encode("utf-8")


def export_html(
    source: Source, out: Path, precision: str = "auto", max_bytes: int = MAX_BYTES, title: str | None = None
) -> Exported:
    if precision not in PRECISIONS:
        raise MakemoreError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    notes = []
    page = render(source, "float32" if precision == "auto" else precision, title)
    if precision == "auto" and len(page) > max_bytes:
        page = render(source, "float16", title)
        notes.append(
            f"float32 weights would make the page over {max_bytes / 1e6:g} MB: stored as float16 (log-probs to ~1e-3 "
            "nats of makemore's; --precision float32 --max-size 4 keeps them exact)"
        )
    if len(page) > max_bytes:
        raise MakemoreError(
            f"the page would be {len(page) / 1e6:.1f} MB, over --max-size {max_bytes / 1e6:g} MB "
            f"({source.model.parameter_count():,} parameters): export a smaller model or raise --max-size"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write(out, page)
    return Exported(out, len(page), notes)
