"""makemore export: every family, unlabelled and labelled (conditional), to NumPy (torch-free sampler), ONNX
(onnxruntime) and the one-line refusals. The HTML page is tested in a real browser in test_export_browser.py."""

from __future__ import annotations

import collections
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import NAMES
from helpers import run_cli

import makemore
from makemore.api import mix_runs, train
from makemore.jobs.knn import build_knn
from makemore.models import MODELS

# tiny settings: a few steps each (the export must reproduce whatever the weights are, trained or not); the
# Transformer's block_size is below the longest names, so scoring and sampling cross the sliding window
TINY = {
    "ngram": {},
    "bigram": {"max_steps": 20},
    "mlp": {"max_steps": 20, "n_embd": 8, "n_hidden": 16, "batch_norm": True, "block_size": 3},
    "wavenet": {"max_steps": 20, "n_layer": 2, "n_embd": 8, "n_hidden": 16},
    "rnn": {"max_steps": 20, "n_embd": 8, "n_hidden": 16},
    "gru": {"max_steps": 20, "n_embd": 8, "n_hidden": 16},
    "lstm": {"max_steps": 20, "n_embd": 8, "n_hidden": 16},
    "transformer": {"max_steps": 20, "block_size": 6, "n_layer": 2, "n_head": 2, "n_embd": 16},
}
MIXES = {
    "mix": ["ngram", "gru", "transformer"],
    "mix-neural": ["bigram", "mlp", "transformer"],
    "mix-recurrent": ["gru", "lstm", "rnn-relu"],  # ONNX: every member's state in the mix's step function
    "mix-log-linear": ["gru", "lstm", "rnn-relu"],  # softmax(sum_i w_i log p_i)
    "mix-knn": ["ngram", "knn", "lstm"],  # a member with a memory (what --model auto makes)
}
# the settings that change what a sampler computes: no biases and tied weights, other norms and activations
VARIANTS = {
    "transformer-nobias": ("transformer", {**TINY["transformer"], "bias": False, "tie_weights": True}),
    "wavenet-layernorm": ("wavenet", {**TINY["wavenet"], "norm": "layer"}),
    "wavenet-nonorm": ("wavenet", {**TINY["wavenet"], "norm": "none", "n_layer": 3}),
    "rnn-relu": ("rnn", {**TINY["rnn"], "nonlinearity": "relu", "n_layer": 1}),
    "mlp-deep": ("mlp", {**TINY["mlp"], "n_layer": 2, "batch_norm": False}),
    "ngram-addk": ("ngram", {"order": 3, "smoothing": "add-k"}),
}
FAMILIES = [name for name in MODELS if name != "mix"] + list(MIXES) + ["knn-cells"]
MEMORY_OF = "gru"  # the knn runs: this tiny run with a memory of its training states
MEMORIES = {"knn": (0, 1), "knn-cells": (16, 2)}  # (cells, probes): exact search; 2 of 16 cells searched
LONG = "elizabethabigailvictoria"  # longer than every context: sliding windows, long recurrences
# labelled runs of every family and label mode (a label's vectors start random: the labels matter untrained)
LABELLED = {
    "ngram": ("ngram", None),
    "bigram": ("bigram", "add"),
    **{f"{m}-{mode}": (m, mode) for m in ("mlp", "rnn", "gru", "lstm") for mode in ("add", "concat", "state")},
    **{f"{m}-{mode}": (m, mode) for m in ("wavenet", "transformer") for mode in ("add", "state")},
}
LABELLED_MIXES = {
    "mix": ["ngram", "gru-add", "transformer-state"],
    "mix-recurrent": ["lstm-state", "gru-concat"],
    "mix-neural": ["mlp-state", "rnn-add"],  # ONNX: a torch.export member beside a hand-built one
}


def tiny_run(root: Path, name: str) -> Path:
    """A run of family `name` (or a mix of MIXES) under root, trained once per session."""
    out = root / name
    if out.exists():
        return out
    if name in MIXES:
        mix_runs(
            [tiny_run(root, member) for member in MIXES[name]],
            out,
            combine="log-linear" if "log-linear" in name else "linear",
        )
        return out
    if name in MEMORIES:
        cells, probes = MEMORIES[name]
        build_knn(tiny_run(root, MEMORY_OF), out, dim=4, k=8, cells=cells, probes=probes)
        return out
    data = root / "names.txt"
    if not data.exists():
        data.write_text("\n".join(NAMES * 3) + "\n", encoding="utf-8")
    model, settings = VARIANTS.get(name, (name, TINY.get(name)))
    train(data, model=model, out=out, samples=0, **settings)
    return out


