"""Continue text with a stream-mode run: one character at a time, as long as asked."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from makemore.data.lines import BOUNDARY, Vocab
from makemore.generation.sample import DecodeOptions, filter_logits
from makemore.models import LanguageModel


@torch.inference_mode()
def generate_stream(
    model: LanguageModel,
    prompt: list[int],
    length: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[int]:
    """Continue `prompt` (token ids; empty: the start of the text) by `length` tokens, yielding each as it is drawn.

    `choose` maps next-token logits (1, V) to a token (1,) (temperature / top-k / top-p / greedy). The boundary
    token is never drawn: in a stream it only marks the start of the text. Each step costs what model.step costs:
    constant per character for models with a bounded context or a recurrent state.
    """
    model.eval()
    device = model.device
    state = model.init_state(1)
    logits = None
    for token in prompt or [BOUNDARY]:
        logits, state = model.step(torch.tensor([token], device=device), state)
    for _ in range(length):
        logits = logits.float().clone()  # (1, V)
        logits[:, BOUNDARY] = float("-inf")
        token = choose(logits)  # (1,)
        yield int(token)
        logits, state = model.step(token.to(device), state)


def stream_text(
    model: LanguageModel, vocab: Vocab, prompt: str, length: int, options: DecodeOptions, seed: int | None
) -> Iterator[str]:
    """Characters continuing `prompt` (empty: a new line, or the start of the text), one at a time."""
    generator = torch.Generator(device=model.device)
    generator.manual_seed(seed) if seed is not None else generator.seed()

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if options.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(filter_logits(logits, options), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    start = vocab.encode(prompt) if prompt else [vocab.stoi[c] for c in "\n" if c in vocab.stoi]
    for token in generate_stream(model, start, length, pick):
        yield vocab.chars[token - 1]
