"""`--model auto`: the plan, as a pure function of a summary of the data, the time budget and the device kind.

The plan is a Kneser-Ney n-gram (fitted first, in seconds: a usable model at once) and a few neural members trained
one after another, each a normal run, mixed at the end with weights fitted on val (linear by EM or log-linear,
whichever fits val better; a member that adds nothing gets weight ~0, so the mix is never worse on val than the
n-gram alone). The rules, and the measurements behind them
(2-core CPU; docs/auto.md has the tables):

- **Which families.** Short items (names, words): the GRU first, then the Transformer, then the LSTM, the order
  of their 10-minute val NLL on names (GRU 1.915, Transformer 1.924, LSTM 1.926, WaveNet 1.952); then those three
  again with other seeds, then the WaveNet. On short items a mixture gains most from members that differ, so the
  second member is the other kind of network. Prose
  or long items (stream mode, or items averaging over 40 characters): the Transformer first, then the GRU.
- **How many, and side by side or not.** None under MIN_MEMBER_SECONDS of neural time (a member trained for less
  is worth little next to the n-gram). Short items on a CPU: one member per core side by side (a small network's
  step does not use two cores well), each for at most about MEMBER_PASSES passes over train, and as many waves as
  the budget buys such members (names in 30 minutes: 4 waves of 2; the three strongest families, then each
  again with another seed). Prose is never learned to the end in such
  budgets, so one member takes every core for the whole time rather than several weak ones side by side (Tiny
  Shakespeare, 9 minutes on one core each: GRU 1.573, the Transformer's stream preset 1.665, mixed with KN 1.4465,
  a gain of only 0.042 over KN's 1.489; the stream preset alone on both cores, mixed with KN: 1.4282 in 10
  minutes). Its val still falls at 30 minutes (alone: 1.529 at 9 minutes, 1.474 at 15, 1.431 at 28), while a third
  member added 0.004 to a mix of KN and a 15-minute Transformer, so a second member only from an hour
  (PROSE_MORE_MEMBERS_FROM). One after another (a GPU, one core): a second member from 4 minutes,
  a third from 20, a fourth from 40 (MORE_MEMBERS_FROM).
- **How big and how regularised** follows how many passes over the training data the budget buys (`epochs`,
  estimated from a conservative throughput per device kind; never measured, so the plan is the same on every run):
  under 3 passes nothing overfits, so no dropout and a light weight decay; over 30 passes the family's own dropout;
  over 100 (small data) a tight early stop (patience 4) ends the member once val stops improving, and the time it
  saves goes to the members after it; below that the family's own, looser patience applies (EARLY_STOP_PASSES).
  Small data (under SMALL_TOKENS training tokens) gets narrower networks.
- **How the budget is split.** Equal shares of what is left after the n-gram, minus a reserve for loading, the
  final evaluation of each member and the mix; a member that stops early passes its time on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from makemore.models.knn_search import KEYS_PER_CELL, PROBES, cells_for
from makemore.models.transformer import TransformerConfig
from makemore.training.schedule import TIME_SHARE

# Below this a neural member is not worth its start-up (names: a 100 s GRU alone, val 1.982, is worse than Kneser-Ney,
# 1.967, yet takes 0.23 of the mix's weight; far shorter members were not measured)
MIN_MEMBER_SECONDS = 45.0
FAST_SECONDS = 240.0  # a shorter share: the Transformer's fast preset, and it goes first on short items
MORE_MEMBERS_FROM = (240.0, 1200.0, 2400.0)  # one at a time: neural seconds from which a 2nd, 3rd, 4th member
PROSE_MORE_MEMBERS_FROM = (3600.0, 7200.0)  # prose (one at a time, every core): a 2nd and 3rd member
MAX_SLOTS = 4  # members side by side at most
MAX_MEMBERS = 8  # a plan's neural members at most
# Side by side: a member trains for about this many passes over train at most (at THROUGHPUT); a budget that buys
# more trains more members in more waves, up to MAX_WAVES. Names (182k tokens, one core each, 30 minutes): the
# GRU's val was 1.931 at 418 s (~34 passes) and 1.923 at 792 s, the Transformer's 1.932 at 450 s and no better
# after, the LSTM's best 1.933 at 201 s; members that train on past that mostly overfit.
MEMBER_PASSES = 30.0
MAX_WAVES = 4
# A tight early stop (4 evaluations without improvement) only from this many passes on (small data, overfitted
# within minutes). Below it the family's own patience applies (10 evaluations of 500 steps): on names in 30 minutes
# a patience of 4 ended members at 376-685 s of their 892, while the learning rate was high (GRU 1.9289; with the
# family's 10: 1.9230 at 792 s); the best weights are kept either way.
EARLY_STOP_PASSES = 100.0
SMALL_TOKENS = 100_000  # fewer training tokens than this: narrower networks (they overfit in a few epochs)
LONG_ITEMS = 40.0  # mean item length (chars) above which items are treated like prose
# Line mode: the Transformer's context holds the longest training item (its start token and characters), up to
# this. A longer item is read through a sliding window: every position past the context runs the whole network
# again. Its registry context of 32 made the held-out identifiers (items up to 40 characters) train at 2.1k tokens/s
# against names' 12.6k (session 8), 730 steps in 500 s.
MAX_ITEM_CONTEXT = 256
# Conservative training throughput, tokens per second (one process, the family's registry settings), used only to
# estimate the passes over the data a budget buys. 2-core CPU: GRU 13.7k, Transformer 14.5k (--preset fast, a busy
# machine) to 36-39k (quiet).
THROUGHPUT = {"cpu": 15_000.0, "cuda": 300_000.0, "mps": 60_000.0}
# per member: start-up, the results' val evaluation and saving (measured between the waves of names in 30 minutes:
# 8-10 s beyond the members' time budgets)
RESERVE_SECONDS = 12.0


def member_budget(share: float) -> float:
    """A member's --time-budget for `share` seconds of training: a time budget fits its schedule into TIME_SHARE of
    the budget (slack for a run that slows down; the final evaluation has its own room), which would leave that
    slack unused next to the member's own reserve (Tiny Shakespeare, 600 s: the command ended at 542 s), so the
    member may use its reserve too, never more."""
    return min(share / TIME_SHARE, share + RESERVE_SECONDS)


def wave_budget(seconds_left: float, end_reserve: float, waves_left: int) -> float:
    """Each member's --time-budget in the next of `waves_left` waves: equal shares of the seconds left before the
    deadline, less the end's reserve (memories, mix) and each member's RESERVE_SECONDS. An earlier wave's members may
    train into their reserve (member_budget): a member whose schedule ends early passes its time on to the next
    wave, planned from the clock. The last wave's may not: their start-up and results must end within the deadline
    (names in 30 minutes ended at 1,802 s when they did)."""
    share = (seconds_left - end_reserve) / waves_left - RESERVE_SECONDS
    return round(max(member_budget(share) if waves_left > 1 else share, 10.0), 1)


def mix_reserve(summary: DataSummary, budget: float) -> float:
    """Seconds kept for the end: every member's log-probs of val (about an eighth of train) and the fit.
    Surnames (71k items), a busy 2-core CPU: three members' mixes took ~30 s. In line mode the log-linear fit reads
    every member's whole distribution at every val token, so it grows with tokens x alphabet (quiet 2 cores, three
    members: e-mail addresses, 581k tokens and 40 symbols, 15-20 s; identifiers, 465k and 63, 21-23 s)."""
    per_token = 7e-7 * (summary.alphabet + 1) if summary.mode == "line" else 2e-5
    return min(5.0 + per_token * summary.train_tokens, 0.1 * budget)


# A memory of a recurrent member's training states (models/knn.py, `makemore knn`) once the members are trained: its
# build reads the network at every training position and twice over val, finds its principal axes and its k-means
# cells, and searches the neighbours of every val state. Measured on 2 cores: names (182k training tokens, 50k
# distinct states, exact search) 8-10 s; e-mail addresses (581k tokens, 403k states in 1,024 cells) 35 s, of which
# the val search ~8 s. The mix then searches val once more.
MEMORY_FAMILIES = ("rnn", "gru", "lstm")
MEMORY_TOKENS = 1 << 20  # training tokens at most: one key per distinct state (jobs/knn.py MAX_KEYS)
MEMORY_SHARE = 0.15  # of the budget, at most, per memory
MEMORY_SECONDS = (0.5, 4e-5)  # fixed; per training token (states, principal axes, cells, the network on val)
DISTANCE_SECONDS = (8e-9, 3e-8)  # per distance of the two val searches: exact; in cells (a loop over cells)


def memory_seconds(summary: DataSummary) -> float:
    """The estimated seconds of one memory (its build and its search in the mix), val taken as an eighth of train
    and every training position as a distinct state (upper bounds: fewer states make fewer, fuller cells). The
    default job (29k tokens): ~2.5 s (measured: 1 s and a mix); names ~12 s (9 s and a mix); e-mail addresses
    ~46 s (28-32 s and a mix)."""
    keys = summary.train_tokens
    cells = cells_for(keys)
    searched = cells + PROBES * KEYS_PER_CELL if cells else keys  # distances per val query, at most
    fixed, per_token = MEMORY_SECONDS
    per_distance = DISTANCE_SECONDS[bool(cells)]
    return fixed + per_token * summary.train_tokens + per_distance * summary.train_tokens / 8 * searched


def gets_memories(summary: DataSummary, budget: float) -> bool:
    """Whether the plan's recurrent members get a memory of their training states: line mode, no labels, at most
    MEMORY_TOKENS training tokens, each memory within MEMORY_SHARE of the budget."""
    return (
        summary.mode == "line"
        and not summary.labels
        and summary.train_tokens <= MEMORY_TOKENS
        and memory_seconds(summary) <= MEMORY_SHARE * budget
    )


def memory_reserve(summary: DataSummary, budget: float, members: int) -> float:
    """Seconds kept at the end for the memories of `members` recurrent members and the mix that takes them in (a
    second mix: the one after the last wave comes first, so that the run is usable while they are built; e-mail
    addresses: 15 s and 20 s)."""
    if not members or not gets_memories(summary, budget):
        return 0.0
    return members * memory_seconds(summary) + mix_reserve(summary, budget)


def ngram_reserve(summary: DataSummary) -> float:
    """Seconds for the Kneser-Ney fit with its order chosen on val (names 182k tokens: 2-3 s; surnames 550k: 16 s
    on a busy machine)."""
    return 3.0 + 2.5e-5 * summary.train_tokens


@dataclass(frozen=True)
class DataSummary:
    """What the plan looks at: the data's shape, not its content."""

    mode: str  # "line" or "stream"
    train_items: int  # line mode: items in train; stream mode: 0
    train_tokens: int  # characters (plus one end token per item in line mode) in train
    alphabet: int  # distinct characters
    mean_len: float  # line mode: mean item length; stream mode: 0
    labels: int = 0  # labelled data: how many labels (every member is conditioned on the label)
    longest: int = 0  # line mode: the longest training item (chars); stream mode: 0

    @property
    def prose(self) -> bool:
        return self.mode == "stream" or self.mean_len > LONG_ITEMS


