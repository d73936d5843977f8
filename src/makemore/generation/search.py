"""Search for the most probable items: exact best-first search, and beam search (an approximation).

`best_first_search` returns exactly the k most probable complete items that satisfy a constraint. An item's
log-probability only falls as it grows (every token adds a log-prob <= 0), so a uniform-cost search over the tree
of prefixes finds items in order: keep a priority queue of candidates (a prefix and one next token, keyed by the
log-prob of the prefix with that token); pop the best; a popped end token completes an item, and since nothing left
in the queue (nor anything below it) is more probable, it is the next most probable item. Only tokens the
constraint allows are candidates (constraints.py: the automaton state advances per token; only accepting states may
end, and every allowed prefix can still be completed), so the items satisfy it by construction.

The model sees batches: popped prefixes are expanded together (FIRST_BATCH of them, doubling each round up to
EXPAND_BATCH), each from its parent's state, one `step` per cached batch of parent states. States stay cached for
the most recent prefixes (bounded memory); prefixes whose parent's state was dropped, or whose parents are spread
over so many cached batches that calls would cost more than rows, are replayed from the boundary token, all rows
at once (one step per position). Expanding more prefixes than strictly needed costs work, never exactness: an
item is only reported while no popped prefix awaits expansion.

`beam_search` keeps a fixed number of prefixes per step: fast, but it may miss items that best-first finds.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from makemore.data.lines import BOUNDARY
from makemore.errors import MakemoreError
from makemore.generation.common import Generated, prime
from makemore.generation.constraints import Constraint
from makemore.models import LanguageModel

MAX_EXPANSIONS = 200_000  # default budget of prefixes expanded by one best-first search
FIRST_BATCH, EXPAND_BATCH = 16, 1024  # prefixes expanded in the first round, and at most per round
# A row's cost in model calls, for choosing between stepping cached states and replaying (`_plan`). Measured once
# on a CPU: a small MLP's call costs about as much as 20 rows, a Transformer's about 30. A constant, not a timing
# taken at run time, so the same search always expands the same batches and gives bit-identical log-probs.
ROW_COST = 1 / 25
CACHE_ROWS, CACHE_BYTES = 65_536, 256 << 20  # model states kept for prefixes whose children may be expanded


class SearchBudgetExceeded(MakemoreError):
    """Best-first search expanded its budget of prefixes before finding k items; `found` holds those it found."""

    def __init__(self, message: str, found: list[Generated]):
        super().__init__(message)
        self.found = found


class _PrefixTree:
    """The prefixes expanded so far, as parallel lists indexed by node id (node 0: the constraint's prefix).

    A node's children are the tokens the constraint allows after it, sorted by log-prob (a row of a table built
    per expansion batch), so the queue holds one candidate per node (its best child not yet taken), not V."""

    def __init__(self, root_logprob: float, root_state: int, root_length: int):
        self.parent, self.token = [-1], [BOUNDARY]
        self.logp, self.masked_logp = [0.0], [0.0]  # the model's (and the masked model's) log-prob of `token`
        self.score, self.masked_score = [root_logprob], [0.0]  # the same for the whole prefix
        self.dfa, self.length = [root_state], [root_length]
        self.children: dict[int, tuple[int, int, int]] = {}  # node -> (table, row, allowed count), once expanded
        self.tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # sorted tokens, log-probs, masked

    def child(self, node: int, rank: int) -> tuple[int, float, float]:
        """The rank-th most probable allowed token after `node`: (token, log-prob, masked log-prob)."""
        table, row, _ = self.children[node]
        tokens, logps, masked = self.tables[table]
        return int(tokens[row, rank]), float(logps[row, rank]), float(masked[row, rank])

    def add(self, node: int, rank: int, trans: np.ndarray) -> int:
        """A new node: `node` followed by its rank-th child. Returns its id."""
        token, logp, masked = self.child(node, rank)
        self.parent.append(node)
        self.token.append(token)
        self.logp.append(logp)
        self.masked_logp.append(masked)
        self.score.append(self.score[node] + logp)
        self.masked_score.append(self.masked_score[node] + masked)
        self.dfa.append(int(trans[self.dfa[node], token]))
        self.length.append(self.length[node] + 1)
        return len(self.parent) - 1

    def path(self, node: int) -> list[int]:
        """The tokens after the constraint's prefix that lead to `node`."""
        tokens = []
        while node > 0:
            tokens.append(self.token[node])
            node = self.parent[node]
        return tokens[::-1]

    def path_logprobs(self, node: int) -> list[float]:
        values = []
        while node > 0:
            values.append(self.logp[node])
            node = self.parent[node]
        return values[::-1]


