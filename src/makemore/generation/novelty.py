"""Is a generated item new? Exact membership in the data splits, and the nearest data item by edit distance.

Membership is a set lookup. The nearest item of any split (train, val, test; Levenshtein distance: insertions,
deletions, substitutions) is found in three exact stages:

- distance 0: the set;
- distance 1: a deletion-neighbourhood index (as in SymSpell): two strings are within one edit only if they share
  a "variant" (the string itself or it with one character deleted), so the hashes of every data item's
  variants are kept in one sorted array and candidates are confirmed with a bounded Levenshtein distance;
- farther, for a few queries (a page's request): one `rapidfuzz` call (C++, bit-parallel) scores them against
  every data item (a call costs ~0.1 us per data item besides its distances, so a dozen queries cost little more
  than one, and one call beats the bucket scan's dozen);
- farther, for more queries: `rapidfuzz` with two cuts that keep the scan exact:

- the data items are bucketed by length, and |len(a) - len(b)| <= distance(a, b), so for a query of length L
  only the buckets L, L +- 1, L +- 2, ... up to the best distance found so far are searched;
- each bucket is scored against a whole group of queries of the same length at once (`rapidfuzz.process.cdist`,
  all CPU cores), with a score cutoff that lets the bounded distance stop early.

Both give the same answers: the smallest distance, and of the data items at that distance the first that the
bucket scan meets (the nearest length, the shorter first, then alphabetical order).

`benchmarks/sample_speed.py` measures it against 100k training items.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

UNBOUNDED = 1 << 30
CDIST_CELLS = 1 << 22  # at most 4M distances (16 MB) per rapidfuzz call
PARALLEL_CELLS = 1 << 18  # smaller (queries x choices) matrices are computed on one thread
# up to this many queries (and queries x data items), one call over every data item beats the bucket scan (measured,
# 2-core CPU: 20 queries against 5k data items 1.4 against 2.8 ms, against 32k 5.6 against 9.4 ms; 80: about even)
ONE_CALL_QUERIES = 48
ONE_CALL_CELLS = 1 << 21


class NoveltyIndex:
    def __init__(self, train: Iterable[str], held_out: Iterable[str] = (), workers: int = -1):
        self.train_list = sorted(set(train))
        self.train = set(self.train_list)
        self.held_out = set(held_out) - self.train
        self.everything = self.train | self.held_out
        self.all_list = sorted(self.everything)  # `nearest` searches every split: "new" means new to all of them
        self.workers = workers
        self.buckets: dict[int, list[str]] = {}
        for item in self.all_list:
            self.buckets.setdefault(len(item), []).append(item)
        self._lengths = np.array([len(item) for item in self.all_list], dtype=np.int64)
        self._variants: tuple[np.ndarray, np.ndarray] | None = None  # built on first use

    @staticmethod
    def _variant_hashes(text: str) -> list[int]:
        return [hash(text)] + [hash(text[:i] + text[i + 1 :]) for i in range(len(text))]

    def _within_one(self, items: list[str]) -> dict[str, str]:
        """For items in no split: a data item one edit away, where there is one."""
        from rapidfuzz.distance import Levenshtein

        if self._variants is None:
            hashes, owners = [], []
            for index, item in enumerate(self.all_list):
                variants = self._variant_hashes(item)
                hashes += variants
                owners += [index] * len(variants)
            keys = np.array(hashes, dtype=np.int64)
            order = np.argsort(keys, kind="stable")
            self._variants = keys[order], np.array(owners, dtype=np.int64)[order]
        keys, owners = self._variants
        found: dict[str, str] = {}
        for item in items:
            query = np.array(self._variant_hashes(item), dtype=np.int64)
            lo, hi = np.searchsorted(keys, query, "left"), np.searchsorted(keys, query, "right")
            for start, stop in zip(lo.tolist(), hi.tolist()):
                for owner in owners[start:stop].tolist():
                    candidate = self.all_list[owner]
                    if Levenshtein.distance(item, candidate, score_cutoff=1) <= 1:
                        found[item] = candidate
                        break
                if item in found:
                    break
        return found

    def status(self, item: str) -> str:
        """'in-train', 'in-val-test' or 'new'."""
        if item in self.train:
            return "in-train"
        return "in-val-test" if item in self.held_out else "new"

    def nearest(self, items: list[str], max_distance: int | None = None) -> list[tuple[str | None, int]]:
        """For each item: (nearest item of any split (train, val or test), its edit distance).

        With `max_distance`, only distances <= max_distance are searched: items farther than that from every
        data item get (None, max_distance + 1). That is all a --min-distance filter needs, and much faster.
        Without data items every answer is (None, max_distance + 1 or a very large number).
        """
        cap = UNBOUNDED if max_distance is None else max_distance + 1
        results: dict[str, tuple[str | None, int]] = {}
        pending: dict[int, list[str]] = {}
        for item in set(items):
            if item in self.everything:
                results[item] = (item, 0)
            else:
                pending.setdefault(len(item), []).append(item)
        if cap > 1 and self.all_list:
            near = self._within_one([item for group in pending.values() for item in group])
            for item, match in near.items():
                results[item] = (match, 1)
            pending = {length: [i for i in group if i not in near] for length, group in pending.items()}
            pending = {length: group for length, group in pending.items() if group}
        if cap <= 2:  # everything within the bound has been found
            for group in pending.values():
                results.update((item, (None, cap)) for item in group)
            pending = {}
        waiting = sum(len(group) for group in pending.values())
        if 0 < waiting <= ONE_CALL_QUERIES and waiting * len(self.all_list) <= ONE_CALL_CELLS and self.all_list:
            group = [item for group in pending.values() for item in group]
            results.update(zip(group, self._nearest_in_one_call(group, cap)))
            pending = {}
        lengths = list(self.buckets)
        for length, group in pending.items():
            best = np.full(len(group), cap, dtype=np.int64)
            nearest: list[str | None] = [None] * len(group)
            widest = max((abs(length - other) for other in lengths), default=-1)
            gap = 0
            while gap <= widest and gap < int(best.max()):
                for other in sorted({length - gap, length + gap}):
                    choices = self.buckets.get(other)
                    open_rows = np.flatnonzero(best > gap)  # a row whose best <= gap cannot improve here
                    if choices and open_rows.size:
                        self._search(group, open_rows, choices, best, nearest)
                gap += 1
            for item, distance, match in zip(group, best, nearest):
                results[item] = (match, int(distance))
        return [results[item] for item in items]

    def _nearest_in_one_call(self, group: list[str], cap: int) -> list[tuple[str | None, int]]:
        """`nearest` of items in no split and not within one edit, with one rapidfuzz call over every data item.
        The answers are the bucket scan's: of the items at the smallest distance, the first it meets (it scans the
        lengths L, L - 1, L + 1, L - 2, ... and each length in alphabetical order, and keeps an item only if it is
        strictly nearer than the best so far)."""
        from rapidfuzz import process
        from rapidfuzz.distance import Levenshtein

        scores = process.cdist(
            group,
            self.all_list,
            scorer=Levenshtein.distance,
            score_cutoff=None if cap >= UNBOUNDED else cap - 1,
            workers=1,
            dtype=np.int32,
        )  # (queries, data items); entries above the cutoff read cap
        best = scores.min(axis=1)
        rows, columns = np.nonzero(scores == best[:, None])  # every row has at least one: its best
        diff = self._lengths[columns] - np.array([len(item) for item in group], dtype=np.int64)[rows]
        # the scan's order: the nearer length, the shorter of two as near, then alphabetical (data items are sorted)
        ranked = np.lexsort((columns, 2 * np.abs(diff) + (diff > 0), rows))
        first = columns[ranked[np.r_[0, np.flatnonzero(np.diff(rows[ranked])) + 1]]]
        return [(self.all_list[j], d) if d < cap else (None, cap) for j, d in zip(first.tolist(), best.tolist())]

    def _search(self, group: list[str], rows: np.ndarray, choices: list[str], best: np.ndarray, nearest: list) -> None:
        """Improve best/nearest of group[rows] with the items in `choices` (one length bucket)."""
        from rapidfuzz import process
        from rapidfuzz.distance import Levenshtein

        chunk = max(1, CDIST_CELLS // len(choices))  # bound the (queries, choices) matrix's memory
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            cutoff = int(best[part].max()) - 1
            scores = process.cdist(
                [group[i] for i in part],
                choices,
                scorer=Levenshtein.distance,
                score_cutoff=None if cutoff >= UNBOUNDED - 1 else cutoff,
                # threads pay off on big matrices only: 20 sampled names against a few hundred of each length
                # take 2.2 ms on one thread and 6.2 ms with a thread per core (2-core CPU)
                workers=self.workers if len(part) * len(choices) >= PARALLEL_CELLS else 1,
                dtype=np.int32,
            )  # (queries, choices); entries above the cutoff read cutoff + 1
            column = scores.argmin(axis=1)
            found = scores[np.arange(len(part)), column]
            for row, j, distance in zip(part, column, found):
                if distance < best[row]:
                    best[row], nearest[row] = int(distance), choices[j]
