"""What a sampling or scoring request does, as plain functions of a run table and a dict of arguments. They run in
the server's worker processes (or, with workers=0, in a thread of the server) and return plain data."""

from __future__ import annotations

import math
from typing import Any

from makemore.errors import MakemoreError
from makemore.serve.runs import RunTable

MAX_N = 10_000  # items per request (the Python API allows more; a page and a shared server should not)
MAX_SCORE_ITEMS = 10_000
MAX_TEXT = 200  # characters of a prefix, suffix, contains or regex


def check_text(value: str, name: str) -> None:
    if len(value) > MAX_TEXT:
        raise MakemoreError(f"{name} is {len(value):,} characters long; the limit is {MAX_TEXT}")


def sample(table: RunTable, args: dict[str, Any]) -> dict[str, Any]:
    """`Run.generate` with the request's settings: {"items": [...], "note": ..., "drawn": ...}."""
    run = table.load(args["run"])
    n = args["n"]
    if n > MAX_N:
        raise MakemoreError(f"n must be <= {MAX_N:,}, got {n}")
    for name in ("prefix", "suffix", "regex"):
        check_text(args[name], name)
    for text in args["contains"]:
        check_text(text, "contains")
    best = args.get("best")
    if best is not None and best > MAX_N:
        raise MakemoreError(f"best must be <= {MAX_N:,}, got {best}")
    sampling = {} if best is not None else {"temperature": args["temperature"], "seed": args["seed"]}
    if best is None:
        sampling.update(top_k=args["top_k"], top_p=args["top_p"])
    elif args["top_k"] is not None or args["top_p"] is not None or args["temperature"] != 1.0:
        raise MakemoreError("best K returns the K most probable items; it takes no temperature, top_k or top_p")
    if args.get("label") is not None or args.get("label_guidance") is not None:  # (else: as an unlabelled request)
        sampling.update(label=args["label"], blend=args.get("blend", "mixture"), label_guidance=args["label_guidance"])
    result = run.generate(
        n,
        best=best,
        prefix=args["prefix"],
        suffix=args["suffix"],
        contains=[c for c in args["contains"] if c],
        regex=args["regex"] or None,
        min_len=1 if args["min_len"] is None else args["min_len"],
        max_len=args["max_len"],
        only_new=args["only_new"],
        unique=args["unique"],
        min_distance=args["min_distance"],
        nearest=args["nearest"],
        **sampling,
    )
    return {"items": [plain(item) for item in result.items], "note": result.note, "drawn": result.drawn}


def score(table: RunTable, args: dict[str, Any]) -> dict[str, Any]:
    """`Run.score` of the items given: total log-prob and per-character log-probs of each, in the order given (or
    most plausible first with sort). A labelled run's items also carry `label` (the most probable) and `probs`
    (p(label | item) of every label), as `classify` gives them."""
    run = table.load(args["run"])
    items = args["items"]
    check_items(items, "score")
    for number, item in enumerate(items, start=1):
        if not item:
            raise MakemoreError("cannot score an empty string")
        unknown = run.vocab.unknown(item)
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:10])
            raise MakemoreError(
                f"item {number}: item {item[:40]!r} has characters not in the model's vocabulary: {shown}"
            )
    label = args.get("label")
    results = run.score(items, sort=args["sort"], **({"label": label} if label is not None else {}))
    classified = {c["item"]: c for c in run.classify(items)} if run.labels else {}
    for result in results:
        result["status"] = run.novelty.status(result["item"])
        if classified:
            result.update(label=classified[result["item"]]["label"], probs=classified[result["item"]]["probs"])
    return {"items": [plain(result) for result in results]}


def classify(table: RunTable, args: dict[str, Any]) -> dict[str, Any]:
    """`Run.classify`: each item's most probable label and p(label | item) of every label (`makemore classify`)."""
    run = table.load(args["run"])
    check_items(args["items"], "classify")
    return {"items": [plain(result) for result in run.classify(args["items"])]}


def check_items(items: list[str], what: str) -> None:
    if not items:
        raise MakemoreError(f"nothing to {what}: give items")
    if len(items) > MAX_SCORE_ITEMS:
        raise MakemoreError(f"at most {MAX_SCORE_ITEMS:,} items per request, got {len(items):,}")


def plain(item: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: NaN and infinities become None (JSON has neither), log-probs rounded to what a page can show."""
    out: dict[str, Any] = {}
    for key, value in item.items():
        if isinstance(value, float):
            value = round(value, 6) if math.isfinite(value) else None
        elif key == "char_logprobs":
            value = [[c, round(lp, 5) if math.isfinite(lp) else None] for c, lp in value]
        elif key == "probs":
            value = {label: round(p, 6) for label, p in value.items()}
        out[key] = value
    return out


def load(table: RunTable, args: dict[str, Any]) -> None:
    """Load a run (and its novelty index) ahead of the work on it: a large run takes longer to load than a request
    may take."""
    table.load(args["run"])


TASKS = {"sample": sample, "score": score, "classify": classify, "load": load}