class _BestFirst:
    """One best-first search: the prefix tree, the queue of candidates, and the cached model states."""

    def __init__(self, model: LanguageModel, constraint: Constraint, max_expansions: int):
        self.model, self.constraint, self.max_expansions = model, constraint, max_expansions
        self.device = model.device
        self.trans = constraint.trans.cpu().numpy()
        self.prefix = constraint.prefix_ids
        logits, state, self.prefix_logprobs = prime(model, 1, self.prefix, self.device)
        self.tree = _PrefixTree(math.fsum(self.prefix_logprobs), constraint.start, len(self.prefix))
        self.queue: list[tuple[float, int, int, int]] = []  # (-log-prob, tie-break, node, rank)
        self.pushed = 0
        self.states: OrderedDict[int, tuple[Any, int]] = OrderedDict()  # batch id -> (state, rows), oldest first
        self.state_of: dict[int, tuple[int, int]] = {}  # node -> (batch id, row) of the state after it
        self.cached_rows = self.batches = self.expanded = 0
        self.batch_size = min(FIRST_BATCH, EXPAND_BATCH)  # grows while the search goes on: small queries stay cheap
        self.row_cost = ROW_COST
        self.cache_rows = min(CACHE_ROWS, max(1, CACHE_BYTES // max(1, _state_bytes(state))))
        self._keep([0], state)
        self._record([0], logits)

    def run(self, k: int, accept: Callable[[list[int]], bool] | None) -> list[Generated]:
        found: list[Generated] = []
        while len(found) < k and self.queue:
            pending: list[int] = []  # popped prefixes to expand in one batch
            held: list[tuple[float, int, int, int]] = []  # items popped while prefixes were pending
            while self.queue and len(pending) < self.batch_size and len(found) < k:
                entry = heapq.heappop(self.queue)
                _, _, node, rank = entry
                token = self.tree.child(node, rank)[0]
                if token == BOUNDARY and pending:
                    held.append(entry)  # a pending prefix may still complete into a more probable item
                    continue
                self._push(node, rank + 1)  # its next sibling, no better than it
                if token != BOUNDARY:
                    pending.append(self.tree.add(node, rank, self.trans))
                    continue
                item = self._item(node, rank)
                if accept is None or accept(item.ids):
                    found.append(item)
            for entry in held:
                heapq.heappush(self.queue, entry)
            if pending and len(found) < k:
                self._expand(pending, found, k)
                self.batch_size = min(2 * self.batch_size, EXPAND_BATCH)
        return found

    def _push(self, node: int, rank: int) -> None:
        """Queue the rank-th child of `node`, if it has one."""
        if rank < self.tree.children[node][2]:
            logp = self.tree.child(node, rank)[1]
            heapq.heappush(self.queue, (-(self.tree.score[node] + logp), self.pushed, node, rank))
            self.pushed += 1

    def _item(self, node: int, rank: int) -> Generated:
        """The item that `node` followed by its rank-th child (the end token) completes."""
        tree = self.tree
        _, end_logp, end_masked = tree.child(node, rank)
        token_logprobs = self.prefix_logprobs + tree.path_logprobs(node) + [end_logp]
        return Generated(
            self.prefix + tree.path(node), tree.masked_score[node] + end_masked, tree.score[node] + end_logp,
            token_logprobs,
        )  # fmt: skip

    def _expand(self, nodes: list[int], found: list[Generated], k: int) -> None:
        """Next-token logits for `nodes`: one step per cached parent batch, the rest replayed from the start."""
        if self.expanded + len(nodes) > self.max_expansions:
            raise SearchBudgetExceeded(
                f"best-first search expanded {self.expanded:,} prefixes and found {len(found)} of {k} items: "
                "narrow the constraints (e.g. --prefix, --regex, --max-len) or raise the budget (--max-expansions)",
                found,
            )
        self.expanded += len(nodes)
        by_batch: dict[int, tuple[Any, list[int]]] = {}  # the state each group steps from (held: may be evicted)
        replay = []
        for node in nodes:
            where = self.state_of.get(self.tree.parent[node])
            if where is not None and where[0] in self.states:
                self.states.move_to_end(where[0])  # recently used: evicted last
                by_batch.setdefault(where[0], (self.states[where[0]][0], []))[1].append(node)
            else:
                replay.append(node)
        groups, replay = self._plan(list(by_batch.values()), replay)
        for state, members in groups:
            rows = torch.tensor([self.state_of[self.tree.parent[n]][1] for n in members], device=self.device)
            tokens = torch.tensor([self.tree.token[n] for n in members], device=self.device)
            logits, state = self.model.step(tokens, self.model.reorder_state(state, rows))  # (G, V)
            self._keep(members, state)
            self._record(members, logits)
        if replay:
            self._replay(replay)

    def _plan(
        self, groups: list[tuple[Any, list[int]]], replay: list[int]
    ) -> tuple[list[tuple[Any, list[int]]], list[int]]:
        """Which groups to step from their cached states (a call each, a row per prefix) and which to replay with
        the prefixes that must be (a call per position, a row per position and prefix): the cheaper mix, by
        `row_cost`. Small groups move to the replay first."""
        groups = sorted(groups, key=lambda group: len(group[1]))
        length = self.tree.length
        steps = max((1 + length[n] for n in replay), default=0)  # the replay's calls and row-steps so far
        row_steps = sum(1 + length[n] for n in replay)
        cached = sum(1 + self.row_cost * len(members) for _, members in groups)
        best_cost, best_split = math.inf, 0
        for split in range(len(groups) + 1):
            if split:  # the next smallest group moves to the replay
                members = groups[split - 1][1]
                steps = max(steps, max(1 + length[n] for n in members))
                row_steps += sum(1 + length[n] for n in members)
                cached -= 1 + self.row_cost * len(members)
            cost = cached + steps + self.row_cost * row_steps
            if cost < best_cost:
                best_cost, best_split = cost, split
        return groups[best_split:], replay + [n for _, members in groups[:best_split] for n in members]

    def _replay(self, nodes: list[int]) -> None:
        """Feed whole sequences (boundary, prefix, path) for `nodes`, longest first, so that rows that end leave
        the batch (with their states kept) and one step per position serves them all."""
        seqs = [[BOUNDARY] + self.prefix + self.tree.path(n) for n in nodes]
        order = sorted(range(len(nodes)), key=lambda i: -len(seqs[i]))
        nodes, seqs = [nodes[i] for i in order], [seqs[i] for i in order]
        lengths = [len(s) for s in seqs]
        grid = torch.tensor([s + [BOUNDARY] * (lengths[0] - len(s)) for s in seqs], device=self.device)  # (G, T)
        state, live = self.model.init_state(len(nodes)), len(nodes)
        for j in range(lengths[0]):
            logits, state = self.model.step(grid[:live, j], state)  # (live, V)
            still = sum(1 for n in lengths[:live] if n > j + 1)  # rows that go on are the first ones
            if still < live:
                ended = torch.arange(still, live, device=self.device)
                self._keep(nodes[still:live], self.model.reorder_state(state, ended))
                self._record(nodes[still:live], logits[still:live])
                if still == 0:
                    break
                state, live = self.model.reorder_state(state, torch.arange(still, device=self.device)), still

    def _keep(self, nodes: list[int], state: Any) -> None:
        """Cache `state` (one row per node) for the nodes' children; drop the oldest batches beyond the cap."""
        batch = self.batches
        self.batches += 1
        self.states[batch] = (state, len(nodes))
        self.cached_rows += len(nodes)
        for row, node in enumerate(nodes):
            self.state_of[node] = (batch, row)
        while self.cached_rows > self.cache_rows and len(self.states) > 1:
            _, (_, rows) = self.states.popitem(last=False)
            self.cached_rows -= rows

    def _record(self, nodes: list[int], logits: torch.Tensor) -> None:
        """Sort each node's allowed next tokens by log-prob and queue its best one."""
        tree = self.tree
        allowed = torch.stack([self.constraint.allowed_table(tree.length[n])[tree.dfa[n]] for n in nodes])  # (G, V)
        logp = torch.log_softmax(logits.double(), -1).masked_fill(~allowed, float("-inf"))  # (G, V)
        masked = logp - torch.logsumexp(logp, -1, keepdim=True)  # renormalised over the allowed tokens
        sorted_logp, order = logp.sort(-1, descending=True)
        table = (order.cpu().numpy(), sorted_logp.cpu().numpy(), masked.gather(-1, order).cpu().numpy())
        counts = allowed.sum(-1).tolist()
        tree.tables.append(table)
        for row, (node, count) in enumerate(zip(nodes, counts)):
            tree.children[node] = (len(tree.tables) - 1, row, count)
            self._push(node, 0)


def _state_bytes(state: Any) -> int:
    """Memory held by a model state's tensors (nested in tuples, lists, dicts or plain objects)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, (tuple, list)):
        return sum(_state_bytes(part) for part in state)
    if isinstance(state, dict):
        return sum(_state_bytes(part) for part in state.values())
    if hasattr(state, "__dict__"):
        return sum(_state_bytes(part) for part in vars(state).values())
    return 0


@torch.inference_mode()
def best_first_search(
    model: LanguageModel,
    k: int,
    constraint: Constraint,
    accept: Callable[[list[int]], bool] | None = None,
    max_expansions: int = MAX_EXPANSIONS,
) -> list[Generated]:
    """Exactly the k most probable complete items under the model that satisfy `constraint` (and `accept`), most
    probable first; fewer only when fewer exist. Rejected items (`accept` returns False) do not count towards k.

    Raises SearchBudgetExceeded (a MakemoreError) once more than `max_expansions` prefixes would be expanded.
    """
    model.eval()
    constraint = constraint.to(model.device)
    return _BestFirst(model, constraint, max_expansions).run(k, accept)


@torch.inference_mode()
def beam_search(
    model: LanguageModel,
    k: int,
    constraint: Constraint,
    width: int | None = None,
    length_penalty: float = 0.0,
    accept: Callable[[list[int]], bool] | None = None,
) -> list[Generated]:
    """Up to k probable complete items under the model that satisfy `constraint` (and `accept`), best first: an
    approximation of `best_first_search` that may miss items a wider beam would find.

    Beam search as in D2L 11.8: keep the `width` (default k) most probable unfinished items at each step; an item
    that ends is a candidate, ranked by log P / L**length_penalty (L = tokens predicted: characters + end; 0 ranks
    by probability alone). It stops when no unfinished item can beat the k-th best finished one (log P only falls as
    an item grows), so with a width at least the number of live prefixes it is exact: it returns the same items as
    scoring every string up to max_len. Rejected items (`accept` returns False) do not count towards k.
    """
    width = max(width or k, 1)
    model.eval()
    device = model.device
    constraint = constraint.to(device)
    prefix = constraint.prefix_ids
    logits, state, prefix_logprobs = prime(model, 1, prefix, device)
    # per beam: model log P so far (prefix included), log P under the masked model, per-token log-probs, tokens
    scores = torch.full((1,), math.fsum(prefix_logprobs), dtype=torch.float64, device=device)
    masked_scores = torch.zeros(1, dtype=torch.float64, device=device)
    per_token = torch.zeros(1, 0, dtype=torch.float64, device=device)  # (B, t)
    seqs = torch.zeros(1, 0, dtype=torch.long, device=device)  # (B, t) the tokens after the prefix
    states = constraint.initial_states(1)
    finished: list[Generated] = []
    steps = constraint.max_len - len(prefix) + 1
    longest = constraint.max_len + 1  # most tokens an item can predict: bounds the length-normalised score
    for j in range(steps):
        t = len(prefix) + j
        allowed = constraint.allowed(states, t)  # (B, V)
        logp = torch.log_softmax(logits.double(), -1)
        masked_logp = torch.log_softmax(logp.masked_fill(~allowed, float("-inf")), -1)
        total = (scores[:, None] + logp).masked_fill(~allowed, float("-inf"))  # (B, V)
        # Items that end here.
        for row in torch.isfinite(total[:, BOUNDARY]).nonzero(as_tuple=True)[0].tolist():
            ids = prefix + seqs[row].tolist()
            if accept is not None and not accept(ids):
                continue
            value = float(total[row, BOUNDARY])
            finished.append(
                Generated(
                    ids,
                    float(masked_scores[row] + masked_logp[row, BOUNDARY]),
                    value,
                    prefix_logprobs + per_token[row].tolist() + [float(logp[row, BOUNDARY])],
                    value / (len(ids) + 1) ** length_penalty,
                )
            )
        finished.sort(key=lambda g: -g.score)  # type: ignore[operator]  # beam items always carry a score
        del finished[k:]
        # Items that go on: the `width` best (beam, character) pairs.
        total[:, BOUNDARY] = float("-inf")
        flat = total.flatten()
        n_live = int(torch.isfinite(flat).sum())
        if n_live == 0 or j == steps - 1:
            break
        best_values, best = flat.topk(min(width, n_live))
        bound = float(best_values[0]) / longest**length_penalty  # the best any of them could still score
        if len(finished) == k and finished[-1].score >= bound:  # type: ignore[operator]
            break
        parents, chars = best // total.size(1), best % total.size(1)
        scores = best_values
        masked_scores = masked_scores[parents] + masked_logp[parents, chars]
        per_token = torch.cat([per_token[parents], logp[parents, chars][:, None]], dim=1)
        seqs = torch.cat([seqs[parents], chars[:, None]], dim=1)
        states = constraint.advance(states[parents], chars)
        state = model.reorder_state(state, parents)
        logits, state = model.step(chars, state)
    return finished