def labelled_run(root: Path, name: str) -> Path:
    """A labelled run (labels f: the names ending in a, and m: the others) of LABELLED or LABELLED_MIXES."""
    out = root / "labelled" / name
    if out.exists():
        return out
    if name in LABELLED_MIXES:
        mix_runs([labelled_run(root, member) for member in LABELLED_MIXES[name]], out)
        return out
    data = root / "labelled.tsv"
    if not data.exists():
        data.write_text("".join(f"{'fm'[n[-1] != 'a']}\t{n}\n" for n in NAMES * 3), encoding="utf-8")
    model, mode = LABELLED[name]
    train(data, model=model, out=out, samples=0, labelled=True, label_mode=mode, **TINY[model])
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export-runs")


def import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"sampler_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def items_of(run: Path) -> list[str]:
    return (run / "val.txt").read_text(encoding="utf-8").split() + [LONG, "a"]


def test_every_registry_model_is_covered():
    from makemore.export import FAMILIES as EXPORTED
    from makemore.export.onnx_graphs import STEPS

    assert set(TINY) | {"mix", "knn"} == set(MODELS) == set(EXPORTED) == set(STEPS) | {"ngram", "knn"}


@pytest.mark.parametrize("name", FAMILIES + list(VARIANTS))
def test_numpy_export_scores_and_samples_as_the_package(name, runs, tmp_path, capsys):
    run = tiny_run(runs, name)
    out = tmp_path / "export"
    code, stdout, _ = run_cli(capsys, "export", run, "--format", "numpy", "--out", out)
    assert code == 0 and "wrote numpy export" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "makemore_sampler.py", "weights.npz"]
    model = import_file(out / "makemore_sampler.py").load(str(out))
    items = items_of(run)
    want = [r["logprob"] for r in makemore.load(run).score(items)]
    assert np.allclose(model.score(items), want, rtol=0, atol=1e-5)

    first = model.sample(n=20, seed=7, prefix="e", suffix="a", max_len=9)
    assert first == model.sample(n=20, seed=7, prefix="e", suffix="a", max_len=9)  # a seed repeats
    assert first != model.sample(n=20, seed=8, prefix="e", suffix="a", max_len=9)
    assert all(item.startswith("e") and item.endswith("a") and 2 <= len(item) <= 9 for item in first)
    pairs = model.sample(n=5, seed=1, logprobs=True, top_k=3, temperature=0.7)
    assert np.allclose([lp for _, lp in pairs], model.score([item for item, _ in pairs]), atol=1e-9)


def test_numpy_suffix_by_rejection_or_masking(runs, tmp_path, capsys):
    run = tiny_run(runs, "ngram")
    assert run_cli(capsys, "export", run, "--format", "numpy", "--out", tmp_path / "e")[0] == 0
    model = import_file(tmp_path / "e" / "makemore_sampler.py").load(str(tmp_path / "e"))
    for conditioning in ("auto", "reject", "mask"):
        items = model.sample(n=30, seed=1, suffix="la", max_len=12, conditioning=conditioning)
        assert len(items) == 30 and all(item.endswith("la") and len(item) <= 12 for item in items)
    rare = model.sample(n=20, seed=2, suffix="zzv", max_len=12, conditioning="reject")
    assert len(rare) == 20 and all(item.endswith("zzv") for item in rare)  # never by chance: masked after a budget
    with pytest.raises(ValueError, match="conditioning"):
        model.sample(n=1, suffix="a", conditioning="filter")


