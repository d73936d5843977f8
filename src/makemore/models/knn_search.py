"""Nearest stored keys for models/knn.py: exact search, and search in the nearest cells of a k-means grouping.

Exact search reads every key for every query: val on the e-mail addresses (70,000 queries, 400,000 keys) takes two
minutes on two cores, most of a 10-minute budget. Grouping the keys into cells of ~512 and searching only the
`probes` cells whose centres are nearest the query reads ~2% of them (FAISS's "IVF" index, without its compression):
there the same pass takes ~8 s, finds 97% of the exact 64 neighbours, and the memory's NLL moves by 0.0001.

What is searched is defined exactly (the k nearest keys among those in the query's `probes` nearest cells), so the
NumPy and JavaScript samplers (export/) find the same neighbours one query at a time.
"""

from __future__ import annotations

import math

import torch

QUERY_CELLS = 1 << 22  # distances computed at once (queries x keys): ~16 MB of float32
QUERY_PART = 8192  # queries searched at once in cells: their (query, cell) slots are probes x k each
EXACT_KEYS = 1 << 16  # up to this many keys, every query reads them all (names: 50,000)
KEYS_PER_CELL = 512
PROBES = 16  # cells searched per query (KNNConfig.probes)
MAX_KEYS = 1 << 20  # at most ~1M distinct states: 128 MB of float16 keys at 64 dimensions
MAX_POSITIONS = 1 << 22  # training positions read at most: their states take 4 GB (float32, 256 units)
KMEANS_ROUNDS = 10
KMEANS_SAMPLE = 64  # keys per cell the centres are fitted on


def exact_neighbours(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest keys (N, D) of each query (n, D): squared distances less |q|^2 (n, k), sorted, and indices (n, k).
    |q|^2 is the same for all of a query's candidates, so it changes neither the order nor a softmax over them."""
    norms = (keys * keys).sum(1)  # (N,)
    chunk = max(1, QUERY_CELLS // max(len(keys), 1))
    distances, indices = [], []
    for part in queries.split(chunk):
        d = torch.addmm(norms[None, :], part, keys.T, alpha=-2)  # (n, N)
        dist, index = d.topk(min(k, len(keys)), dim=1, largest=False, sorted=True)
        distances.append(dist)
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def exact_distances(
    queries: torch.Tensor, keys: torch.Tensor, indices: torch.Tensor, found: torch.Tensor
) -> torch.Tensor:
    """|key|^2 - 2 q.key in float64 for each query's neighbours (n, k); inf where `found` (their float32 distances)
    is inf (no such neighbour)."""
    parts = []
    for q, index, d in zip(queries.split(1024), indices.split(1024), found.split(1024)):
        near = keys[index].double()  # (n, k, D)
        exact = (near * near).sum(-1) - 2 * (near @ q.double()[:, :, None])[..., 0]
        parts.append(torch.where(torch.isinf(d), torch.inf, exact))
    return torch.cat(parts)


def cells_for(n_keys: int) -> int:
    """How many cells a memory of n_keys keys is grouped into: 0 (exact search) up to EXACT_KEYS, else a power of two
    near n_keys / KEYS_PER_CELL."""
    return 0 if n_keys <= EXACT_KEYS else 1 << math.ceil(math.log2(n_keys / KEYS_PER_CELL))


def nearest_centre(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The index of each point's nearest centre (n,)."""
    norms = (centres * centres).sum(1)
    return torch.cat([torch.addmm(norms[None, :], part, centres.T, alpha=-2).argmin(1) for part in points.split(8192)])


def group(keys: torch.Tensor, cells: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group keys (N, D) into at most `cells` cells by k-means (Lloyd's rounds on a seeded sample: the same keys give
    the same cells). Returns the non-empty cells' centres (C, D) in float16, the order that sorts the keys by cell
    (N,), and where each cell starts in that order (C + 1,)."""
    generator = torch.Generator().manual_seed(0)
    sample = keys[torch.randperm(len(keys), generator=generator)[: cells * KMEANS_SAMPLE]]
    centres = sample[:cells].clone()  # (cells, D): the sample is in random order
    for _ in range(KMEANS_ROUNDS):
        nearest = nearest_centre(sample, centres)
        sums = torch.zeros_like(centres).index_add_(0, nearest, sample)
        sizes = torch.bincount(nearest, minlength=len(centres))[:, None]
        centres = torch.where(sizes > 0, sums / sizes.clamp(min=1), centres)
    centres = centres.half().float()  # stored in float16: every sampler then reads the same centres
    cell = nearest_centre(keys, centres)
    used = torch.bincount(cell, minlength=len(centres)) > 0
    renumber = torch.cumsum(used.long(), 0) - 1  # old cell -> its number among the non-empty ones
    centres, cell = centres[used], renumber[cell]
    order = torch.sort(cell, stable=True).indices
    sizes = torch.bincount(cell, minlength=len(centres))
    starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])
    return centres.half(), order, starts


def cell_neighbours(
    queries: torch.Tensor, keys: torch.Tensor, centres: torch.Tensor, starts: torch.Tensor, k: int, probes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest keys of each query (n, D) among the keys of its `probes` nearest cells (keys (N, D) sorted by
    cell, cell c being keys[starts[c]:starts[c + 1]]): as exact_neighbours. Where those cells hold fewer than k keys
    the missing places have distance inf and index 0 (weight 0 in a softmax)."""
    distances, indices = [], []
    for part in queries.split(QUERY_PART):
        d, i = _search_cells(part, keys, centres, starts, k, min(probes, len(centres)))
        distances.append(d)
        indices.append(i)
    return torch.cat(distances), torch.cat(indices)


def _search_cells(queries, keys, centres, starts, k, probes):
    """cell_neighbours for one part of the queries: the k nearest of each (query, probed cell) pair, cell by cell
    (every query probing a cell at once), then the k nearest of each query's probes x k."""
    n = len(queries)
    probe = exact_neighbours(queries, centres, probes)[1]  # (n, P) each query's nearest cells
    slot_dist = torch.full((n * probes, k), torch.inf)  # (n P, k): the k nearest in each (query, cell) pair
    slot_index = torch.zeros(n * probes, k, dtype=torch.long)
    pair_cells = probe.reshape(-1)
    pairs = torch.sort(pair_cells, stable=True).indices  # pairs grouped by cell
    cells, counts = torch.unique_consecutive(pair_cells[pairs], return_counts=True)
    norms = (keys * keys).sum(1)
    at = 0
    for cell, count in zip(cells.tolist(), counts.tolist()):
        rows, at = pairs[at : at + count], at + count
        lo, hi = starts[cell].item(), starts[cell + 1].item()
        d = torch.addmm(norms[None, lo:hi], queries[rows // probes], keys[lo:hi].T, alpha=-2)  # (pairs, cell size)
        dist, index = d.topk(min(k, hi - lo), dim=1, largest=False)
        slot_dist[rows, : dist.size(1)] = dist
        slot_index[rows, : dist.size(1)] = index + lo
    dist, best = slot_dist.view(n, probes * k).topk(k, dim=1, largest=False, sorted=True)  # (n, k)
    return dist, slot_index.view(n, probes * k).gather(1, best)


__all__ = [
    "EXACT_KEYS", "MAX_KEYS", "MAX_POSITIONS", "PROBES", "QUERY_CELLS",
    "cell_neighbours", "cells_for", "exact_distances", "exact_neighbours", "group",
]  # fmt: skip
