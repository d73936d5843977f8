"""The ONNX export: step.onnx (token ids + state -> logits + new state), score.onnx (token ids (B, T) -> logits
(B, T, V), rows starting with the boundary token 0) and initial_state.npz, each checked with onnxruntime against
the PyTorch model at several batch sizes and lengths before the folder is written. A labelled run's graphs also take
the label (B,) as their second input, and its initial states have a leading label axis (a recurrent model's start
state may depend on the label). The graphs: onnx_graphs.py (torch modules), onnx_recurrent.py, onnx_mix.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from makemore.data.lines import BOUNDARY
from makemore.errors import MakemoreError
from makemore.export.common import Exported, Source, by_label, folder_size, staged_folder
from makemore.export.numpy_export import check
from makemore.export.onnx_graphs import Graphs, Mix, Recurrent, batch_axes, graphs, with_label_token
from makemore.export.onnx_mix import join_mix
from makemore.export.onnx_recurrent import recurrent_graph

TOLERANCE = 1e-5  # nats per item, against `makemore score`
LOGIT_TOLERANCE = 1e-4  # per log-prob, against PyTorch, in the shape checks
OPSET = 18


class _Call(nn.Module):
    def __init__(self, g: Graphs, which: str):
        super().__init__()
        self.g, self.which = g, which

    def forward(self, *args):  # ids[, label], state...
        ids, label, state = (args[0], args[1], args[2:]) if self.g.labelled else (args[0], None, args[1:])
        return getattr(self.g, self.which)(ids, label, *state)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporter reports its progress and warnings on stdout/stderr and through logging: only cli/ prints."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)


def input_names(g: Graphs, which: str, state_names: list[str]) -> list[str]:
    return ["ids"] + (["label"] if g.labelled else []) + (state_names if which == "step" else [])


def export_graph(g: Graphs, which: str, path: Path, state_names: list[str]) -> None:
    if isinstance(g, Recurrent):
        return recurrent_graph(g.model, which, path, OPSET)
    if isinstance(g, Mix):  # each member's graph, joined
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:
            parts, counts = [], []
            for i, part in enumerate(g.parts):
                counts.append(len(part.initial_state(1)))
                parts.append(Path(folder) / f"member{i}.onnx")
                export_graph(part, which, parts[-1], [f"state{j}" for j in range(counts[-1])])
            log_linear = g.model.config.combine == "log-linear"
            return join_mix(parts, path, g.model.weights.tolist(), which, counts, log_linear)
    batch, time = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("time", min=1, max=4096)
    label = [torch.zeros(2, dtype=torch.long)] if g.labelled else []
    if which == "step":
        args = (torch.zeros(2, dtype=torch.long), *label, *g.initial_state(2))
        shapes = [{0: batch}] + [{0: batch}] * len(label) + [{axis: batch} for axis in batch_axes(g)]
        outputs = ["logits", *[f"new_{n}" for n in state_names]]
    else:
        args = (torch.zeros(2, 3, dtype=torch.long), *label)
        shapes, outputs = [{0: batch, 1: time}] + [{0: batch}] * len(label), ["logits"]
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                _Call(g, which), args, dynamo=True, input_names=input_names(g, which, state_names),
                output_names=outputs, dynamic_shapes=(tuple(shapes),), opset_version=OPSET, external_data=False,
            )  # fmt: skip
            program.save(str(path), external_data=False)
    except Exception as error:  # the exporter raises many kinds; the user gets one line
        raise MakemoreError(f"onnx export of the {which} function failed: {str(error).splitlines()[0][:200]}") from None


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would print (only cli/ prints)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify(g: Graphs, folder: Path, state_names: list[str], V: int) -> None:
    """Both graphs against PyTorch with onnxruntime: batch sizes 1, 3 and 8, lengths 1, 5 and past the context.
    Unlabelled rows hold items that follow one another (boundaries inside rows), and the step function is checked
    against the model's own step; a labelled row is one item under one label, checked against its forward."""
    step, score = session(folder / "step.onnx"), session(folder / "score.onnx")
    context = g.model.context_size or 8
    generator = torch.Generator().manual_seed(0)
    for B, T in ((1, 1), (3, 5), (8, context + 3)):
        idx = torch.randint(1, V, (B, T), generator=generator)
        idx[:, 0] = BOUNDARY
        label, feeds = None, {}
        if g.labelled:
            label = torch.randint(0, g.model.n_labels, (B,), generator=generator)
            feeds = {"label": label.numpy()}
        else:
            idx[B // 2 :, T // 2 :] *= torch.where(torch.rand(B - B // 2, T - T // 2, generator=generator) < 0.2, 0, 1)
        with torch.no_grad():
            want = F.log_softmax(g.model(with_label_token(idx, label, V))[0].double(), -1)
            got = F.log_softmax(torch.from_numpy(score.run(None, {"ids": idx.numpy(), **feeds})[0]).double(), -1)
            _close(got, want, f"score.onnx (batch {B}, length {T})")
            state = [s.numpy() for s in g.initial_state(B, label)]
            ref = g.model.init_state(B)
            for t in range(T):
                out = step.run(None, {"ids": idx[:, t].numpy(), **feeds, **dict(zip(state_names, state))})
                if label is None:
                    logits, ref = g.model.step(idx[:, t], ref)
                    expected = F.log_softmax(logits.double(), -1)
                else:
                    expected = want[:, t]
                _close(F.log_softmax(torch.from_numpy(out[0]).double(), -1), expected,
                       f"step.onnx (batch {B}, step {t + 1})")  # fmt: skip
                state = out[1:]


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    error = (got - want).abs().max().item()
    if not error <= LOGIT_TOLERANCE:
        raise MakemoreError(
            f"{what} differs from PyTorch by {error:.2e} (tolerance {LOGIT_TOLERANCE:g}); nothing written"
        )


def onnx_logprobs(folder: Path, source: Source) -> list[float]:
    """The scorer's log-probability of each check item (given its check label)."""
    scorer = session(folder / "score.onnx")

    def score(items: list[str], k: int | None) -> list[float]:
        totals = []
        for item in items:
            ids = [BOUNDARY] + source.spec.vocab.encode(item) + [BOUNDARY]
            feeds = {"ids": np.array([ids[:-1]], dtype=np.int64)}
            if k is not None:
                feeds["label"] = np.array([k], dtype=np.int64)
            logits = scorer.run(None, feeds)[0][0].astype(np.float64)
            logp = logits - logits.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            totals.append(float(np.sum(logp[np.arange(len(ids) - 1), ids[1:]])))
        return totals

    return by_label(source.check_items, source.check_labels, score)


def export_onnx(source: Source, out: Path) -> Exported:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise MakemoreError(f"onnx export needs {error.name}: pip install 'makemore[export]'") from None
    g = graphs(source.model)
    if g.labelled:  # each label's start, stacked: (n_labels, *the state of a batch of 1)
        per_label = [g.initial_state(1, torch.tensor([k])) for k in range(len(source.labels))]
        initial = [torch.stack(states) for states in zip(*per_label)]
    else:
        initial = g.initial_state(1)
    state_names = [f"state{i}" for i in range(len(initial))]
    with staged_folder(out) as stage:
        export_graph(g, "step", stage / "step.onnx", state_names)
        export_graph(g, "score", stage / "score.onnx", state_names)
        verify(g, stage, state_names, source.spec.vocab.size)
        items, want = source.check_items, source.logprobs(source.check_items, source.check_labels)
        check("onnx export", onnx_logprobs(stage, source), want, items, TOLERANCE)
        np.savez(stage / "initial_state.npz", **{n: s.numpy() for n, s in zip(state_names, initial)})
        config = source.describe()
        config["onnx"] = {
            "step": {
                "inputs": input_names(g, "step", state_names),
                "outputs": ["logits", *[f"new_{n}" for n in state_names]],
            },
            "score": {"inputs": input_names(g, "score", state_names), "outputs": ["logits"]},
            "state_batch_axes": batch_axes(g),
            "initial_state": "initial_state.npz: batch 1; repeat along each state's batch axis"
            + ("; a labelled export's states have a leading label axis: [k] is label k's" if g.labelled else ""),
        }
        (stage / "config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", "utf-8")
    return Exported(out, folder_size(out))