@dataclass
class Member:
    """One neural member of the plan: a normal `train` call in its own subfolder."""

    name: str  # subfolder and display name, e.g. "2-transformer"
    model: str
    seconds: float  # planned training seconds (its --time-budget)
    settings: dict[str, Any] = field(default_factory=dict)  # train() keyword settings
    why: str = ""
    repeat: int = 0  # earlier members of the same family in the plan: this one trains with the seed + repeat


@dataclass
class Plan:
    budget: float
    device: str
    summary: DataSummary
    members: list[Member]
    notes: list[str]
    slots: int = 1  # members trained side by side (one process and one thread each)
    memories: bool = False  # the recurrent members get a memory of their training states at the end

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "device": self.device,
            "summary": asdict(self.summary),
            "members": [asdict(member) for member in self.members],
            "notes": self.notes,
            "slots": self.slots,
            "memories": self.memories,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        members = [Member(**member) for member in data["members"]]
        summary = DataSummary(**data["summary"])
        slots, memories = int(data.get("slots", 1)), bool(data.get("memories", False))
        return cls(data["budget"], data["device"], summary, members, list(data["notes"]), slots, memories)

    def remembered(self) -> list[Member]:
        """The members that get a memory once trained."""
        return [member for member in self.members if member.model in MEMORY_FAMILIES] if self.memories else []

    def end_reserve(self) -> float:
        """Seconds kept after the last wave: the memories and the mix."""
        memories = memory_reserve(self.summary, self.budget, len(self.remembered()))
        return memories + mix_reserve(self.summary, self.budget)


