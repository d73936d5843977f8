"""The reference the throughput target is relative to: karpathy/makemore's Transformer trained makemore's way.

    python benchmarks/makemore_reference.py --seconds 30 [--threads 1]
    python benchmarks/makemore_reference.py --steps 2000          # then the val loss after that many steps

A faithful copy of makemore.py's model (4 layers, 4 heads, 64 dims, context = longest name + 1 = 16; attention by
an explicit masked softmax, NewGELU as a tanh formula, no dropout) and of its training (random batches of 32 names,
each a row padded to 16 with targets -1 after the end token; AdamW lr 5e-4, weight decay 0.01, betas (0.9, 0.99)),
timed on this machine so that `benchmarks/throughput.py` can be compared with it on the same CPU and load.
Ends with one JSON line {"model": "makemore-reference", "useful_tokens_per_s", "padded_tokens_per_s", "steps"}, and
with --steps N also "val_loss": the mean NLL per predicted token on --val after N steps (the loss per step the
throughput target compares).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


class NewGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd), n_head
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        k, q, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (k, q, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), NewGELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 64):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, block_size) for _ in range(n_layer))
        self.ln_f, self.lm_head = nn.LayerNorm(n_embd), nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1))[None])
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def tensorise(words: list[str], stoi: dict[str, int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """makemore's layout: row i reads 0 w1 w2 ... (padded with 0), targets w1 w2 ... 0 then -1 (ignored)."""
    X = torch.zeros(len(words), width, dtype=torch.long)
    Y = torch.full((len(words), width), -1, dtype=torch.long)
    for i, w in enumerate(words):
        ids = torch.tensor([stoi[c] for c in w])
        X[i, 1 : 1 + len(w)] = ids
        Y[i, : len(w)] = ids
        Y[i, len(w)] = 0
    return X, Y


@torch.no_grad()
def mean_nll(model: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    total = count = 0.0
    for start in range(0, len(X), 1024):
        x, y = X[start : start + 1024], Y[start : start + 1024]
        n = int((y != -1).sum())
        total, count = total + model(x, y).item() * n, count + n
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. all cores)")
    parser.add_argument("--train", default=str(SHARED / "names-train.txt"))
    parser.add_argument("--steps", type=int, help="train this many steps (untimed), then report the val loss")
    parser.add_argument("--val", default=str(SHARED / "names-val.txt"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    words = [w for w in Path(args.train).read_text().split("\n") if w]
    chars = sorted(set("".join(words)))
    stoi = {c: i + 1 for i, c in enumerate(chars)}
    width = max(len(w) for w in words) + 1
    X, Y = tensorise(words, stoi, width)
    torch.manual_seed(0)
    random.seed(0)
    model = Transformer(len(chars) + 1, width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)
    steps = useful = padded = 0
    start = time.perf_counter()
    timed_from = None
    while True:
        now = time.perf_counter()
        if args.steps is not None:
            timed_from = timed_from or start
            if steps >= args.steps:
                break
        elif timed_from is None and now - start >= args.warmup:
            timed_from, steps, useful, padded = now, 0, 0, 0
        if args.steps is None and timed_from is not None and now - timed_from >= args.seconds:
            break
        rows = torch.randint(0, len(words), (32,))
        x, y = X[rows], Y[rows]
        loss = model(x, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps, useful, padded = steps + 1, useful + int((y != -1).sum()), padded + y.numel()
    wall = time.perf_counter() - timed_from
    print(
        f"makemore reference, {torch.get_num_threads()} threads: {useful / wall:,.0f} useful tok/s, "
        f"{padded / wall:,.0f} padded tok/s, {1000 * wall / steps:.2f} ms/step, loss {loss.item():.4f}"
    )
    result = {
        "model": "makemore-reference",
        "useful_tokens_per_s": round(useful / wall, 1),
        "padded_tokens_per_s": round(padded / wall, 1),
        "steps": steps,
    }
    if args.steps is not None:
        val = [w for w in Path(args.val).read_text().split("\n") if w]
        model.eval()
        result["val_loss"] = round(mean_nll(model, *tensorise(val, stoi, max(width, max(map(len, val)) + 1))), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
