"""The ONNX export: step.onnx (token ids + state -> logits + new state), score.onnx (token ids (B, T) -> logits
(B, T, V), rows starting with the boundary token 0) and initial_state.npz, each checked with onnxruntime against
the PyTorch model at several batch sizes and lengths before the folder is written.

Per family the graphs are small torch modules over the package's own layers (`STEPS`), written so that the batch
and time dimensions stay symbolic: the recurrent state's batch is its second axis, the Transformer's step state is
its rolling window of the last block_size - 1 tokens (left-padded with the boundary; the same logits as the KV
cache, and the sliding window past block_size needs no branch), and "where each item starts" is a masked max rather
than cummax, which ONNX lacks.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from makemore.data.lines import BOUNDARY
from makemore.errors import MakemoreError
from makemore.export.common import Exported, Source, folder_size, staged_folder
from makemore.export.families import model_name
from makemore.export.numpy_export import check, package_logprobs
from makemore.export.onnx_recurrent import recurrent_graph
from makemore.models import LanguageModel
from makemore.models.transformer import visible_keys

TOLERANCE = 1e-5  # nats per item, against `makemore score`
LOGIT_TOLERANCE = 1e-4  # per log-prob, against PyTorch, in the shape checks
OPSET = 18


def starts_of(idx: torch.Tensor) -> torch.Tensor:
    """segment_starts without cummax: (B, T) -> index of the latest boundary at or before each position."""
    t = torch.arange(idx.size(1), device=idx.device)
    marks = torch.where(idx == BOUNDARY, t, torch.zeros_like(t))  # (B, T)
    seen = t[None, :] <= t[:, None]  # (T, T): key j at or before query i
    return torch.where(seen[None], marks[:, None, :], torch.zeros_like(marks)[:, None, :]).amax(-1)


class Graphs(nn.Module):
    """One family's step and score functions over a package model. State tensors have the batch on `batch_axis`."""

    batch_axis = 0

    def __init__(self, model: LanguageModel):
        super().__init__()
        self.model = model

    def initial_state(self, batch: int) -> list[torch.Tensor]:
        return []

    def step(self, ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def score(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)[0]


class Stateless(Graphs):  # bigram
    def step(self, ids, *state):
        return (self.model(ids[:, None])[0][:, 0],)


class Context(Graphs):  # mlp: the state is the rolling context
    def initial_state(self, batch):
        return [torch.zeros(batch, self.model.context_size, dtype=torch.long)]

    def step(self, ids, context):
        context = torch.cat([context[:, 1:], ids[:, None]], dim=1)
        return self.model(context)[0][:, -1], context


class Recurrent(Graphs):
    batch_axis = 1

    def initial_state(self, batch):
        state = self.model.init_state(batch)
        return [s.detach() for s in (state if isinstance(state, tuple) else (state,))]

    def step(self, ids, *state):
        logits, new = self.model.step(ids, state if len(state) == 2 else state[0])
        return (logits, *(new if isinstance(new, tuple) else (new,)))


class WaveNet(Graphs):
    def initial_state(self, batch):
        return [q.detach() for q in self.model.init_state(batch)["queues"]]

    def step(self, ids, *queues):
        empty = [q.detach() for q in self.model.init_state(1)["empty"]]
        logits, state = self.model.step(ids, {"queues": list(queues), "empty": empty})
        return (logits, *state["queues"])

    def score(self, idx):
        m = self.model  # WaveNet.forward with starts_of for segment_starts
        T = idx.size(1)
        idx = F.pad(idx, (1, 0), value=BOUNDARY)
        starts, t = starts_of(idx), torch.arange(T + 1)
        h = m.wte(idx)
        for layer in range(m.config.n_layer):
            d = m.dilation(layer)
            before_start = h[:, :1]
            shifted = torch.cat([before_start.expand(-1, d, -1), h], dim=1)[:, : T + 1]
            before = torch.where((t - d >= starts)[..., None], shifted, before_start)
            h = m._level(layer, torch.cat([before, h], dim=-1), None)
        return m.lm_head(h[:, 1:])


class Transformer(Graphs):
    """Rolling window state; logits of the window read from position 0 (what the package's step computes)."""

    def initial_state(self, batch):
        return [torch.zeros(batch, self.model.config.block_size - 1, dtype=torch.long)]

    def window_logits(self, window: torch.Tensor) -> torch.Tensor:
        m = self.model
        starts = starts_of(window)
        positions = torch.arange(window.size(1)) - starts
        return m._decode(m.wte(window) + m.wpe(positions), visible_keys(starts), None)[:, -1]

    def step(self, ids, window):
        window = torch.cat([window, ids[:, None]], dim=1)
        return self.window_logits(window), window[:, 1:]

    def score(self, idx):
        B, T = idx.shape
        bs = self.model.config.block_size  # every position: its last block_size tokens, boundary-padded
        padded = torch.cat([torch.zeros(B, bs - 1, dtype=idx.dtype), idx], dim=1)
        windows = padded.unfold(1, bs, 1).reshape(-1, bs)  # (B * T, bs)
        return self.window_logits(windows).view(B, T, -1)


class Mix(Graphs):
    def __init__(self, model):
        super().__init__(model)
        self.parts = nn.ModuleList(graphs(m) for m in model.members)
        if any(isinstance(p, Recurrent) for p in self.parts):
            raise MakemoreError("onnx export of a mix with rnn/gru/lstm members is not supported: export the members")
        self.sizes = [len(p.initial_state(1)) for p in self.parts]
        # the weights as constants of the graph (a buffer's values would be data to torch.export)
        self.log_weights = [math.log(w) if w > 0 else None for w in model.weights.tolist()]

    def initial_state(self, batch):
        return [s for p in self.parts for s in p.initial_state(batch)]

    def _combine(self, logits):
        terms = [F.log_softmax(x.float(), -1) + w for x, w in zip(logits, self.log_weights) if w is not None]
        return torch.logsumexp(torch.stack(terms), dim=0)

    def step(self, ids, *state):
        outs, i = [], 0
        for part, n in zip(self.parts, self.sizes):
            outs.append(part.step(ids, *state[i : i + n]))
            i += n
        return (self._combine([o[0] for o in outs]), *[s for o in outs for s in o[1:]])

    def score(self, idx):
        return self._combine([p.score(idx) for p in self.parts])


STEPS: dict[str, type[Graphs]] = {
    "bigram": Stateless,
    "mlp": Context,
    "wavenet": WaveNet,
    "rnn": Recurrent,
    "gru": Recurrent,
    "lstm": Recurrent,
    "transformer": Transformer,
    "mix": Mix,
}  # the n-gram: see families.NGRAM_ONNX


def graphs(model: LanguageModel) -> Graphs:
    return STEPS[model_name(model)](model).eval()


def batch_axes(g: Graphs) -> list[int]:
    if isinstance(g, Mix):
        return [a for p in g.parts for a in batch_axes(p)]
    return [g.batch_axis] * len(g.initial_state(1))


class _Call(nn.Module):
    def __init__(self, g: Graphs, which: str):
        super().__init__()
        self.g, self.which = g, which

    def forward(self, *args):
        return getattr(self.g, self.which)(*args)


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


def export_graph(g: Graphs, which: str, path: Path, state_names: list[str]) -> None:
    if isinstance(g, Recurrent):
        return recurrent_graph(g.model, which, path, OPSET)
    batch, time = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("time", min=1, max=4096)
    if which == "step":
        args = (torch.zeros(2, dtype=torch.long), *g.initial_state(2))
        names = ["ids", *state_names]
        shapes = [{0: batch}] + [{axis: batch} for axis in batch_axes(g)]
        outputs = ["logits", *[f"new_{n}" for n in state_names]]
    else:
        args = (torch.zeros(2, 3, dtype=torch.long),)
        names, shapes, outputs = ["ids"], [{0: batch, 1: time}], ["logits"]
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                _Call(g, which), args, dynamo=True, input_names=names, output_names=outputs,
                dynamic_shapes=(tuple(shapes),), opset_version=OPSET, external_data=False,
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
    """Both graphs against PyTorch with onnxruntime: batch sizes 1, 3 and 8, lengths 1, 5 and past the context."""
    step, score = session(folder / "step.onnx"), session(folder / "score.onnx")
    context = g.model.context_size or 8
    generator = torch.Generator().manual_seed(0)
    for B, T in ((1, 1), (3, 5), (8, context + 3)):
        idx = torch.randint(1, V, (B, T), generator=generator)
        idx[:, 0] = BOUNDARY
        idx[B // 2 :, T // 2 :] = (
            torch.where(torch.rand(B - B // 2, T - T // 2, generator=generator) < 0.2, 0, 1) * idx[B // 2 :, T // 2 :]
        )  # some boundaries inside rows: items that follow one another
        with torch.no_grad():
            want = F.log_softmax(g.model(idx)[0].double(), -1)
            got = F.log_softmax(torch.from_numpy(score.run(None, {"ids": idx.numpy()})[0]).double(), -1)
            _close(got, want, f"score.onnx (batch {B}, length {T})")
            state = [s.numpy() for s in g.initial_state(B)]
            ref = g.model.init_state(B)
            for t in range(T):
                out = step.run(None, {"ids": idx[:, t].numpy(), **dict(zip(state_names, state))})
                logits, ref = g.model.step(idx[:, t], ref)
                _close(F.log_softmax(torch.from_numpy(out[0]).double(), -1), F.log_softmax(logits.double(), -1),
                       f"step.onnx (batch {B}, step {t + 1})")  # fmt: skip
                state = out[1:]


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    error = (got - want).abs().max().item()
    if not error <= LOGIT_TOLERANCE:
        raise MakemoreError(
            f"{what} differs from PyTorch by {error:.2e} (tolerance {LOGIT_TOLERANCE:g}); nothing written"
        )


def onnx_logprobs(folder: Path, items: list[str], source: Source) -> list[float]:
    scorer = session(folder / "score.onnx")
    totals = []
    for item in items:
        ids = [BOUNDARY] + source.spec.vocab.encode(item) + [BOUNDARY]
        logits = scorer.run(None, {"ids": np.array([ids[:-1]], dtype=np.int64)})[0][0].astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        totals.append(float(np.sum(logp[np.arange(len(ids) - 1), ids[1:]])))
    return totals


def export_onnx(source: Source, out: Path) -> Exported:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise MakemoreError(f"onnx export needs {error.name}: pip install 'makemore[export]'") from None
    g = graphs(source.model)
    initial = g.initial_state(1)
    state_names = [f"state{i}" for i in range(len(initial))]
    with staged_folder(out) as stage:
        export_graph(g, "step", stage / "step.onnx", state_names)
        export_graph(g, "score", stage / "score.onnx", state_names)
        verify(g, stage, state_names, source.spec.vocab.size)
        items = source.check_items
        check("onnx export", onnx_logprobs(stage, items, source), package_logprobs(source, items), items, TOLERANCE)
        np.savez(stage / "initial_state.npz", **{n: s.numpy() for n, s in zip(state_names, initial)})
        config = source.describe()
        config["onnx"] = {
            "step": {"inputs": ["ids", *state_names], "outputs": ["logits", *[f"new_{n}" for n in state_names]]},
            "score": {"inputs": ["ids"], "outputs": ["logits"]},
            "state_batch_axes": batch_axes(g),
            "initial_state": "initial_state.npz: batch 1; repeat along each state's batch axis",
        }
        (stage / "config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", "utf-8")
    return Exported(out, folder_size(out))