def passes(summary: DataSummary, seconds: float, device: str) -> float:
    """About how many times a member sees the training data in `seconds`."""
    return THROUGHPUT.get(device, THROUGHPUT["cpu"]) * seconds / max(summary.train_tokens, 1)


def fast_transformer(summary: DataSummary, seconds: float, device: str) -> bool:
    """A short share on data it cannot overfit in that time: the Transformer's fast preset (no dropout) learns
    fastest (names, 100 s: val 1.961 against the GRU's 1.982); on small data it overfits (first names: 1.964
    against an early-stopped GRU's 1.912)."""
    return summary.mode == "line" and seconds < FAST_SECONDS and passes(summary, seconds, device) < 30


def family_order(summary: DataSummary, share: float, device: str) -> list[str]:
    """The members' families in the order they are planned (MAX_MEMBERS at most). Short items: the three that
    learn names best, then each of them again with another seed (a GRU with a new seed is better than the
    WaveNet, 1.915 against 1.952 on names in 10 minutes, and two seeds of one family still differ), then the GRU
    and the LSTM a third time: the WaveNet that held that place got weight 0.00-0.03 in every 8-member mix
    measured (names in 30 minutes, three times; 2,000 accented surnames), and recurrent members get a memory."""
    if summary.prose:  # given every core (or a GPU), the Transformer learns prose best
        return ["transformer", "gru", "lstm", "wavenet"]
    first = ["transformer", "gru"] if fast_transformer(summary, share, device) else ["gru", "transformer"]
    strongest = first + ["lstm"]
    return strongest + strongest + [name for name in strongest if name in MEMORY_FAMILIES]


