"""The Python API: load a run, generate from it under constraints, score strings. Plain Python data in and out.

    import makemore
    run = makemore.load("runs/names-mlp")
    run.sample(n=5, prefix="ja", temperature=0.8, seed=0)   # ['jalen', 'jasmin', ...]
    run.sample(n=3, suffix="ette", only_new=True, details=True)   # dicts: item, log-probs, status, nearest, ...
    run.sample(n=3, suffix="ette", particles=50)            # closer to p(item | ends in "ette")
    run.best(k=3, prefix="mar")                            # exactly the 3 most probable items starting with "mar"
    run.beam(k=3, prefix="mar")                            # beam search: faster, approximate (may miss some)
    run.score(["emma", "xqz"])                             # [{'item': 'emma', 'logprob': -6.9, ...}, ...]
    run.evaluate(split="val")                              # {'val': {'nll': 2.1, 'bpc': 3.0, 'ppl': 8.2, ...}}

    story = makemore.load("runs/shakespeare")              # a stream-mode run continues text
    story.continue_text("ROMEO:", length=200, seed=1)      # 'ROMEO:' and the 200 characters drawn after it

The CLI's `makemore sample`, `eval` and `score` are thin layers over `Run.generate` (`Run.iter_text` for stream-mode
runs), `Run.evaluate` and `Run.score`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from makemore.api_labels import LabelledRun
from makemore.errors import MakemoreError
from makemore.generation.checks import (
    MAX_STREAM_LENGTH,
    check_generate_args,
    check_prefix_fits,
    check_search_args,
)
from makemore.generation.classify import conditioned
from makemore.generation.common import Generated
from makemore.generation.constraints import (
    Constraint,
    ConstraintSpec,
    Unsatisfiable,
    build_constraint,
    length_constraint,
)
from makemore.generation.evaluate import evaluate_run
from makemore.generation.novelty import NoveltyIndex
from makemore.generation.sample import DecodeOptions, decode, decode_smc
from makemore.generation.scoring import score_items
from makemore.generation.search import MAX_EXPANSIONS, beam_search, best_first_search
from makemore.generation.stream import stream_text
from makemore.jobs.knn import build_knn
from makemore.jobs.mix import mix_runs
from makemore.jobs.train import train
from makemore.models import LanguageModel
from makemore.runs import checkpoint as ckpt
from makemore.runs.info import describe_run

MAX_ROUND = 50_000  # most candidates drawn in one batch while filling a filtered request
STALE_ROUNDS = 5  # give up after this many rounds in a row that add nothing
# conditioning="auto": draw by rejection while at least this share of candidates meets the constraint (judged after
# REJECT_PROBE candidates); below it, masking fills the rest (rejection would cost more than 200 candidates an item)
REJECT_MIN_RATE = 0.005
REJECT_PROBE = 2000


@dataclass
class SampleResult:
    """What `Run.generate` returns: the items (dicts) and, when fewer than asked for, why."""

    items: list[dict[str, Any]]
    requested: int
    drawn: int = 0  # candidates generated
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    note: str | None = None  # why fewer than `requested` items were found (None when all were)


class Run(LabelledRun):
    """A trained run: its model (eval mode), vocabulary, and data splits for novelty checks."""

    def __init__(self, path: str | Path, spec: ckpt.RunSpec, model: LanguageModel):
        self.path = Path(path)
        self.spec = spec
        self.base_model = model
        self.model = conditioned(model, spec.data)  # a labelled run: p(item) = sum_k p(k) p(item | k) (api_labels)
        self._novelty: NoveltyIndex | None = None
        self._max_len: int | None = None
        self._constraints: dict[ConstraintSpec, Constraint] = {}  # compiled once per spec: repeated calls are cheap

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Run:
        from makemore.training.devices import resolve_device

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
        best: int | None = None,
        max_expansions: int = MAX_EXPANSIONS,
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
        label: str | dict[str, float] | None = None,
        blend: str = "mixture",
        label_guidance: float | None = None,
    ) -> SampleResult:
        """Generate items as dicts: n samples; or with `best`, exactly the `best` most probable items (best-first
        search, at most `max_expansions` prefixes expanded, else a MakemoreError); or with `beam`, `beam` probable
        items by beam search (approximate: it may miss some of the most probable). n is ignored by both searches.

        Items are never empty unless min_len=0 (data items never are).
        Each dict: item, logprob (under the model conditioned per step on the constraints), unconstrained_logprob,
        char_logprobs ([char, log-prob] pairs, the model's, "<end>" last), status (new / in-train / in-val-test),
        and, with `nearest`, the nearest item of any split (train, val or test) and its edit distance; beam items
        also carry `score`.
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

        `label` (labelled runs): draw given a label, or a blend such as "female=0.7,male=0.3" (`blend`: "mixture"
        or "embedding", see `under_label`); items then carry `label`. Without one, a labelled run draws from
        p(item) = sum_k p(k) p(item | k). `label_guidance` w (one label; default 1.5, 0 for exactly p(item | label))
        draws items more typical of the label (classifier-free guidance at every character; models.labels.Guided);
        an item's logprob is then under the guided model.
        """
        if label_guidance is not None and label is None:
            raise MakemoreError("--label-guidance: give a --label to guide towards")
        if label is not None:  # the same request, to this run conditioned on the label
            request = {k: v for k, v in locals().items() if k not in ("self", "label", "blend", "label_guidance")}
            result = self.under_label(label, blend, label_guidance).generate(**request)
            shown = label if isinstance(label, str) else ",".join(f"{k}={v:g}" for k, v in label.items())
            for item in result.items:
                item["label"] = shown
            return result
        if self.spec.data.get("mode") == "stream":
            raise MakemoreError(f"{self.path} is a stream-mode run: it continues text (Run.continue_text)")
        check_generate_args(
            n, temperature, top_k, top_p, seed, beam, beam_width, length_penalty, min_len, max_len, min_distance,
            max_attempts, particles, greedy, conditioning,
        )  # fmt: skip
        check_search_args(best, beam, beam_width, length_penalty, max_expansions, particles)
        max_len = self.default_max_len if max_len is None else max_len
        check_prefix_fits(prefix, max_len)
        requested = best if best is not None else beam if beam is not None else n
        spec = ConstraintSpec(
            max_len=max_len,
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

        if best is not None:
            return self._best(best, max_expansions, constraint, reject, nearest)
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

    def _best(
        self,
        k: int,
        max_expansions: int,
        constraint: Constraint,
        reject: Callable[[list[str]], list[str | None]],
        nearest: bool,
    ) -> SampleResult:
        """Exactly the k most probable items that satisfy the constraint and pass the filters (best-first search)."""

        def accept(ids: list[int]) -> bool:
            return not reject([self.vocab.decode(ids)])[0]

        found = best_first_search(self.model, k, constraint, accept=accept, max_expansions=max_expansions)
        note = None
        if len(found) < k:
            note = f"found {len(found)} of {k} items: no other item meets the constraints and filters"
        return SampleResult(self._describe(found, nearest), k, drawn=len(found), note=note)

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
        """`beam` probable items that satisfy the constraint and pass the filters (beam search: approximate)."""
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
                f" with beam width {width}; a wider beam (beam_width) or best-first search (best) may find more"
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
                        reasons[i] = f"within edit distance {min_distance - 1} of a data item"
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

    def best(self, k: int = 10, **options: Any) -> list[dict[str, Any]]:
        """Exactly the k most probable items (dicts with their log-probs), most probable first (best-first search).
        Options as in `generate`."""
        return self.generate(best=k, **options).items

    def beam(self, k: int = 10, **options: Any) -> list[dict[str, Any]]:
        """k probable items (dicts with their log-probs), best first, by beam search: faster than `best` but
        approximate (a narrow beam may miss some of the most probable items). Options as in `generate`."""
        return self.generate(beam=k, **options).items

    def score(
        self, items: str | Iterable[str], sort: bool = False, batch_size: int = 512, label: str | None = None
    ) -> list[dict[str, Any]]:
        """For each string: item, logprob (nats), nll_per_token, char_logprobs. `sort`: most plausible first.
        A bare string is one item (a list of one result), not a list of characters. `label`: given that label (or
        blend); a labelled run scores p(item) = sum_k p(k) p(item | k) without one."""
        if label is not None:
            return self.under_label(label).score(items, sort, batch_size)
        items = [items] if isinstance(items, str) else list(items)
        results = score_items(self.model, self.vocab, items, batch_size)
        if sort:
            results.sort(key=lambda r: r["nll_per_token"])
        return results

    def evaluate(
        self, split: str = "all", input_path: str | None = None, batch_size: int = 1024, stride: int | None = None
    ) -> dict[str, dict[str, Any]]:
        """NLL (nats/token), bits/char, perplexity and token count per split: train, val, test or all (the splits
        that have items; a stream-mode run's held-out ones), or of the file `input_path`. Stream-mode runs add how
        each character got its context, and take `stride` (see `makemore eval --stride`). An empty split raises."""
        return evaluate_run(self.path, self.spec, self.model, split, input_path, batch_size, stride)

    # ------------------------------------------------------------------------------------------ stream-mode runs
    def iter_text(
        self,
        prompt: str = "",
        length: int = 500,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        seed: int | None = None,
    ) -> Iterator[str]:
        """A stream-mode run's continuation of `prompt` (empty: the start of a line), one character at a time."""
        if self.spec.data.get("mode") != "stream":
            raise MakemoreError(f"{self.path} is a line-mode run: it generates items (Run.generate, Run.sample)")
        check_generate_args(
            1, temperature, top_k, top_p, seed, None, None, 0.0, 1, None, None, None, 1, greedy, "auto"
        )  # fmt: skip
        if not 1 <= length <= MAX_STREAM_LENGTH:
            raise MakemoreError(f"length must be between 1 and {MAX_STREAM_LENGTH:,}, got {length}")
        self.vocab.check(prompt, "prompt")
        options = DecodeOptions(temperature, top_k, top_p, greedy)
        return stream_text(self.model, self.vocab, prompt, length, options, seed)

    def continue_text(self, prompt: str = "", length: int = 500, **options: Any) -> str:
        """`prompt` followed by `length` characters drawn by a stream-mode run. Options as in `iter_text`."""
        return prompt + "".join(self.iter_text(prompt, length, **options))

    def __repr__(self) -> str:
        mode = self.spec.data.get("mode", "line")
        parameters = self.model.parameter_count()
        return f"Run({str(self.path)!r}, model={self.model_name}, parameters={parameters:,}, mode={mode})"


def load(run: str | Path, device: str = "cpu") -> Run:
    """Load a run directory for sampling and scoring (`device`: cpu, cuda, mps or auto)."""
    return Run.load(run, device)


__all__ = ["Run", "SampleResult", "build_knn", "describe_run", "load", "mix_runs", "train"]
