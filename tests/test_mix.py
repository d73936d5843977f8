import json
import shutil

import pytest
import torch
from conftest import NAMES
from helpers import run_cli

from makemore.data.lines import LineSplit, Vocab
from makemore.errors import MakemoreError
from makemore.models import MODELS, build_model
from makemore.models.mix import Mix, MixConfig, member_log_probs
from makemore.models.mix_weights import fit_log_linear, fit_weights, log_linear_nll, mixture_nll
from makemore.runs import checkpoint as ckpt
from makemore.training.evaluation import evaluate

TRAIN = NAMES[:22]
VAL = ["chloe", "victoria", "madison", "eleanor", "grace", "nora", "riley", "zoey", "emma", "bella", "amelia"]
VOCAB = Vocab.from_texts(TRAIN + VAL)


def ngram(order: int, smoothing: str = "kneser-ney"):
    config = MODELS["ngram"].config_class(order=order, smoothing=smoothing, tune_discounts=False, k=0.5)
    model = build_model("ngram", config, VOCAB.size)
    model.fit(LineSplit(TRAIN, VOCAB))
    return model.eval()


def uniform():
    return build_model("bigram", MODELS["bigram"].config_class(), VOCAB.size).eval()  # zero logits: uniform


def mixed(members, combine="linear"):
    mix = Mix(MixConfig(n_members=len(members), combine=combine), VOCAB.size, members)
    mix.fit(None, LineSplit(VAL, VOCAB))
    return mix.eval()


def nll(model, items=VAL) -> float:
    return evaluate(model, LineSplit(items, VOCAB).eval_batches(64))["nll"]


def test_weights_are_a_distribution_that_favours_the_better_member():
    mix = mixed([uniform(), ngram(3)])
    assert mix.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (mix.weights >= 0).all()
    assert mix.weights[1] > 0.8  # the n-gram, not the uniform model
    assert mix.weights[0] > 0  # ... yet some uniform mass helps a model fitted on 22 names


def test_em_reaches_the_optimum_of_the_held_out_likelihood():
    log_probs = member_log_probs([ngram(2), ngram(4), uniform()], LineSplit(VAL, VOCAB).eval_batches(64)).log_probs
    weights = fit_weights(log_probs)
    # The mean log-likelihood is concave in the weights; its gradient along member i is mean_t p_i(t) / p(t).
    # At the optimum over the simplex (KKT) that is 1 for every member with weight > 0, and <= 1 for the rest.
    ratios = (log_probs.exp() / (log_probs.exp() * weights[:, None]).sum(0)).mean(1)
    used = weights > 1e-6
    assert torch.allclose(ratios[used], torch.ones(int(used.sum()), dtype=torch.float64), atol=1e-4)
    assert (ratios[~used] <= 1 + 1e-6).all()
    best = mixture_nll(log_probs, weights)
    for w in torch.distributions.Dirichlet(torch.ones(3)).sample((50,)).double():  # no other weighting does better
        assert mixture_nll(log_probs, w) >= best - 1e-12


def test_log_linear_weights_reach_the_optimum_of_the_held_out_likelihood():
    held_out = member_log_probs([ngram(2), ngram(4), ngram(3, "add-k")], LineSplit(VAL, VOCAB).eval_batches(64), True)
    dists, targets = held_out.log_dists, held_out.targets
    assert torch.allclose(dists.double().gather(-1, targets[None, :, None].expand(3, -1, 1)).squeeze(-1),
                          held_out.log_probs, atol=1e-6)  # fmt: skip
    weights, fitted_nll = fit_log_linear(dists, targets, held_out.log_probs)
    assert (weights >= 0).all() and weights.sum() > 0
    # convex in the weights: at the optimum over w >= 0 the gradient is 0 where w > 0 and >= 0 where w = 0 (KKT)
    w = weights.clone().requires_grad_(True)
    mixed_log_p = torch.log_softmax((dists.double() * w[:, None, None]).sum(0), dim=-1)
    (-mixed_log_p.gather(-1, targets[:, None]).mean()).backward()
    used = weights > 0
    assert torch.allclose(w.grad[used], torch.zeros(int(used.sum()), dtype=torch.float64), atol=1e-4)
    assert (w.grad[~used] >= -1e-4).all()
    best = log_linear_nll(dists, targets, weights)
    assert fitted_nll == pytest.approx(best, abs=1e-12)
    for other in torch.rand(50, 3, dtype=torch.float64) * 2:  # no other weighting does better
        assert log_linear_nll(dists, targets, other) >= best - 1e-9
    assert best < mixture_nll(held_out.log_probs, fit_weights(held_out.log_probs))  # these members: log-linear wins


