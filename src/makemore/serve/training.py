"""What POST /api/train needs before a job is queued: the request (JSON, or multipart with an uploaded file), the
upload checked as the CLI checks a file, the settings checked as `makemore train` checks its flags, and a name and
directory for the new run. The job itself runs `makemore.train` (jobs.py)."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from makemore.data.corpus import MODES, detect_mode
from makemore.data.labels import LABELLED_DATASETS, is_labelled_dataset, labelled_dataset_text, parse_labelled
from makemore.data.lines import BUILTIN_DATASETS, DEFAULT_DATASET, builtin_text, parse_items, read_text
from makemore.errors import MakemoreError
from makemore.jobs import auto
from makemore.jobs.train_settings import fresh_configs, trainable_model_name
from makemore.models import DEFAULT_MODEL, MODELS
from makemore.serve.runs import Conflict, RunTable, TooLarge, check_name
from makemore.serve.schemas import TrainRequest

UPLOADS = "uploads"  # inside the runs directory: the files uploaded runs were trained on (stream runs re-read them)
MAX_ITEM_LEN = 256  # as `makemore train --max-item-len`'s default


AUTO_SUMMARY = (
    "The best model a time budget buys (makemore train's default): an n-gram, then neural models, mixed with "
    "weights fitted on val. Settings: time_budget (seconds), seed."
)


def models() -> list[dict[str, Any]]:
    """The registry's models, after `auto` (makemore train's default, so the page's; `default_model` marks what an
    API request without a model trains: makemore.train's default)."""
    registry = [
        {
            "name": name,
            "summary": spec.summary,
            "trainable": not spec.made_by,
            "presets": {key: preset.summary for key, preset in spec.presets.items()},
            "default": False,
            "default_model": name == DEFAULT_MODEL,
        }
        for name, spec in MODELS.items()
    ]
    auto_model = {"name": auto.AUTO_MODEL, "summary": AUTO_SUMMARY, "trainable": True, "presets": {}}
    return [{**auto_model, "default": True, "default_model": False}] + registry


@functools.cache
def datasets() -> list[dict[str, Any]]:
    """The built-in datasets; the labelled ones (label<TAB>item) train labelled runs."""
    plain = [
        {
            "name": name,
            "description": description,
            "items": len(parse_items(builtin_text(name), name, 1 << 20)),
            "default": name == DEFAULT_DATASET,
            "labelled": False,
        }
        for name, description in BUILTIN_DATASETS.items()
    ]
    labelled = [
        {
            "name": name,
            "description": description,
            "items": len(parse_labelled(labelled_dataset_text(name), name, 1 << 20)[0]),
            "default": False,
            "labelled": True,
            "labels": sorted(set(parse_labelled(labelled_dataset_text(name), name, 1 << 20)[1])),
        }
        for name, description in LABELLED_DATASETS.items()
    ]
    return plain + labelled


