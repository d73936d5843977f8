"""Constraints on generated items, enforced exactly inside the sampler by masking logits.

Every constraint on the *text* of an item is compiled into one deterministic finite automaton (DFA) over the
model's token ids:

    --regex PATTERN     the item must fully match PATTERN (compiled to a DFA with `interegular`)
    --suffix STR        the regex  .*STR     (STR escaped: every character is a literal)
    --contains STR      the regex  .*STR.*   (repeatable: all must occur)
    --charset CHARS     the DFA's alphabet is only CHARS: other characters have no transition
    --prefix STR        fed to the model before sampling and run through the DFA first

and the DFA is intersected (product construction) with the length window --min-len / --max-len. Before sampling,
a backward pass computes `viable[t, s]`: can an item that is in DFA state s after t characters still be completed
into an accepted item of length in [min_len, max_len]? At each step the sampler allows a character only if it
leads to a viable state at t + 1, and the end token only if s accepts and t >= min_len. Every state the sampler
visits is therefore viable, so it never gets stuck and *every* output satisfies every constraint: the constraints
are exact, not generate-and-reject.

Masking changes the distribution: items are drawn from the model conditioned step by step on the constraint (the
allowed next-token probabilities are renormalised at each step). This is not the same as the model's distribution
conditioned on the whole constraint, which would need look-ahead over all completions; the sampler reports each
item's unconstrained log-probability as well, so both are visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from makemore.data.lines import BOUNDARY, Vocab
from makemore.errors import MakemoreError

MAX_DFA_STATES = 50_000


@dataclass(frozen=True)
class ConstraintSpec:
    """What the user asked for, as text. Lengths count characters of the whole item, the prefix included."""

    max_len: int
    prefix: str = ""
    suffix: str = ""
    contains: tuple[str, ...] = ()
    regex: str | None = None
    charset: str | None = None
    min_len: int = 0

    def flags(self) -> list[str]:
        """The constraints as the CLI flags that express them (for messages)."""
        parts = []
        if self.prefix:
            parts.append(f"--prefix {self.prefix!r}")
        if self.suffix:
            parts.append(f"--suffix {self.suffix!r}")
        parts += [f"--contains {text!r}" for text in self.contains]
        if self.regex is not None:
            parts.append(f"--regex {self.regex!r}")
        if self.charset is not None:
            parts.append(f"--charset {self.charset!r}")
        if self.min_len:
            parts.append(f"--min-len {self.min_len}")
        parts.append(f"--max-len {self.max_len}")
        return parts


class Unsatisfiable(MakemoreError):
    """No item of the allowed lengths satisfies the constraints (the automaton accepts nothing)."""


def _strip_anchors(pattern: str) -> str:
    """Items must match the whole pattern anyway, so a leading ^ and a trailing unescaped $ are redundant."""
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$"):
        body = pattern[:-1]
        if (len(body) - len(body.rstrip("\\"))) % 2 == 0:  # an even number of backslashes: the $ is an anchor
            pattern = body
    return pattern


def _char_groups(node) -> list:
    """Every character class (literal, [set], escape) in an interegular pattern tree."""
    from interegular import patterns

    if isinstance(node, patterns._CharGroup):
        return [node]
    found = []
    for name in ("options", "parts", "base", "inner"):
        child = getattr(node, name, None)
        if child is None:
            continue
        for item in child if isinstance(child, (tuple, list)) else (child,):
            found += _char_groups(item)
    return found


def compile_regex(pattern: str, vocab: Vocab, what: str = "--regex"):
    """An interegular FSM for `pattern`; characters the vocabulary lacks raise a one-line MakemoreError."""
    import interegular

    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise MakemoreError(f"{what} {pattern!r}: invalid regular expression ({error})") from None
    try:
        parsed = interegular.parse_pattern(_strip_anchors(pattern))
        fsm = parsed.to_fsm()
    except Exception as error:  # interegular raises its own Unsupported/ValueError types
        raise MakemoreError(f"{what} {pattern!r}: cannot be compiled to an automaton ({error})") from None
    ignore_case = bool(compiled.flags & re.IGNORECASE)
    missing = set()
    for group in _char_groups(parsed):
        if group.negated:
            continue
        chars = set(group.chars)
        if ignore_case:
            chars |= {c.swapcase() for c in chars}
        if chars and not any(c in vocab.stoi for c in chars):
            missing |= set(group.chars)
    if missing:
        shown = " ".join(repr(c) for c in sorted(missing)[:10])
        raise MakemoreError(f"{what} {pattern!r} uses characters not in the model's vocabulary: {shown}")
    return fsm


def _transition(fsm, state, char: str):
    """interegular's next state, or None (dead)."""
    if state is None:
        return None
    try:
        symbol = fsm.alphabet[char]
    except KeyError:
        return None
    return fsm.map.get(state, {}).get(symbol)


