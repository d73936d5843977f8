"""The JSON API's request bodies (FastAPI reads them, /docs describes them). Types are checked here; limits and
meanings are checked by the same code as the CLI's, so errors read the same."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SampleRequest(BaseModel):
    """Run.generate settings. Items come back with their log-prob, status and nearest data item."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="a run's name, as GET /api/runs lists it")
    n: int = Field(20, description="how many items (at most 10,000)")
    seed: int | None = Field(None, description="seed; null: the server draws one and returns it")
    temperature: float = Field(1.0, description="< 1 sharper, > 1 more varied")
    top_k: int | None = Field(None, description="sample among the k most likely characters")
    top_p: float | None = Field(None, description="nucleus sampling: smallest set with probability >= p")
    prefix: str = ""
    suffix: str = ""
    contains: list[str] | str = Field(default_factory=list, description="every item contains each of these")
    regex: str | None = Field("", description="every item fully matches this regular expression")
    min_len: int | None = None
    max_len: int | None = None
    only_new: bool = Field(False, description="keep only items in none of the data splits")
    unique: bool = Field(False, description="no item twice")
    min_distance: int | None = Field(None, description="edit distance >= this to every data item")
    best: int | None = Field(None, description="exactly the K most probable items (best-first search); n is ignored")
    nearest: bool = Field(True, description="report each item's nearest data item and its edit distance")
    label: str | dict[str, float] | None = Field(
        None,
        description="labelled runs: draw given a label ('female'), or a blend ('female=0.7,male=0.3' or "
        '{"female": 0.7, "male": 0.3}); items then carry it. null: p(item) = sum over labels of '
        "p(label) p(item | label)",
    )
    blend: str = Field(
        "mixture",
        description="a blend of labels: mixture (the labels' next-character distributions mixed at every step) or "
        "embedding (one model reading the interpolated label embedding)",
    )
    label_guidance: float | None = Field(
        None, description="with one label: items more typical of it (0: exactly p(item | label); null: the default, 1)"
    )

    def task_args(self) -> dict[str, Any]:
        args = self.model_dump()
        args["contains"] = [args["contains"]] if isinstance(args["contains"], str) else args["contains"]
        args["regex"] = args["regex"] or ""
        return args


class ScoreRequest(BaseModel):
    """Run.score: total log-prob (nats) and per-character log-probs of each item."""

    model_config = ConfigDict(extra="forbid")

    run: str
    items: list[str]
    sort: bool = Field(False, description="most plausible (lowest NLL per token) first")
    label: str | None = Field(
        None, description="labelled runs: score given this label (or a blend 'female=0.7,male=0.3'); null: p(item)"
    )


class ClassifyRequest(BaseModel):
    """p(label | item) under a labelled run (Bayes' rule on p(item | label) and the labels' shares of train): the
    most probable label and every label's probability, as `makemore classify` gives them. Labelled runs' scores
    (POST /api/score) carry the same fields."""

    model_config = ConfigDict(extra="forbid")

    run: str
    items: list[str]


class TrainRequest(BaseModel):
    """A training job (makemore.train): a built-in dataset (or, as multipart form data, an uploaded file) and a
    model; or resume with a run's name."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(None, description="a built-in dataset (GET /api/datasets)")
    model: str | None = Field(
        None,
        description="a model of the registry (GET /api/models), or auto (makemore train's default: the best mix a "
        "time budget buys; settings: time_budget, seed); null: makemore.train's default",
    )
    name: str | None = Field(None, description="the new run's name (default: <data>-<model>)")
    preset: str | None = None
    mode: str = Field("auto", description="line, stream or auto")
    settings: dict[str, Any] = Field(
        default_factory=dict, description='training and model settings by name, e.g. {"max_steps": 500, "lr": 3e-3}'
    )
    resume: str | None = Field(None, description="continue this run where it stopped")
    labelled: bool = Field(
        False, description="the uploaded file has label<TAB>item lines: a run that generates given a label"
    )