def member_count(neural_seconds: float, more_from: tuple[float, ...] = MORE_MEMBERS_FROM) -> int:
    """How many neural members, one after another, `neural_seconds` pays for: each gets at least
    MIN_MEMBER_SECONDS, and a second member only from `more_from[0]` seconds on (then the next thresholds: a
    member's worth falls with its share of the time)."""
    if neural_seconds < MIN_MEMBER_SECONDS:
        return 0
    return 1 + sum(neural_seconds >= threshold for threshold in more_from)


def regularisation(model: str, epochs: float) -> tuple[dict[str, Any], str]:
    """Dropout and early stopping for a member that will see the training data `epochs` times."""
    if epochs < 3:
        return {"dropout": 0.0}, f"~{epochs:.1f} passes over train: no dropout"
    if epochs < 30:
        light = {"transformer": {"dropout": 0.1}, "gru": {"dropout": 0.15}, "lstm": {"dropout": 0.15}}
        return light.get(model, {}), f"~{epochs:.0f} passes: light dropout"
    if epochs < EARLY_STOP_PASSES:
        return {}, f"~{epochs:.0f} passes: the family's dropout and early stopping"
    return tight_early_stop(epochs), f"~{epochs:.0f} passes: the family's dropout, early stopping after 4 evaluations"


def tight_early_stop(epochs: float) -> dict[str, Any]:
    """Patience 4 from EARLY_STOP_PASSES passes on (small data); below it the family's own patience."""
    return {"patience": 4} if epochs >= EARLY_STOP_PASSES else {}


def member_settings(model: str, summary: DataSummary, seconds: float, device: str) -> tuple[dict[str, Any], str]:
    """The settings of one member (over its registry defaults) and why."""
    epochs = passes(summary, seconds, device)
    if model == "transformer" and summary.mode == "stream":
        # the registry's stream preset, sized for continuous text (windows of 128, 4 layers of 128, dropout 0.1)
        settings = {"preset": "stream", "max_steps": 1_000_000} | tight_early_stop(epochs)
        return settings, f"~{epochs:.0f} passes: the stream preset"
    if model == "transformer" and fast_transformer(summary, seconds, device):
        settings, why = {"preset": "fast"}, "a short share: the fast preset (2 layers, no dropout, lr 5e-3)"
    else:
        settings, why = regularisation(model, epochs)
    context = summary.longest + 1  # the start token and the characters
    if model == "transformer" and context > TransformerConfig.block_size:
        settings["block_size"] = min(context, MAX_ITEM_CONTEXT)
        why += f"; items up to {summary.longest} characters: a context of {settings['block_size']}"
    small = summary.train_tokens < SMALL_TOKENS
    if small and model in ("gru", "lstm"):
        settings["n_hidden"] = 128
        why += "; small data: 128 hidden units"
    settings["max_steps"] = 1_000_000  # the time budget ends the member; the schedule follows it
    return settings, why


def side_by_side(summary: DataSummary, device: str, cores: int) -> int:
    """How many members train at once: on a CPU, short items one per core (a small network's step does not use two
    cores well), up to MAX_SLOTS; prose, and anything on a GPU, one at a time."""
    return max(1, min(cores, MAX_SLOTS)) if device == "cpu" and not summary.prose else 1


