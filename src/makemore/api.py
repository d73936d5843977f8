"""The Python API: load a run, generate from it under constraints, score strings. Plain Python data in and out.

    import makemore
    run = makemore.load("runs/names-mlp")
    run.sample(n=5, prefix="ja", temperature=0.8, seed=0)   # ['jalen', 'jasmin', ...]
    run.sample(n=3, suffix="ette", only_new=True, details=True)   # dicts: item, log-probs, status, nearest, ...
    run.sample(n=3, suffix="ette", particles=50)            # closer to p(item | ends in "ette")
    run.beam(k=3, prefix="mar")                            # the 3 most probable items starting with "mar"
    run.score(["emma", "xqz"])                             # [{'item': 'emma', 'logprob': -6.9, ...}, ...]

The CLI's `makemore sample` and `makemore score` are thin layers over `Run.generate` and `Run.score`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from makemore.errors import MakemoreError
from makemore.generation.constraints import (
    Constraint,
    ConstraintSpec,
    Unsatisfiable,
    build_constraint,
    length_constraint,
)
from makemore.generation.novelty import NoveltyIndex
from makemore.generation.sample import DecodeOptions, Generated, beam_search, decode, decode_smc
from makemore.generation.scoring import score_items
from makemore.models import LanguageModel
from makemore.runs import checkpoint as ckpt

MAX_ROUND = 50_000  # most candidates drawn in one batch while filling a filtered request
MAX_ITEMS, MAX_BEAM, MAX_ITEM_LEN = 100_000, 10_000, 1 << 16  # limits on n; beam, width, particles; max_len
STALE_ROUNDS = 5  # give up after this many rounds in a row that add nothing
# conditioning="auto": draw by rejection while at least this share of candidates meets the constraint (judged after
# REJECT_PROBE candidates); below it, masking fills the rest (rejection would cost more than 200 candidates an item)
REJECT_MIN_RATE = 0.005
REJECT_PROBE = 2000
CONDITIONING = ("auto", "reject", "mask")


@dataclass
class SampleResult:
    """What `Run.generate` returns: the items (dicts) and, when fewer than asked for, why."""

    items: list[dict[str, Any]]
    requested: int
    drawn: int = 0  # candidates generated
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    note: str | None = None  # why fewer than `requested` items were found (None when all were)


def _check_generate_args(
    n: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None, beam: int | None,
    beam_width: int | None, length_penalty: float, min_len: int, max_len: int | None, min_distance: int | None,
    max_attempts: int | None, particles: int, greedy: bool, conditioning: str,
) -> None:  # fmt: skip
    """`Run.generate`'s arguments, checked: a one-line MakemoreError naming the first bad one."""
    _positive(n, "n", allow_none=False)
    # upper limits: a typo (an extra zero, a pasted number) should fail at once, not fill memory for minutes
    for value, name, limit in ((n, "n", MAX_ITEMS), (beam, "beam", MAX_BEAM), (beam_width, "beam_width", MAX_BEAM),
                               (particles, "particles", MAX_BEAM), (max_len, "max_len", MAX_ITEM_LEN)):  # fmt: skip
        if value is not None and value > limit:
            raise MakemoreError(f"{name} must be <= {limit:,}, got {value}")
    if seed is not None and not 0 <= seed < 1 << 63:
        raise MakemoreError(f"seed must be in 0..2**63-1, got {seed}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise MakemoreError(f"temperature must be > 0 and finite, got {temperature}")
    _positive(top_k, "top_k")
    if top_p is not None and not 0 < top_p <= 1:
        raise MakemoreError(f"top_p must be in (0, 1], got {top_p}")
    _positive(beam, "beam")
    _positive(beam_width, "beam_width")
    _positive(min_distance, "min_distance")
    _positive(max_attempts, "max_attempts")
    _positive(particles, "particles", allow_none=False)
    if conditioning not in CONDITIONING:
        raise MakemoreError(f"conditioning must be one of {', '.join(CONDITIONING)}, got {conditioning!r}")
    if particles > 1 and (greedy or beam or top_k or top_p is not None):
        raise MakemoreError("particles (sequential Monte Carlo) works with sampling and temperature only")
    if not (length_penalty >= 0 and math.isfinite(length_penalty)):
        raise MakemoreError(f"length_penalty must be >= 0, got {length_penalty}")
    if min_len < 0:
        raise MakemoreError(f"min_len must be >= 0, got {min_len}")


def _positive(value: float | None, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or not value >= 1:
        raise MakemoreError(f"{name} must be >= 1, got {value}")


class Run:
    """A trained run: its model (eval mode), vocabulary, and data splits for novelty checks."""

    def __init__(self, path: str | Path, spec: ckpt.RunSpec, model: LanguageModel):
        self.path = Path(path)
        self.spec = spec
        self.model = model
        self._novelty: NoveltyIndex | None = None
        self._max_len: int | None = None
        self._constraints: dict[ConstraintSpec, Constraint] = {}  # compiled once per spec: repeated calls are cheap

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Run:
        from makemore.training.trainer import resolve_device

        spec, model = ckpt.load_model(path, resolve_device(device))
        return cls(path, spec, model)

    @property
    def vocab(self):
        return self.spec.vocab

    @property
    def model_name(self) -> str:
        return self.spec.model_name

    @property
    def novelty(self) -> NoveltyIndex:
        if self._novelty is None:
            held_out = ckpt.read_split_items(self.path, "val") + ckpt.read_split_items(self.path, "test")
            self._novelty = NoveltyIndex(ckpt.read_split_items(self.path, "train"), held_out)
        return self._novelty

    @property
    def default_max_len(self) -> int:
        """Twice the longest training item (the data's own limit when the run records one)."""
        if self._max_len is None:
            if "max_len" in self.spec.data:
                self._max_len = int(self.spec.data["max_len"])
            else:
                self._max_len = 2 * max((len(item) for item in self.novelty.train_list), default=16)
        return self._max_len

    def constraint(self, spec: ConstraintSpec) -> Constraint:
        """`spec` compiled for this run's vocabulary (cached; see constraints.py)."""
        if spec not in self._constraints:
            self._constraints[spec] = build_constraint(spec, self.vocab).to(self.model.device)
        return self._constraints[spec]

    # ------------------------------------------------------------------------------------------------- generate
    def generate(
        self,
        n: int = 20,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        seed: int | None = None,
        beam: int | None = None,
        beam_width: int | None = None,
        length_penalty: float = 0.0,
        prefix: str = "",
        suffix: str = "",
        contains: Iterable[str] = (),
        regex: str | None = None,
        charset: str | None = None,
        min_len: int = 1,
        max_len: int | None = None,
        only_new: bool = False,
        unique: bool = False,
        exclude: Iterable[str] = (),
        min_distance: int | None = None,
        max_attempts: int | None = None,
        particles: int = 1,
        nearest: bool = True,
        logprobs: bool = True,
        conditioning: str = "auto",
    ) -> SampleResult:
        """Generate items as dicts. With `beam`, the `beam` most probable items (n is ignored); else n samples.

        Items are never empty unless min_len=0 (data items never are).
        Each dict: item, logprob (under the model conditioned per step on the constraints), unconstrained_logprob,
        char_logprobs ([char, log-prob] pairs, the model's, "<end>" last), status (new / in-train / in-val-test),
        and, with `nearest`, the nearest training item and its edit distance; beam items also carry `score`.
        `logprobs=False` skips the log-probabilities (nan; a little faster) unless resampling needs them.
        Constraints are exact (see constraints.py); filters (only_new, unique, exclude, min_distance) draw more
        candidates until n pass or `max_attempts` candidates (default max(1000, 100 n)) were drawn.

        Masking draws from the model renormalised step by step on the constraint, which over-weights items whose
        early characters made the constraint hard to meet (e.g. long items that end in a rare suffix only when
        forced). `particles=M` corrects this by sequential Monte Carlo (sample.decode_smc): as M grows, items follow
        the model's own distribution (at `temperature`) conditioned on the constraint; it costs M times the work.

        `conditioning`: "mask" as above; "reject" draws items given only the prefix (and the length bounds) and keeps
        those that meet every constraint: exactly the model conditioned on the constraint, at the cost of the
        candidates it discards; "auto" (default) rejects while at least 0.5% of candidates pass and masks the
        rest, whenever there is more than a prefix and lengths to meet (those are masked exactly either way) and
        neither greedy nor particles was asked for. An item drawn by rejection reports as `logprob` its log-prob
        given the prefix.
        """
        if self.spec.data.get("mode") == "stream":
            raise MakemoreError(f"{self.path} is a stream-mode run: it continues text (makemore sample --prompt)")
        _check_generate_args(
            n, temperature, top_k, top_p, seed, beam, beam_width, length_penalty, min_len, max_len, min_distance,
            max_attempts, particles, greedy, conditioning,
        )  # fmt: skip
        requested = beam if beam is not None else n
        spec = ConstraintSpec(
            max_len=self.default_max_len if max_len is None else max_len,
            prefix=prefix,
            suffix=suffix,
            contains=tuple(contains),
            regex=regex,
            charset=charset,
            min_len=min_len,
        )
        try:
            constraint = self.constraint(spec)
        except Unsatisfiable as error:
            return SampleResult([], requested, note=f"found 0 of {requested} items: {error}")
        exclude = set(exclude)
        reject = self._rejecter(only_new, exclude, min_distance)

        if beam is not None:
            return self._beam(beam, beam_width or beam, length_penalty, constraint, spec, reject, nearest)

        options = DecodeOptions(temperature, top_k, top_p, greedy)
        generator = torch.Generator(device=self.model.device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
        budget = max_attempts or max(1000, 100 * n)
        rejecting = conditioning == "reject" or (
            conditioning == "auto" and not constraint.trivial and particles == 1 and not greedy
        )
        # candidates for rejection: the model given the prefix (and, unless empty items are allowed, not empty). Their
        # end is forced one character past max_len, so every candidate short enough to pass ended on its own
        proposal = None
        filtering = only_new or unique or bool(exclude) or min_distance is not None or rejecting
        tried_rejection = rejecting
        accepted: list[Generated] = []
        seen: set[str] = set()
        rejected: Counter[str] = Counter()
        drawn = stale = by_rejection = met = 0
        phase_drawn = phase_accepted = 0  # since the switch from rejection to masking (auto), if any
        # rejection at the lowest rate it accepts needs 1 / REJECT_MIN_RATE candidates an item, filters aside
        phase_budget = max(budget, math.ceil(1.25 * n / REJECT_MIN_RATE)) if rejecting and not max_attempts else budget
        while len(accepted) < n:
            need = n - len(accepted)
            rate = (len(accepted) - phase_accepted + 1) / (phase_drawn + 1) if phase_drawn else 1.0
            exhausted = phase_drawn >= phase_budget or stale >= STALE_ROUNDS
            rare = phase_drawn >= min(REJECT_PROBE, phase_budget) and (met + 1) / (phase_drawn + 1) < REJECT_MIN_RATE
            if rejecting and conditioning == "auto" and (exhausted or rare):
                rejecting, stale = False, 0  # too rare to find by chance: mask for the rest
                phase_drawn, phase_accepted, phase_budget = 0, len(accepted), budget
                filtering = only_new or unique or bool(exclude) or min_distance is not None
                continue
            if exhausted:
                break
            size = need if not filtering else min(phase_budget - phase_drawn, max(need, math.ceil(1.2 * need / rate)))
            if rejecting:
                size = max(size, min(phase_budget - phase_drawn, REJECT_PROBE // 4))  # enough to see a rare match
            size = min(size, max(1, MAX_ROUND // particles))  # bounded memory per batch
            if rejecting:
                if proposal is None:
                    proposal = length_constraint(
                        self.vocab.size, constraint.max_len + 1, constraint.prefix_ids, min(min_len, 1)
                    )
                batch = decode(self.model, size, proposal, options, generator, logprobs)
                matches = [constraint.accepts(g.ids) for g in batch]
                met += sum(matches)
                rejected["constraint not met (rejection)"] += len(batch) - sum(matches)
                batch = [g for g, ok in zip(batch, matches) if ok]
            elif particles > 1:
                batch = decode_smc(self.model, size, particles, constraint, temperature, generator)
            else:
                batch = decode(self.model, size, constraint, options, generator, logprobs)
            drawn += size
            phase_drawn += size
            texts = [self.vocab.decode(g.ids) for g in batch]
            reasons = reject(texts)
            before = len(accepted)
            for generated, text, reason in zip(batch, texts, reasons):
                if reason is None and unique and text in seen:
                    reason = "duplicate"
                if reason is not None:
                    rejected[reason] += 1
                    continue
                seen.add(text)
                accepted.append(generated)
                by_rejection += rejecting
                if len(accepted) == n:
                    break
            stale = stale + 1 if len(accepted) == before else 0
            if greedy and filtering:  # every retry would give the same item
                break
        note = None
        if len(accepted) < n:
            why = ", ".join(f"{count} {reason}" for reason, count in rejected.most_common())
            stop = (
                "greedy decoding gives the same item every time"
                if greedy
                else (f"gave up after {drawn} candidates" + (" (no progress)" if stale >= STALE_ROUNDS else ""))
            )
            note = f"found {len(accepted)} of {n} items: {stop}; rejected: {why or 'none'}"
        if tried_rejection and by_rejection < len(accepted):
            masked = len(accepted) - by_rejection
            mixed = f"{by_rejection} items drawn by rejection (exact), {masked} by masking (the constraint is rare)"
            note = f"{note}; {mixed}" if note else mixed
        return SampleResult(self._describe(accepted, nearest), n, drawn, dict(rejected), note)

    def _beam(
        self,
        beam: int,
        width: int,
        length_penalty: float,
        constraint: Constraint,
        spec: ConstraintSpec,
        reject: Callable[[list[str]], list[str | None]],
        nearest: bool,
    ) -> SampleResult:
        """The `beam` most probable items that satisfy the constraint and pass the filters (beam search)."""
        if width < beam:
            raise MakemoreError(f"beam_width ({width}) must be at least beam ({beam})")
        found = beam_search(
            self.model,
            beam,
            constraint,
            width=width,
            length_penalty=length_penalty,
            accept=lambda ids: not reject([self.vocab.decode(ids)])[0],
        )
        items = self._describe(found, nearest)
        note = None
        if len(items) < beam:
            note = (
                f"beam search found {len(items)} items that satisfy {', '.join(spec.flags())}"
                f" with beam width {width}; a wider beam (beam_width) may find more"
            )
        return SampleResult(items, beam, drawn=len(items), note=note)

    def _rejecter(
        self, only_new: bool, exclude: set[str], min_distance: int | None
    ) -> Callable[[list[str]], list[str | None]]:
        """A batched filter: for each text, the reason it is rejected, or None."""

        def reject(texts: list[str]) -> list[str | None]:
            reasons: list[str | None] = []
            for text in texts:
                if text in exclude:
                    reasons.append("excluded")
                elif only_new and (status := self.novelty.status(text)) != "new":
                    reasons.append(status)
                else:
                    reasons.append(None)
            if min_distance is not None:
                open_rows = [i for i, reason in enumerate(reasons) if reason is None]
                found = self.novelty.nearest([texts[i] for i in open_rows], max_distance=min_distance - 1)
                for i, (_, distance) in zip(open_rows, found):
                    if distance < min_distance:
                        reasons[i] = f"within edit distance {min_distance - 1} of a training item"
            return reasons

        return reject

    def _describe(self, generated: list[Generated], nearest: bool) -> list[dict[str, Any]]:
        texts = [self.vocab.decode(g.ids) for g in generated]
        matches = self.novelty.nearest(texts) if nearest and generated else [None] * len(generated)
        out = []
        for g, text, match in zip(generated, texts, matches):
            item: dict[str, Any] = {
                "item": text,
                "logprob": g.logprob,
                "unconstrained_logprob": g.model_logprob,
                "char_logprobs": [[c, lp] for c, lp in zip(list(text) + ["<end>"], g.token_logprobs)],
                "status": self.novelty.status(text),
            }
            if match is not None:
                item["nearest"], item["distance"] = match if match[0] is not None else (None, None)
            if g.score is not None:
                item["score"] = g.score
            out.append(item)
        return out

    # ------------------------------------------------------------------------------------------ plain wrappers
    def sample(
        self, n: int = 10, *, prefix: str = "", temperature: float = 1.0, details: bool = False, **options: Any
    ) -> list[str] | list[dict[str, Any]]:
        """n items (strings; dicts with `details=True`). Options as in `generate`. Fewer items than n only when a
        filter or constraint cannot be met; `generate` says why."""
        result = self.generate(n, prefix=prefix, temperature=temperature, nearest=details, logprobs=details, **options)
        return result.items if details else [item["item"] for item in result.items]

    def beam(self, k: int = 10, **options: Any) -> list[dict[str, Any]]:
        """The k most probable items (dicts with their log-probs), best first. Options as in `generate`."""
        return self.generate(beam=k, **options).items

    def score(self, items: list[str], sort: bool = False, batch_size: int = 512) -> list[dict[str, Any]]:
        """For each string: item, logprob (nats), nll_per_token, char_logprobs. `sort`: most plausible first."""
        results = score_items(self.model, self.vocab, list(items), batch_size)
        if sort:
            results.sort(key=lambda r: r["nll_per_token"])
        return results


def load(run: str | Path, device: str = "cpu") -> Run:
    """Load a run directory for sampling and scoring (`device`: cpu, cuda, mps or auto)."""
    return Run.load(run, device)