@pytest.mark.parametrize("combine", ["linear", "log-linear"])
@pytest.mark.parametrize("members", [lambda: [ngram(2), ngram(4)], lambda: [ngram(3), ngram(2, "add-k"), uniform()]])
def test_mix_is_never_worse_than_its_best_member_on_the_data_it_was_fitted_on(members, combine):
    members = members()
    mix = mixed(members, combine)
    assert nll(mix) <= min(nll(member) for member in members) + 1e-6


@pytest.mark.parametrize("combine", ["linear", "log-linear"])
def test_a_mix_dominated_by_one_member_is_that_member(combine):
    # the best mixture of a good model and a copy made much worse is the good model alone: EM only approaches a
    # corner of the simplex, so the fit must compare against the corners
    good, bad = ngram(3), ngram(1)
    mix = mixed([good, bad], combine)
    assert nll(mix) <= nll(good) + 1e-6


@pytest.mark.parametrize("combine", ["linear", "log-linear"])
def test_incremental_steps_equal_the_full_forward(combine):
    mix = mixed([ngram(3), ngram(2, "add-k"), uniform()], combine)
    split = LineSplit(VAL, VOCAB)
    full, _ = mix(split.inputs)  # (B, T, V)
    state = mix.init_state(len(split))
    rows = torch.tensor([4, 0, 2])
    cut = 3
    for t in range(split.inputs.size(1)):
        if t == cut:
            state = mix.reorder_state(state, rows)
        logits, state = mix.step(split.inputs[:, t] if t < cut else split.inputs[rows, t], state)
        expected = full[:, t] if t < cut else full[rows, t]
        assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(full.exp().sum(-1), torch.ones(full.shape[:2]), atol=1e-5)  # log p: rows sum to 1