def member_layout(neural_seconds: float, slots: int, prose: bool = False, useful: float = 0.0) -> tuple[int, int]:
    """(members, waves): one member per slot in each wave, as many waves as the time buys members of `useful`
    seconds (MEMBER_PASSES passes; at least one wave, at most MAX_WAVES). One slot: members one after another
    (member_count)."""
    if slots == 1:
        count = member_count(neural_seconds, PROSE_MORE_MEMBERS_FROM if prose else MORE_MEMBERS_FROM)
        return count, count
    most_waves = min(MAX_WAVES, -(-MAX_MEMBERS // slots))  # with many cores, MAX_MEMBERS fill fewer waves
    waves = max(1, min(most_waves, int(neural_seconds // useful) if useful > 0 else 1))
    if (neural_seconds - waves * RESERVE_SECONDS) / waves < MIN_MEMBER_SECONDS:
        return 0, 0
    return min(slots * waves, MAX_MEMBERS), waves


def make_plan(summary: DataSummary, budget: float, device: str = "cpu", cores: int = 1) -> Plan:
    """The members and their seconds for `budget` seconds of wall time in all (the n-gram fit and the mix
    included). Pure: the same summary, budget, device kind and core count give the same plan."""
    ngram_seconds = ngram_reserve(summary)
    notes = [f"Kneser-Ney n-gram first (order chosen on val): a usable model within ~{ngram_seconds:.0f} s"]
    available = budget - ngram_seconds - mix_reserve(summary, budget)
    slots = side_by_side(summary, device, cores)
    useful = MEMBER_PASSES * summary.train_tokens / THROUGHPUT.get(device, THROUGHPUT["cpu"])
    count, waves = member_layout(max(available, 0.0), slots, summary.prose, useful)
    if count:  # the memories' time, for the families this share would plan
        families = family_order(summary, (available - waves * RESERVE_SECONDS) / waves, device)[:count]
        available -= memory_reserve(summary, budget, sum(model in MEMORY_FAMILIES for model in families))
    while count and slots == 1 and (available - count * RESERVE_SECONDS) / count < MIN_MEMBER_SECONDS:
        count, waves = count - 1, waves - 1
    if count == 0:
        notes.append(f"a budget of {budget:.0f} s leaves no time for a neural member: the n-gram alone")
        return Plan(budget, device, summary, [], notes)
    share = (available - waves * RESERVE_SECONDS) / waves
    members: list[Member] = []
    for k, model in enumerate(family_order(summary, share, device)[:count], start=2):
        settings, why = member_settings(model, summary, share, device)
        if slots > 1:
            settings |= {"threads": 1, "row_shards": 1}  # one core each
        repeat = sum(member.model == model for member in members)
        why += f"; seed +{repeat}" if repeat else ""
        members.append(Member(f"{k}-{model}", model, round(member_budget(share), 1), settings, why, repeat))
    slots = min(slots, count)
    kind = "prose or long items" if summary.prose else "short items"
    how = f"{slots} side by side" if slots > 1 else "one after another"
    notes.append(f"{kind}: {', '.join(m.model for m in members)}, ~{share:.0f} s each, {how}; then a mix on val")
    memories = gets_memories(summary, budget) and any(member.model in MEMORY_FAMILIES for member in members)
    if memories:
        notes.append("each recurrent member then gets a memory of its training states (kNN-LM), mixed in its place")
    return Plan(budget, device, summary, members, notes, slots, memories)


def describe_plan(plan: Plan) -> list[str]:
    """The plan as the lines printed before any training."""
    s = plan.summary
    shape = (
        f"{s.train_items:,} training items, mean length {s.mean_len:.1f}"
        if s.mode == "line"
        else f"{s.train_tokens:,} training characters (stream mode)"
    )
    labels = f", {s.labels} labels (every member conditioned on the label)" if s.labels else ""
    lines = [f"auto plan for {plan.budget:.0f} s on {plan.device}: {shape}, {s.alphabet} symbols{labels}"]
    lines.append("  1-ngram: Kneser-Ney, order chosen on val")
    for member in plan.members:
        shown = ", ".join(f"{key}={value}" for key, value in member.settings.items() if key != "max_steps")
        lines.append(f"  {member.name}: {member.seconds:.0f} s ({shown}) — {member.why}")
    if plan.slots > 1:
        lines.append(f"  {plan.slots} at a time, side by side (one process and one core each)")
    for member in plan.remembered():
        lines.append(f"  {member.name}-knn: {member.name} with a memory of its training states, settings chosen on val")
    lines.append("  then: a mix of all of them fitted on val, linear or log-linear" if plan.members else "  (no mix)")
    return lines