@dataclass
class Constraint:
    """A compiled constraint: a DFA over token ids, a length window and the prefix, as tensors for the sampler.

    trans (S + 1, V): next state per (state, token); row S is the dead sink, and the boundary column leads there.
    accept (S + 1,): accepting states.  viable (max_len + 2, S + 1): see the module docstring.
    """

    spec: ConstraintSpec
    prefix_ids: list[int]
    start: int  # DFA state after the prefix
    trans: torch.Tensor
    accept: torch.Tensor
    viable: torch.Tensor
    trivial: bool  # no text constraint (one-state automaton): only the lengths can mask anything
    _tables: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def min_len(self) -> int:
        return self.spec.min_len

    @property
    def max_len(self) -> int:
        return self.spec.max_len

    def to(self, device: torch.device | str) -> Constraint:
        if self.trans.device == torch.device(device):
            return self  # keeps the cached per-length tables
        return Constraint(
            self.spec,
            self.prefix_ids,
            self.start,
            self.trans.to(device),
            self.accept.to(device),
            self.viable.to(device),
            self.trivial,
        )

    def initial_states(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.start, dtype=torch.long, device=self.trans.device)

    def allowed_table(self, t: int) -> torch.Tensor:
        """(S + 1, V) bool: which tokens a row in each state may emit when its item has t characters."""
        table = self._tables.get(t)
        if table is None:
            table = self.viable[min(t + 1, self.max_len + 1)][self.trans]  # (S + 1, V) the next state is viable
            if t + 1 > self.max_len:
                table = torch.zeros_like(table)
            table[:, BOUNDARY] = self.accept & (t >= self.min_len)
            self._tables[t] = table
        return table

    def allowed(self, states: torch.Tensor, t: int) -> torch.Tensor:
        """(B, V) bool mask for rows in DFA `states` (B,) whose items have t characters so far."""
        return self.allowed_table(t).index_select(0, states)

    def advance(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.trans[states, tokens]

    def accepts(self, ids: list[int]) -> bool:
        """Whether a whole item (token ids, prefix included) satisfies the constraint. For tests and filters."""
        if not (self.min_len <= len(ids) <= self.max_len) or ids[: len(self.prefix_ids)] != self.prefix_ids:
            return False
        state = 0
        for token in ids:
            state = int(self.trans[state, token])
        return bool(self.accept[state])


def build_constraint(spec: ConstraintSpec, vocab: Vocab) -> Constraint:
    """Compile `spec` for `vocab`. Raises MakemoreError for characters outside the vocabulary and bad values,
    and Unsatisfiable (a MakemoreError) when no item can meet the constraints."""
    if spec.max_len < 1:
        raise MakemoreError(f"--max-len must be >= 1, got {spec.max_len}")
    if spec.min_len < 0 or spec.min_len > spec.max_len:
        raise MakemoreError(f"--min-len must be between 0 and --max-len ({spec.max_len}), got {spec.min_len}")
    vocab.check(spec.prefix, "--prefix")
    vocab.check(spec.suffix, "--suffix")
    for text in spec.contains:
        if not text:
            raise MakemoreError("--contains needs a non-empty string")
        vocab.check(text, "--contains")
    alphabet = list(vocab.chars)
    if spec.charset is not None:
        if not spec.charset:
            raise MakemoreError("--charset needs at least one character")
        vocab.check(spec.charset, "--charset")
        alphabet = [c for c in alphabet if c in set(spec.charset)]

    fsms = []
    if spec.regex is not None:
        fsms.append(compile_regex(spec.regex, vocab))
    if spec.suffix:
        fsms.append(compile_regex(".*" + re.escape(spec.suffix), vocab, "--suffix"))
    for text in spec.contains:
        fsms.append(compile_regex(".*" + re.escape(text) + ".*", vocab, "--contains"))

    # Product construction over the vocabulary's characters, breadth first from the joint initial state.
    start = tuple(fsm.initial for fsm in fsms)
    index = {start: 0}
    order = [start]
    edges: list[dict[int, int]] = []
    position = 0
    while position < len(order):
        state = order[position]
        position += 1
        out: dict[int, int] = {}
        for char in alphabet:
            nxt = tuple(_transition(fsm, s, char) for fsm, s in zip(fsms, state))
            if any(s is None for s in nxt):
                continue
            if nxt not in index:
                if len(order) >= MAX_DFA_STATES:
                    raise MakemoreError(f"the constraints need more than {MAX_DFA_STATES} automaton states")
                index[nxt] = len(order)
                order.append(nxt)
            out[vocab.stoi[char]] = index[nxt]
        edges.append(out)

    S, V = len(order), vocab.size
    trans = torch.full((S + 1, V), S, dtype=torch.long)  # everything leads to the sink S unless listed
    for s, out in enumerate(edges):
        if out:
            trans[s, list(out)] = torch.tensor(list(out.values()), dtype=torch.long)
    accept = torch.zeros(S + 1, dtype=torch.bool)
    for s, state in enumerate(order):
        accept[s] = all(sub in fsm.finals for fsm, sub in zip(fsms, state))

    # viable[t, s]: from state s with t characters, an accepted item of length in [min_len, max_len] is reachable.
    viable = torch.zeros(spec.max_len + 2, S + 1, dtype=torch.bool)
    lengths_ok = torch.arange(spec.max_len + 1) >= spec.min_len
    for t in range(spec.max_len, -1, -1):
        viable[t] = (accept & lengths_ok[t]) | viable[t + 1][trans].any(dim=1)
        viable[t, S] = False

    prefix_ids = [vocab.stoi[c] for c in spec.prefix]
    state = 0
    for token in prefix_ids:
        state = int(trans[state, token])
    constraint = Constraint(
        spec=spec,
        prefix_ids=prefix_ids,
        start=state,
        trans=trans,
        accept=accept,
        viable=viable,
        trivial=not fsms and spec.charset is None,
    )
    if len(spec.prefix) > spec.max_len or not bool(viable[len(prefix_ids), state]):
        raise Unsatisfiable(_why_unsatisfiable(spec, trans, accept, state, len(prefix_ids)))
    return constraint


def _why_unsatisfiable(spec: ConstraintSpec, trans: torch.Tensor, accept: torch.Tensor, state: int, t: int) -> str:
    """A one-line reason, naming the constraints involved and, if only the lengths are at fault, the lengths."""
    text_flags = [f for f in spec.flags() if not f.startswith(("--min-len", "--max-len"))]
    together = ", ".join(text_flags)
    if len(spec.prefix) > spec.max_len:
        return f"--prefix is {len(spec.prefix)} characters, longer than --max-len {spec.max_len}"
    S = trans.size(0) - 1
    if state == S:
        return f"no item can satisfy {together}: the prefix already rules out a match"
    # Breadth-first over item lengths without the length window: which lengths can an accepted item have?
    frontier = torch.zeros(S + 1, dtype=torch.bool)
    frontier[state] = True
    lengths = []
    for length in range(t, t + S + spec.max_len + 1):
        if bool((frontier & accept).any()):
            lengths.append(length)
            if len(lengths) > 6:
                break
        nxt = torch.zeros_like(frontier)
        nxt[trans[frontier].flatten()] = True
        nxt[S] = False
        frontier = nxt
        if not bool(frontier.any()):
            break
    if not lengths:
        return f"no item over the model's vocabulary satisfies {together}"
    window = f"{spec.min_len}..{spec.max_len}"
    shown = ", ".join(str(n) for n in lengths[:6]) + (", ..." if len(lengths) > 6 else "")
    return f"items satisfying {together} have lengths {shown}, none within --min-len/--max-len {window}"


def length_constraint(
    vocab_size: int, max_len: int, prefix_ids: list[int] | None = None, min_len: int = 0
) -> Constraint:
    """Only a prefix (token ids) and lengths, built without a vocabulary: a one-state automaton."""
    prefix_ids = list(prefix_ids or [])
    max_len = max(max_len, len(prefix_ids))
    min_len = min(min_len, max_len)
    trans = torch.zeros(2, vocab_size, dtype=torch.long)
    trans[:, BOUNDARY] = 1
    trans[1] = 1
    accept = torch.tensor([True, False])
    viable = torch.zeros(max_len + 2, 2, dtype=torch.bool)
    viable[: max_len + 1, 0] = True
    spec = ConstraintSpec(max_len=max_len, prefix="\0" * len(prefix_ids), min_len=min_len)
    return Constraint(spec, prefix_ids, 0, trans, accept, viable, trivial=True)