def test_mix_command_makes_a_run_that_evaluates_samples_and_scores(capsys, tmp_path, names_file):
    runs = {
        "kn": ["--model", "ngram", "--order", 3],
        "mlp": ["--model", "mlp", "--n-embd", 4, "--n-hidden", 16, "--max-steps", 30, "--eval-every", 30],
    }
    for name, flags in runs.items():
        code, _, err = run_cli(capsys, "train", "-i", names_file, "--out", tmp_path / name, "--samples", 0, *flags)
        assert code == 0, err
    out_dir = tmp_path / "mix"
    code, out, err = run_cli(capsys, "mix", tmp_path / "kn", tmp_path / "mlp", "--out", out_dir)
    assert code == 0, err
    assert "linear mix, weights fitted by EM" in out

    code, out, err = run_cli(capsys, "eval", out_dir, "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    members = [json.loads(run_cli(capsys, "eval", tmp_path / name, "--format", "json")[1]) for name in runs]
    assert result["val"]["nll"] <= min(m["val"]["nll"] for m in members) + 1e-6
    assert result["test"]["tokens"] == members[0]["test"]["tokens"]

    code, out, err = run_cli(capsys, "sample", out_dir, "-n", 4, "--seed", 1)
    assert code == 0 and len(out.strip().splitlines()) == 4, err
    code, out, err = run_cli(capsys, "score", out_dir, "emma", "ava")
    assert code == 0 and out.count("logprob") == 2, err

    # self-contained: the members' own runs can go away
    _, before = ckpt.load_model(out_dir)
    for name in runs:
        shutil.rmtree(tmp_path / name)
    spec, after = ckpt.load_model(out_dir)
    assert spec.model_name == "mix" and torch.equal(after.weights, before.weights)
    idx = LineSplit(["emma", "zoey"], spec.vocab).inputs
    assert torch.equal(after(idx)[0], before(idx)[0])

    code, _, err = run_cli(capsys, "mix", out_dir, out_dir, "--out", out_dir)
    assert code == 2 and "is one of the runs" in err
    code, _, err = run_cli(capsys, "mix", out_dir, out_dir, "--out", tmp_path / "again")
    assert code == 0, err  # a mix is a run: it can be mixed again


def test_members_must_share_one_vocabulary(capsys, tmp_path, names_file):
    other = tmp_path / "other.txt"
    other.write_text("xyz\nzyx\nyxz\nzzz\nxxx\nyyy\nxyx\nzyz\nyzy\nxzx\n", encoding="utf-8")
    for name, data in (("a", names_file), ("b", other)):
        code, _, err = run_cli(
            capsys, "train", "-i", data, "--out", tmp_path / name, "--model", "ngram", "--order", 2, "--samples", 0
        )
        assert code == 0, err
    code, out, err = run_cli(capsys, "mix", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "mix")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "vocabulary" in err and not (tmp_path / "mix").exists()


def test_train_refuses_to_make_a_mix(capsys):
    code, _, err = run_cli(capsys, "train", "--model", "mix")
    assert code == 2 and "makemore mix" in err


def test_stream_runs_mix_with_each_member_reading_its_own_context(capsys, tmp_path):
    from test_stream import PROSE

    text = tmp_path / "prose.txt"
    text.write_text(PROSE * 12, encoding="utf-8")
    common = ["train", "-i", text, "--mode", "stream", "--samples", 0]
    runs = {
        "kn": ["--model", "ngram", "--order", 4, "--seq-len", 16],
        "tf": [
            "--model",
            "transformer",
            "--block-size",
            16,
            "--n-layer",
            1,
            "--n-embd",
            16,
            "--n-head",
            2,
            "--max-steps",
            20,
            "--eval-every",
            20,
        ],
        "lstm": [
            "--model",
            "lstm",
            "--n-hidden",
            16,
            "--n-layer",
            1,
            "--n-embd",
            8,
            "--seq-len",
            16,
            "--stateful",
            "--max-steps",
            20,
            "--eval-every",
            20,
        ],
    }
    own = {}
    for name, flags in runs.items():
        code, _, err = run_cli(capsys, *common, "--out", tmp_path / name, *flags)
        assert code == 0, err
        own[name] = json.loads(run_cli(capsys, "eval", tmp_path / name, "--format", "json")[1])["val"]["nll"]
    code, out, err = run_cli(
        capsys, "mix", *(tmp_path / name for name in runs), "--out", tmp_path / "mix", "--combine", "log-linear"
    )
    assert code == 0 and "log-linear mix, weights fitted by L-BFGS" in out, err
    fitted = float(out.split("mix: val nll ")[1].split(";")[0])
    read_in_mix = {name: float(line.split("val nll ")[1]) for name, line in zip(runs, out.splitlines()[1:4])}
    # the n-gram's whole context fits in what the mix keeps: the very same log-probs as its own evaluation
    assert read_in_mix["kn"] == pytest.approx(own["kn"], abs=1e-4)
    code, out, err = run_cli(capsys, "eval", tmp_path / "mix", "--format", "json")
    assert code == 0, err
    result = json.loads(out)["val"]
    assert result["nll"] == pytest.approx(fitted, abs=1e-4)  # eval reads the text as the fit did
    assert result["nll"] <= min(read_in_mix.values()) + 1e-6
    code, out, err = run_cli(capsys, "sample", tmp_path / "mix", "--prompt", "the ", "--length", 20, "--seed", 1)
    assert code == 0 and out.startswith("the ") and len(out) == len("the ") + 21, err


def test_mix_runs_is_a_library_function_the_command_calls(capsys, tmp_path, names_file):
    from makemore.jobs.mix import mix_runs

    for name, order in (("two", 2), ("three", 3)):
        flags = ["--model", "ngram", "--order", order, "--samples", 0]
        code, _, err = run_cli(capsys, "train", "-i", names_file, "--out", tmp_path / name, *flags)
        assert code == 0, err
    members = [tmp_path / "two", tmp_path / "three"]
    result = mix_runs(members, tmp_path / "mix")
    assert capsys.readouterr() == ("", "")  # library code prints nothing
    weights = [member["weight"] for member in result["members"]]
    assert sum(weights) == pytest.approx(1.0) and result["fitted_on"] == "val" and result["tokens"] > 0
    assert result["val_nll"] <= min(member["val_nll"] for member in result["members"]) + 1e-9
    spec = ckpt.read_run_spec(tmp_path / "mix")
    assert spec.model_name == "mix" and spec.data["mix"]["weights"] == pytest.approx(weights)

    with pytest.raises(MakemoreError, match="already exists; use --force"):
        mix_runs(members, tmp_path / "mix")
    again = mix_runs(members, tmp_path / "mix", force=True, em_steps=1)
    assert again["out"] == str(tmp_path / "mix")
    with pytest.raises(MakemoreError, match="at least two runs"):
        mix_runs(members[:1], tmp_path / "solo")
    code, out, err = run_cli(capsys, "mix", *members, "--out", tmp_path / "cli")
    assert code == 0 and f"val nll {result['val_nll']:.4f}" in out, err
    best = mix_runs(members, tmp_path / "best", combine="best")  # both fitted; the lower val NLL kept
    other = mix_runs(members, tmp_path / "log-linear", combine="log-linear")
    assert best["val_nll"] == min(result["val_nll"], other["val_nll"])
    assert ckpt.read_run_spec(tmp_path / "best").model_config.combine == best["combine"]
    alone = mix_runs(members[:1], tmp_path / "alone", combine="best", min_runs=1)  # auto's mix of its n-gram alone
    assert alone["combine"] == "linear" and [m["weight"] for m in alone["members"]] == [1.0]
    with pytest.raises(MakemoreError, match="--combine must be one of"):
        mix_runs(members, tmp_path / "bad", combine="geometric")