def test_numpy_sampler_draws_from_the_model(runs, tmp_path, capsys):
    """First characters after the prefix, 4,000 draws: frequencies within 4 standard errors of the model's."""
    run = tiny_run(runs, "ngram")
    assert run_cli(capsys, "export", run, "--format", "numpy", "--out", tmp_path / "e")[0] == 0
    model = import_file(tmp_path / "e" / "makemore_sampler.py").load(str(tmp_path / "e"))
    n = 4000
    counts = collections.Counter((item + "$")[1] for item in model.sample(n=n, seed=3, prefix="a"))
    run_model = makemore.load(run)
    for char, count in counts.items():
        if char == "$":
            continue
        p = np.exp(run_model.score(["a" + char])[0]["char_logprobs"][1][1])  # p(char | "a")
        assert abs(count / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3, char


@pytest.fixture(scope="session")
def numpy_python(tmp_path_factory) -> tuple[str, dict[str, str]]:
    return numpy_only_python(tmp_path_factory.mktemp("numpy-only"))


def numpy_only_python(root: Path) -> tuple[str, dict[str, str]]:
    """A virtual environment without torch or makemore: a bare venv, and NumPy (only) linked onto its path."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    linked = root / "numpy-only"
    linked.mkdir()
    site = Path(np.__file__).parent.parent
    for entry in site.iterdir():
        if entry.name == "numpy" or entry.name.startswith(("numpy.libs", "numpy-")):
            (linked / entry.name).symlink_to(entry)
    python = root / "venv" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    return str(python), {"PYTHONPATH": str(linked), "PATH": ""}


def test_numpy_sampler_runs_in_a_venv_without_torch(runs, tmp_path, capsys, numpy_python):
    run = tiny_run(runs, "transformer")
    out = tmp_path / "export"
    assert run_cli(capsys, "export", run, "--format", "numpy", "--out", out)[0] == 0
    python, env = numpy_python
    probe = "import importlib.util as u; print([u.find_spec(m) is not None for m in ('torch', 'makemore', 'numpy')])"
    found = subprocess.run([python, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True).stdout
    assert found.strip() == "[False, False, True]"
    sampler = [python, str(out / "makemore_sampler.py")]
    sample = subprocess.run(sampler + ["sample", "-n", "5", "--seed", "1", "--prefix", "e"],
                            env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert sample.returncode == 0, sample.stderr
    items = sample.stdout.split()
    assert len(items) == 5 and all(item.startswith("e") for item in items)
    again = subprocess.run(
        sampler + ["sample", "-n", "5", "--seed", "1", "--prefix", "e"], env=env, capture_output=True, text=True
    )
    assert again.stdout.split() == items  # a seed repeats across processes
    score = subprocess.run(sampler + ["score", "emma", "ava"], env=env, capture_output=True, text=True, timeout=60)
    assert score.returncode == 0, score.stderr
    got = [float(line.split("\t")[1]) for line in score.stdout.splitlines()]
    want = [r["logprob"] for r in makemore.load(run).score(["emma", "ava"])]
    assert np.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", list(LABELLED) + [f"mix/{name}" for name in LABELLED_MIXES])
def test_numpy_export_of_labelled_runs(name, runs, tmp_path, capsys):
    run = labelled_run(runs, name.removeprefix("mix/"))
    code, stdout, _ = run_cli(capsys, "export", run, "--format", "numpy", "--out", tmp_path / "e")
    assert code == 0 and "wrote numpy export" in stdout
    model, package, items = (
        import_file(tmp_path / "e" / "makemore_sampler.py").load(str(tmp_path / "e")),
        makemore.load(run),
        items_of(run),
    )
    assert model.labels == package.labels == ["f", "m"]
    scores = {}
    for label in ("f", "m", "f=0.7,m=0.3", {"m": 2.0, "f": 1.0}, None):  # a label, blends, none: p(item)
        scores[str(label)] = model.score(items, label)
        want = [r["logprob"] for r in package.score(items, label=label)]
        assert np.allclose(scores[str(label)], want, rtol=0, atol=1e-5), label
    assert np.abs(np.subtract(scores["f"], scores["m"])).max() > 1e-3  # the label matters
    got, want = model.classify(items), package.classify(items)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert np.allclose([list(r["probs"].values()) for r in got], [list(r["probs"].values()) for r in want], atol=1e-6)

    first = model.sample(n=12, seed=5, label="m", prefix="e", max_len=9, logprobs=True)
    assert first == model.sample(n=12, seed=5, label="m", prefix="e", max_len=9, logprobs=True)  # a seed repeats
    assert all(item.startswith("e") and len(item) <= 9 for item, _ in first)
    want = [r["logprob"] for r in package.score([item for item, _ in first], label="m")]
    assert np.allclose([lp for _, lp in first], want, atol=1e-5)  # drawn under the label: scored under it


def test_numpy_labelled_sampling_is_the_conditional_model(runs, tmp_path, capsys):
    """First characters, 3,000 draws each given a label, a blend and none (p(item)): each character's frequency
    within 4 standard errors of its probability under makemore, given the same."""
    run = labelled_run(runs, "gru-add")
    assert run_cli(capsys, "export", run, "--format", "numpy", "--out", tmp_path / "e")[0] == 0
    model = import_file(tmp_path / "e" / "makemore_sampler.py").load(str(tmp_path / "e"))
    package, n = makemore.load(run), 3000
    for label in ("f", "m=0.8,f=0.2", None):
        counts = collections.Counter((item + "$")[0] for item in model.sample(n=n, seed=2, label=label, min_len=0))
        for r in package.score(package.vocab.chars, label=label):  # p(first character = c)
            p = np.exp(r["char_logprobs"][0][1])
            assert abs(counts[r["item"]] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3, (label, r["item"])
    with pytest.raises(ValueError, match="not a label of this model"):
        model.sample(n=1, label="x")
    with pytest.raises(ValueError, match="weights"):
        model.score(["emma"], label="f=0,m=0")
    plain = tiny_run(runs, "bigram")
    assert run_cli(capsys, "export", plain, "--format", "numpy", "--out", tmp_path / "p")[0] == 0
    with pytest.raises(ValueError, match="without labels"):
        import_file(tmp_path / "p" / "makemore_sampler.py").load(str(tmp_path / "p")).score(["emma"], label="f")


def test_numpy_labelled_sampler_cli_without_torch(runs, tmp_path, capsys, numpy_python):
    run = labelled_run(runs, "gru-add")
    out = tmp_path / "export"
    assert run_cli(capsys, "export", run, "--format", "numpy", "--out", out)[0] == 0
    python, env = numpy_python

    def sampler(*argv: str) -> str:
        done = subprocess.run([python, str(out / "makemore_sampler.py"), *argv], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    items = sampler("sample", "-n", "5", "--seed", "1", "--label", "f").split()
    assert len(items) == 5 and sampler("sample", "-n", "5", "--seed", "1", "--label", "f").split() == items
    assert sampler("sample", "-n", "5", "--seed", "1", "--label", "m").split() != items
    package = makemore.load(run)
    got = [float(line.split("\t")[1]) for line in sampler("score", "emma", "ava", "--label", "m").splitlines()]
    assert np.allclose(got, [r["logprob"] for r in package.score(["emma", "ava"], label="m")], atol=1e-5)
    rows = [line.split("\t") for line in sampler("classify", "emma", "liam").splitlines()]
    for row, want in zip(rows, package.classify(["emma", "liam"])):
        assert row[:2] == [want["item"], want["label"]]
        assert np.isclose(float(row[2].removeprefix("f=")), want["probs"]["f"], atol=1e-5)


def onnx_check(run: Path, out: Path) -> None:
    """The exported graphs with onnxruntime: the scorer on the val items in one padded batch, and the step function
    on the same items, both against `makemore score` (a labelled run's: given each label)."""
    import onnxruntime as ort

    config = json.loads((out / "config.json").read_text())
    stoi = {c: i + 1 for i, c in enumerate(config["vocab"])}
    items = items_of(run)
    T = max(map(len, items)) + 1
    ids = np.zeros((len(items), T + 1), dtype=np.int64)  # boundary + characters + boundary, right-padded
    for row, item in enumerate(items):
        ids[row, 1 : len(item) + 1] = [stoi[c] for c in item]
    lengths = np.array([len(item) + 1 for item in items])
    real = np.arange(T)[None, :] < lengths[:, None]

    def totals(logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return np.where(real, picked, 0.0).sum(1)

    score = ort.InferenceSession(str(out / "score.onnx"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(out / "step.onnx"), providers=["CPUExecutionProvider"])
    axes, labels = config["onnx"]["state_batch_axes"], config.get("labels", [None])
    names = [name for name in config["onnx"]["step"]["inputs"] if name.startswith("state")]
    assert config["onnx"]["score"]["inputs"] == ["ids"] + (["label"] if labels != [None] else [])
    for k, label in enumerate(labels):
        want = np.array([r["logprob"] for r in makemore.load(run).score(items, label=label)])
        feeds = {} if label is None else {"label": np.full(len(items), k)}
        assert np.allclose(totals(score.run(None, {"ids": ids[:, :-1], **feeds})[0]), want, rtol=0, atol=1e-5)
        with np.load(out / "initial_state.npz") as initial:  # labelled: each label's start, [k]
            start = {name: initial[name] if label is None else initial[name][k] for name in names}
        state = {name: np.repeat(start[name], len(items), axis=axes[i]) for i, name in enumerate(names)}
        outputs = []
        for t in range(T):
            out_t = step.run(None, {"ids": ids[:, t], **feeds, **state})
            outputs.append(out_t[0])
            state = dict(zip(names, out_t[1:]))
        assert np.allclose(totals(np.stack(outputs, axis=1)), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["gru", "mix-recurrent", "mix-log-linear"])  # hand-built graphs: quick to export
def test_onnx_export_matches_the_package(name, runs, tmp_path, capsys):
    run = tiny_run(runs, name)  # the GRU gate layout is the classic pitfall; a mix joins its members' graphs
    code, stdout, _ = run_cli(capsys, "export", run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert code == 0, stdout
    onnx_check(run, tmp_path / "onnx")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["bigram", "mlp", "wavenet", "rnn", "lstm", "transformer", "mix-neural"] + list(VARIANTS)[:-1]
)
def test_onnx_export_of_every_family(name, runs, tmp_path, capsys):
    run = tiny_run(runs, name)
    code, stdout, _ = run_cli(capsys, "export", run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert code == 0, stdout
    onnx_check(run, tmp_path / "onnx")


@pytest.mark.parametrize(
    "name",
    [
        "gru-add",
        "mix-recurrent",
        *(pytest.param(n, marks=pytest.mark.slow) for n in [*LABELLED, "mix-neural"] if n not in ("ngram", "gru-add")),
    ],
)
def test_onnx_export_of_labelled_runs(name, runs, tmp_path, capsys):
    run = labelled_run(runs, name)
    code, stdout, _ = run_cli(capsys, "export", run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert code == 0, stdout
    onnx_check(run, tmp_path / "onnx")


@pytest.mark.parametrize(
    "name, make", [("ngram", tiny_run), ("mix", tiny_run), ("ngram", labelled_run), ("mix", labelled_run)]
)
def test_onnx_says_in_one_line_what_it_cannot_carry(name, make, runs, tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "export", make(runs, name), "--format", "onnx", "--out", tmp_path / "o")
    assert code == 2
    assert stderr.count("\n") == 1 and "ONNX cannot carry the ngram model" in stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["knn", "mix-knn"])
def test_onnx_says_it_cannot_carry_a_memory(name, runs, tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "export", tiny_run(runs, name), "--format", "onnx", "--out", tmp_path / "o")
    assert code == 2
    assert stderr.count("\n") == 1 and "cannot carry the" in stderr
    assert not (tmp_path / "o").exists()


def test_refusals_are_one_line_and_leave_nothing(runs, tmp_path, capsys):
    run = tiny_run(runs, "mlp")
    code, _, stderr = run_cli(capsys, "export", run, "--format", "tflite", "--out", tmp_path / "x")
    assert code == 2 and "invalid choice" in stderr
    (tmp_path / "taken").mkdir()
    code, _, stderr = run_cli(capsys, "export", run, "--format", "numpy", "--out", tmp_path / "taken")
    assert code == 2 and "--force" in stderr
    code, _, stderr = run_cli(
        capsys, "export", run, "--format", "html", "--out", tmp_path / "p.html", "--max-size", "0.001"
    )
    assert code == 2 and "over --max-size" in stderr and stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no page, no temporary folders


def test_a_failed_check_writes_nothing(runs, tmp_path, capsys, monkeypatch):
    from makemore.export import numpy_export

    run = tiny_run(runs, "mlp")
    monkeypatch.setattr(numpy_export, "TOLERANCE", -1.0)  # every comparison fails
    code, _, stderr = run_cli(capsys, "export", run, "--format", "numpy", "--out", tmp_path / "e")
    assert code == 2 and "check failed" in stderr
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "keep.txt").write_text("old")
    code, _, _ = run_cli(capsys, "export", run, "--format", "numpy", "--out", tmp_path / "e", "--force")
    assert code == 2 and (tmp_path / "e" / "keep.txt").read_text() == "old"  # a failed replace keeps the old


def test_stream_mode_runs_are_refused_in_one_line(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(" ".join(NAMES * 20) + "\n", encoding="utf-8")
    train(text, model="bigram", out=tmp_path / "run", mode="stream", max_steps=2, samples=0)
    for format, out in (("html", tmp_path / "p.html"), ("numpy", tmp_path / "n"), ("onnx", tmp_path / "o")):
        code, _, stderr = run_cli(capsys, "export", tmp_path / "run", "--format", format, "--out", out)
        assert code == 2 and "stream-mode run" in stderr and stderr.count("\n") == 1
        assert not out.exists()
