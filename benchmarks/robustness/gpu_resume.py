"""On a CUDA GPU: does stop + resume give the same weights as a straight run (dropout draws from the CUDA RNG)?

    CUBLAS_WORKSPACE_CONFIG=:4096:8 python benchmarks/robustness/gpu_resume.py

Deterministic algorithms are switched on (otherwise two straight runs already differ: atomics in the embedding
backward). Variant "no CUDA RNG" drops the saved CUDA RNG state before resuming, to show that it is needed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from makemore.data.lines import LineSplit, Vocab
from makemore.models import MODELS, build_model
from makemore.runs import checkpoint as ckpt
from makemore.training.config import TrainConfig
from makemore.training.trainer import Trainer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script


def trainer(run: Path, items: list[str], stop_at: int | None = None) -> Trainer:
    vocab = Vocab.from_texts(items)
    torch.manual_seed(0)
    model = build_model("mlp", MODELS["mlp"].config_class(n_embd=16, n_hidden=64, dropout=0.3), vocab.size)
    splits = {name: LineSplit(items, vocab) for name in ("train", "val", "test")}
    config = TrainConfig(max_steps=60, batch_size=32, eval_every=20, log_every=10, device=DEVICE, patience=0)
    run.mkdir(parents=True, exist_ok=True)
    t = Trainer(model, splits, config, run)
    if stop_at is not None:
        t.should_stop = lambda: t.state.step == stop_at
    return t


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}


def main() -> None:
    torch.use_deterministic_algorithms(True)
    items = ["".join(chr(97 + (i * 7 + j * 3) % 26) for j in range(3 + i % 6)) for i in range(500)]
    root = Path(tempfile.mkdtemp())
    a = trainer(root / "a", items)
    a.train()
    a2 = trainer(root / "a2", items)
    a2.train()
    print("two straight runs equal:", all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(a2).values())))
    for variant in ("resume", "no CUDA RNG") if DEVICE == "cuda" else ("resume",):
        b = trainer(root / variant, items, stop_at=30)
        b.train()
        if variant == "no CUDA RNG":
            tensors, header = ckpt.load_tensors_with_metadata(root / variant / ckpt.CHECKPOINT_FILE)
            del tensors["rng.cuda"]
            ckpt.save_tensors(root / variant / ckpt.CHECKPOINT_FILE, tensors, header)
        torch.cuda.manual_seed(12345)  # a different CUDA RNG state in the "new process"
        c = trainer(root / variant, items)
        c.restore()
        c.train()
        same = all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(c).values()))
        print(f"stop at 30 + {variant}: equal to the straight run: {same}")


if __name__ == "__main__":
    main()
