"""Labels, measured on first names by sex (the census lists without the names on both; label<TAB>item files).

    PYTHONPATH=src python benchmarks/labels.py [--data ../shared/data] [--out benchmarks/results/labels.md]
    PYTHONPATH=src python benchmarks/labels.py --only modes|families|target   (one part)

Three parts, every choice made on val (test is reported, never used to choose):
- modes:    --label-mode add / concat / state for the GRU and the MLP, --max-steps (load-independent), 2 seeds
- families: per family, classification accuracy (naive Bayes on the conditional model), the NLL of each item given
            its label, and the NLL of the same items under an unconditional run of the same family and settings
- target:   the GRU with --time-budget 300 (the issue's target), and how often its samples drawn with --label L
            are classified L by the same run
The CPU may be shared: a time budget then buys fewer steps than on a quiet machine (steps are reported).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import makemore

ROOT = Path(__file__).resolve().parents[1]
DATASET = "first-names-by-sex"


def files(data: Path) -> dict[str, Path]:
    return {split: data / f"{DATASET}-{split}.tsv" for split in ("train", "val", "test")}


def strip_labels(paths: dict[str, Path], where: Path) -> dict[str, Path]:
    """The same items without their labels (for the unconditional runs)."""
    out = {}
    for split, path in paths.items():
        target = where / f"plain-{split}.txt"
        lines = path.read_text(encoding="utf-8").splitlines()
        target.write_text("".join(line.split("\t", 1)[1] + "\n" for line in lines if line.strip()), encoding="utf-8")
        out[split] = target
    return out


def train(paths: dict[str, Path], out: Path, model: str, labelled: bool, **settings: Any) -> dict[str, Any]:
    began = time.perf_counter()
    result = makemore.train(
        str(paths["train"]), model, out, val_file=str(paths["val"]), test_file=str(paths["test"]),
        labelled=labelled, force=True, samples=0, **settings,
    )  # fmt: skip
    return {"step": result["step"], "seconds": time.perf_counter() - began, "stopped": result["stopped"]}


def label_scores(run_dir: Path) -> dict[str, dict[str, Any]]:
    run = makemore.load(run_dir)
    return {split: run.evaluate_labels(split)[split] for split in ("val", "test")}


def plain_nll(run_dir: Path) -> dict[str, float]:
    run = makemore.load(run_dir)
    return {split: run.evaluate(split)[split]["nll"] for split in ("val", "test")}


# ----------------------------------------------------------------------------------------------------------- parts

MODE_RUNS = {  # family: settings (fixed steps: the comparison does not depend on the machine's load)
    "gru": {"max_steps": 1500, "time_budget": None, "eval_every": 250, "patience": 0},
    "mlp": {"max_steps": 4000, "time_budget": None, "eval_every": 500, "patience": 0},
}
SEEDS = (1337, 7)


def part_modes(paths: dict[str, Path], work: Path, lines: list[str], quick: bool) -> None:
    lines += [
        "## add vs concat vs state",
        "",
        "Fixed steps (load-independent), two seeds each; val chooses, test is reported. "
        "acc = classification accuracy (p(label | item) by Bayes' rule on the conditional model); "
        "nll = nats/token of each item given its true label.",
        "",
        "| family | steps | mode | val acc (seeds) | val acc mean | val nll mean | test acc mean | test nll mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, settings in MODE_RUNS.items():
        settings = dict(settings, max_steps=100) if quick else settings
        for mode in ("add", "concat", "state"):
            scores = []
            for seed in SEEDS[:1] if quick else SEEDS:
                out = work / f"mode-{family}-{mode}-{seed}"
                train(paths, out, family, True, label_mode=mode, seed=seed, **settings)
                scores.append(label_scores(out))
                print(f"modes: {family} {mode} seed {seed}: val acc {scores[-1]['val']['accuracy']:.4f}", flush=True)

            def mean(split: str, key: str, scores: list = scores) -> float:
                return sum(s[split][key] for s in scores) / len(scores)

            each = " / ".join(f"{s['val']['accuracy']:.4f}" for s in scores)
            lines.append(
                f"| {family} | {settings['max_steps']} | {mode} | {each} | {mean('val', 'accuracy'):.4f} | "
                f"{mean('val', 'nll'):.4f} | {mean('test', 'accuracy'):.4f} | {mean('test', 'nll'):.4f} |"
            )
    lines.append("")


FAMILY_RUNS = {
    "ngram": {},
    "bigram": {"max_steps": 3000, "time_budget": None},
    "mlp": {"max_steps": 4000, "time_budget": None, "eval_every": 500, "patience": 0},
    "gru": {"max_steps": 1500, "time_budget": None, "eval_every": 250, "patience": 0},
    "transformer": {"max_steps": 1500, "time_budget": None, "eval_every": 250, "patience": 0, "preset": "fast"},
}


def part_families(paths: dict[str, Path], work: Path, lines: list[str], quick: bool) -> None:
    plain = strip_labels(paths, work)
    lines += [
        "## Per family: classification, and the NLL with and without the label",
        "",
        "Each family's default --label-mode, its recommended settings with fixed steps; the unconditional run is the "
        "same family and settings (weight averaging included) on the same items without labels. Majority class: val "
        "{majority_val:.4f}, test {majority_test:.4f}.",
        "",
        "| family | steps | val acc | test acc | val nll given label | val nll, unconditional run | "
        "test nll given label | test nll, unconditional run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    header = next(i for i in range(len(lines) - 1, -1, -1) if "{majority_val" in lines[i])
    majority = {}
    for family, settings in FAMILY_RUNS.items():
        if FAMILIES and family not in FAMILIES:
            continue
        settings = dict(settings)
        if quick and "max_steps" in settings:
            settings["max_steps"] = 100
        preset = settings.pop("preset", None)
        out = work / f"family-{family}"
        info = train(paths, out, family, True, preset=preset, **settings)
        scores = label_scores(out)
        # the same training as the labelled run, weight averaging included (labelled runs average by default)
        ema = json.loads((out / "run.json").read_text())["train_config"].get("ema", 0.0)
        same = dict(settings, ema=ema) if ema and family != "ngram" else settings
        train(plain, work / f"plain-{family}", family, False, preset=preset, **same)
        unconditional = plain_nll(work / f"plain-{family}")
        majority = {split: scores[split]["majority_accuracy"] for split in ("val", "test")}
        print(f"families: {family}: val acc {scores['val']['accuracy']:.4f}", flush=True)
        lines.append(
            f"| {family} | {info['step'] or 'fitted'} | {scores['val']['accuracy']:.4f} | "
            f"{scores['test']['accuracy']:.4f} | {scores['val']['nll']:.4f} | {unconditional['val']:.4f} | "
            f"{scores['test']['nll']:.4f} | {unconditional['test']:.4f} |"
        )
    lines[header] = lines[header].format(majority_val=majority["val"], majority_test=majority["test"])
    lines.append("")


def sample_agreement(run_dir: Path, n: int, guidance: float | None = None) -> dict[str, float]:
    """Share of the samples drawn with --label L that the same run classifies as L, per label (`guidance`: the
    --label-guidance; None: the default)."""
    run = makemore.load(run_dir)
    rates = {}
    for label in run.labels:
        items = [item["item"] for item in run.generate(n, label=label, seed=1, label_guidance=guidance).items]
        rates[label] = sum(r["label"] == label for r in run.classify(items)) / len(items)
    return rates


def part_target(paths: dict[str, Path], work: Path, lines: list[str], quick: bool) -> None:
    budget = 20.0 if quick else 300.0
    out = work / "target-gru"
    info = train(paths, out, "gru", True, time_budget=budget)
    scores = label_scores(out)
    rates = sample_agreement(out, 100 if quick else 1000)
    unguided = sample_agreement(out, 100 if quick else 1000, guidance=0.0)
    threads = torch.get_num_threads()
    lines += [
        f"## The target: --model gru --labelled --time-budget {budget:.0f}",
        "",
        f"{info['step']} steps in {info['seconds']:.0f} s ({threads} threads; the CPU was shared with other work, "
        "so a quiet machine gets more steps in the same budget).",
        "",
        "| split | accuracy | majority class | nll given label | unconditional nll (sum over labels) |",
        "|---|---|---|---|---|",
    ]
    for split, r in scores.items():
        lines.append(
            f"| {split} | {r['accuracy']:.4f} | {r['majority_accuracy']:.4f} | {r['nll']:.4f} | "
            f"{r['unconditional_nll']:.4f} |"
        )
    per_label = "; ".join(
        f"{label}: val acc {scores['val']['per_label'][label]['accuracy']:.4f}" for label in scores["val"]["labels"]
    )
    lines += [
        "",
        f"Per label: {per_label}. Val confusion (rows true, columns predicted, {', '.join(scores['val']['labels'])}):"
        f" {json.dumps(scores['val']['confusion'])}.",
        "",
        "Samples drawn with --label L (1,000 each, seed 1) that the same run classifies as L: "
        + ", ".join(f"{label} {rate:.3f}" for label, rate in rates.items())
        + " (the default guidance); with --label-guidance 0 (exactly p(item | label)): "
        + ", ".join(f"{label} {rate:.3f}" for label, rate in unguided.items())
        + ".",
        "",
    ]


PARTS = {"modes": part_modes, "families": part_families, "target": part_target}
FAMILIES: list[str] = []  # --family: only these in the families part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "labels.md")
    parser.add_argument("--only", choices=sorted(PARTS), action="append")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny budgets")
    parser.add_argument("--family", action="append", choices=sorted(FAMILY_RUNS), help="families part: only these")
    args = parser.parse_args()
    FAMILIES.extend(args.family or [])
    paths = files(args.data)
    lines = [
        "# Labels: conditional models on first names by sex",
        "",
        "`PYTHONPATH=src python benchmarks/labels.py` on `first-names-by-sex-{train,val,test}.tsv` "
        "(3,865 / 483 / 484 items, label<TAB>item; the census lists without the 331 names on both).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or list(PARTS):
            PARTS[name](paths, Path(tmp), lines, args.quick)
            part = args.out.with_suffix(f".{name}.md") if args.only else args.out
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