async def read_request(request: Request, max_upload: int) -> tuple[TrainRequest, tuple[str, bytes] | None]:
    """The job's settings and, from a multipart form, the uploaded file (name, bytes)."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        try:
            return TrainRequest.model_validate_json(await request.body()), None
        except ValidationError as error:
            raise MakemoreError(one_line(error)) from None
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_upload + (1 << 16):
        raise TooLarge(f"the upload is {size(int(declared))}, over the {size(max_upload)} limit")
    form = await request.form(max_files=1, max_fields=20)
    fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
    if "settings" in fields:
        try:
            fields["settings"] = json.loads(fields["settings"])
        except ValueError:
            raise MakemoreError("settings: not valid JSON") from None
    try:
        body = TrainRequest.model_validate(fields)
    except ValidationError as error:
        raise MakemoreError(one_line(error)) from None
    file = form.get("file")
    if file is None or isinstance(file, str):
        return body, None
    data = await file.read(max_upload + 1)
    if len(data) > max_upload:
        raise TooLarge(f"the upload is over the {size(max_upload)} limit")
    return body, (file.filename or "upload.txt", data)


def size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{count:,} bytes"


def one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    return f"{where}: {first['msg']}" if where else first["msg"]


def prepare(
    table: RunTable, body: TrainRequest, upload: tuple[str, bytes] | None, busy: set[Path]
) -> tuple[dict[str, Any], str, Path]:
    """(`train` keyword arguments, the run's name, its directory), checked: a MakemoreError says what is wrong."""
    if body.resume is not None:
        given = [k for k in ("dataset", "name", "preset") if getattr(body, k)] + (["file"] if upload else [])
        if given:
            raise MakemoreError(f"{', '.join(given)}: for a fresh run; a resumed run keeps its data and settings")
        path = table.path(body.resume)
        if path in busy:
            raise Conflict(f"run {body.resume!r} is being trained already")
        return {"resume": str(path), "model": body.model, "samples": 20, **body.settings}, body.resume, path
    if table.runs_dir is None:
        raise MakemoreError("this server has no runs directory to train into (start it with makemore serve DIR)")
    if body.mode not in MODES:
        raise MakemoreError(f"mode must be one of {', '.join(MODES)}, got {body.mode!r}")
    dataset = None if upload is not None else body.dataset or DEFAULT_DATASET
    if upload is not None and body.dataset:
        raise MakemoreError("give a dataset or upload a file, not both")
    if dataset is not None and dataset not in BUILTIN_DATASETS and not is_labelled_dataset(dataset):
        known = ", ".join([*BUILTIN_DATASETS, *LABELLED_DATASETS])
        raise MakemoreError(f"unknown dataset {dataset!r}; choose from {known}")
    labelled = body.labelled or (dataset is not None and is_labelled_dataset(dataset))
    if body.labelled and dataset is not None and not is_labelled_dataset(dataset):
        labelled_names = ", ".join(LABELLED_DATASETS)
        raise MakemoreError(f"--labelled: {dataset} has no labels (labelled built-ins: {labelled_names})")
    if labelled and body.mode == "stream":
        raise MakemoreError("--labelled is for line mode (one item per line); stream-mode flags do not apply")
    model = body.model if body.model == auto.AUTO_MODEL else trainable_model_name(body.model)
    if model == auto.AUTO_MODEL:  # as makemore.train checks them, before the job waits in the queue
        if body.preset:
            raise MakemoreError("--preset: --model auto chooses the models' settings; pick a --model to set them")
        auto.check_settings(body.settings)
    else:
        fresh_configs(model, body.preset, dict(body.settings))  # unknown or bad settings fail now, not in the queue
    if upload is not None:
        source, stem = save_upload(table.runs_dir, *upload, body.mode, labelled)
    else:
        source, stem = dataset, dataset
    name = check_name(body.name) if body.name else free_name(table, f"{stem}-{model}")
    path = table.runs_dir / name
    if name in table.scan(fresh=True) or path.exists():
        raise Conflict(f"run {name!r} exists already; choose another name, or resume it")
    kwargs = {"input": source, "model": model, "out": str(path), "preset": body.preset, "mode": body.mode}
    if upload is not None and labelled:
        kwargs["labelled"] = True  # (a labelled built-in is known by its name)
    return {**kwargs, "samples": 20, **body.settings}, name, path


def free_name(table: RunTable, base: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")[:56] or "run"
    taken = set(table.scan(fresh=True))
    for number in range(1, 10_000):
        name = base if number == 1 else f"{base}-{number}"
        if name not in taken and not (table.runs_dir / name).exists():
            return name
    raise Conflict(f"no free run name like {base!r}; give one")


def save_upload(runs_dir: Path, filename: str, data: bytes, mode: str, labelled: bool = False) -> tuple[str, str]:
    """Keep the uploaded file in RUNS_DIR/uploads/ after checking it as `makemore train` checks its input
    (UTF-8, no NUL bytes, in line mode each line's length, and with `labelled` its label<TAB>item lines); returns
    (its path, a name stem for the run)."""
    shown = Path(filename.replace("\\", "/")).name[:80] or "upload.txt"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(shown).stem).strip("-")[:40] or "upload"
    folder = runs_dir / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:10]}.txt"
    path.write_bytes(data)
    try:
        text = read_text(path)
        if labelled:
            parse_labelled(text, shown, MAX_ITEM_LEN)
        elif (mode if mode != "auto" else detect_mode(path, MAX_ITEM_LEN)[0]) == "line":
            parse_items(text, shown, MAX_ITEM_LEN)
    except MakemoreError as error:
        path.unlink(missing_ok=True)
        raise MakemoreError(str(error).replace(str(path), shown)) from None
    return str(path), stem
