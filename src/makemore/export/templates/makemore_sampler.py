"""A makemore model exported to NumPy: sample and score with NumPy alone (no torch, no makemore).

    import makemore_sampler
    model = makemore_sampler.load("FOLDER")            # the folder `makemore export --format numpy` wrote
    model.sample(n=5, temperature=0.8, prefix="ja", seed=1)   # ['jalen', 'jasmin', ...]
    model.score(["emma", "xqz"])                       # total log-probabilities (natural log, the end included)
    model.labels                                       # a labelled run's labels, e.g. ['female', 'male'] ([]: none)
    model.sample(n=5, label="female")                  # given a label, or a blend: "female=0.7,male=0.3" / a dict
    model.score(["emma"], label="male")                # log p(item | label); without a label, p(item)
    model.classify(["emma"])                           # [{'item', 'label', 'probs': {label: p(label | item)}}]

    python makemore_sampler.py sample -n 10 --seed 1 --prefix ja     # the same from a shell (FOLDER: --model)
    python makemore_sampler.py score emma olivia --label female
    python makemore_sampler.py classify emma liam

The folder holds config.json (model family and settings, vocabulary, default maximum length) and weights.npz (the
run's weights as saved). Every step computes in float64 from the float32 weights, so log-probabilities equal what
`makemore score` reports to about 1e-6. Decoding is incremental as in makemore: a rolling context (mlp), per-layer
queues (wavenet), recurrent state (rnn, gru, lstm), a KV cache (transformer), a context lookup (ngram). A labelled
model reads its label as makemore does: a label vector added to (add) or beside (concat) every input, or at the
item's start (state: the start token, or the recurrent start state); the n-gram mixes the label's model with the
shared one. Blends and p(item) mix the labels' next-character distributions at every step (`Conditioned`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

BOUNDARY = 0  # token id of the item boundary: every item is read as BOUNDARY + characters, and ends with BOUNDARY


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps) * w
    return y if b is None else y + b


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


class Erf:
    """erf to ~5e-10 (NumPy has none; PyTorch's GELU is the exact erf form): linear interpolation of math.erf on a
    grid of step 2**-14 over [-6, 6], beyond which erf is +-1 to double precision. The error bound is
    h**2 / 8 * max|erf''| < 5e-10, far below float32's resolution of the weights; a few array operations a call."""

    def __init__(self):
        self.scale = 2.0**14
        grid = np.arange(-6 * self.scale, 6 * self.scale + 2) / self.scale
        self.f = np.array([math.erf(x) for x in grid])
        self.df = np.diff(self.f)

    def __call__(self, x):
        u = (np.clip(x, -6.0, 6.0) + 6.0) * self.scale
        i = u.astype(np.int64)
        return self.f[i] + (u - i) * self.df[i]


ERF = None


def gelu(x):
    global ERF
    if ERF is None:
        ERF = Erf()
    return 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0)))


def logsumexp(x, axis):
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def with_label(x, w, spec, labels, start):
    """Inputs x (B, ..., C) plus each row's label vector: at every input (add) or where `start` (state)."""
    if labels is None:
        return x
    vector = w["label_emb.table.weight"][labels].reshape(len(labels), *[1] * (x.ndim - 2), -1)
    return x + (vector if spec["label_mode"] == "add" else vector * start[..., None])


def select(state, rows):
    """The state of the kept/reordered rows: every array's first axis is the batch."""
    if isinstance(state, np.ndarray):
        return state[rows]
    if isinstance(state, (list, tuple)):
        return type(state)(select(part, rows) for part in state)
    if isinstance(state, dict):
        return {key: select(part, rows) for key, part in state.items()}
    return state


# ------------------------------------------------------------------------------------------------ the families
class Bigram:
    def __init__(self, spec, w):
        self.table, self.label = w["logits"], w.get("label_logits")

    def init(self, batch, labels=None):
        return None

    def step(self, ids, state, labels=None):
        return self.table[ids] + (0 if labels is None else self.label[labels]), state


class MLP:
    """Embeddings of the last block_size tokens -> tanh layers; the state is that rolling context."""

    def __init__(self, spec, w):
        c = spec["config"]
        self.block, self.wte, self.head = c["block_size"], w["wte.weight"], (w["lm_head.weight"], w["lm_head.bias"])
        self.spec, self.w = spec, w
        self.layers = []
        for i in range(c["n_layer"]):
            norm = None
            if c["batch_norm"]:
                p = f"norms.{i}."
                norm = (w[p + "running_mean"], w[p + "running_var"], w[p + "weight"], w[p + "bias"])
            self.layers.append((w[f"hidden.{i}.weight"], w.get(f"hidden.{i}.bias"), norm))

    def init(self, batch, labels=None):
        return np.zeros((batch, self.block), dtype=np.int64)  # boundary padding, as the package pads contexts

    def step(self, ids, context, labels=None):
        context = np.concatenate([context[:, 1:], ids[:, None]], axis=1)
        h = self.wte[context]
        if labels is not None and self.spec["label_mode"] == "concat":
            h = np.concatenate([h, self.w["label_emb.table.weight"][labels][:, None]], axis=1)
        elif labels is not None:  # state: at the item's start, the context's last boundary (those before: padding)
            slots = np.arange(self.block)
            start = slots == np.where(context == BOUNDARY, slots, -1).max(axis=1, keepdims=True)
            h = with_label(h, self.w, self.spec, labels, start)
        h = h.reshape(len(ids), -1)
        for weight, bias, norm in self.layers:
            h = h @ weight.T + (0 if bias is None else bias)
            if norm is not None:
                mean, var, g, b = norm
                h = (h - mean) / np.sqrt(var + 1e-5) * g + b
            h = np.tanh(h)
        return h @ self.head[0].T + self.head[1], context


class WaveNet:
    """Causal dilated pair fusion; the state is, per layer, a queue of its last 2**layer inputs."""

    def __init__(self, spec, w):
        c = spec["config"]
        self.n_layer, self.norm, self.w, self.spec = c["n_layer"], c["norm"], w, spec
        h = w["wte.weight"][BOUNDARY][None]
        self.empty = []  # each layer's "before the start" input, (1, d, C)
        for layer in range(self.n_layer):
            self.empty.append(np.repeat(h[:, None], 2**layer, axis=1))
            h = self.level(layer, np.concatenate([h, h], axis=-1))

    def level(self, layer, pair):
        w, p = self.w, f"norms.{layer}."
        h = pair @ w[f"fuse.{layer}.weight"].T
        if self.norm == "batch":
            h = (h - w[p + "running_mean"]) / np.sqrt(w[p + "running_var"] + 1e-5) * w[p + "weight"] + w[p + "bias"]
        elif self.norm == "layer":
            h = layer_norm(h, w[p + "weight"], w[p + "bias"])
        else:
            h = h + w[f"fuse.{layer}.bias"]
        return np.tanh(h)

    def init(self, batch, labels=None):
        return [np.repeat(e, batch, axis=0) for e in self.empty]

    def step(self, ids, queues, labels=None):
        h = with_label(self.w["wte.weight"][ids], self.w, self.spec, labels, ids == BOUNDARY)
        new_item = (ids == BOUNDARY)[:, None, None]  # a boundary starts afresh
        out = []
        for layer, (queue, empty) in enumerate(zip(queues, self.empty)):
            queue = np.where(new_item, empty, queue)
            out.append(np.concatenate([queue[:, 1:], h[:, None]], axis=1))
            h = self.level(layer, np.concatenate([queue[:, 0], h], axis=-1))
        return h @ self.w["lm_head.weight"].T + self.w["lm_head.bias"], out


class Recurrent:
    """Stacked Elman / GRU / LSTM cells (PyTorch's gate order: GRU r, z, n; LSTM i, f, g, o)."""

    def __init__(self, spec, w):
        c = spec["config"]
        self.cell, self.n_layer, self.w, self.spec = spec["cell"], c["n_layer"], w, spec
        self.lstm, self.mode = self.cell == "lstm", spec.get("label_mode")

    def init(self, batch, labels=None):
        names = ["h0", "c0"] if self.lstm else ["h0"]
        state = [np.repeat(self.w[n].transpose(1, 0, 2), batch, axis=0) for n in names]  # (B, n_layer, H) each
        if labels is not None and self.mode == "state":  # a learned start per label, on top of h0 (and c0)
            state = [s + self.w[f"label_{n}.table.weight"][labels].reshape(s.shape) for s, n in zip(state, names)]
        return state

    def step(self, ids, state, labels=None):
        w, x = self.w, self.w["wte.weight"][ids]
        if labels is not None and self.mode == "concat":
            x = np.concatenate([x, w["label_emb.table.weight"][labels]], axis=-1)
        elif self.mode != "state":
            x = with_label(x, w, self.spec, labels, None)
        hs, cs = [], []
        for i in range(self.n_layer):
            h = state[0][:, i]
            gi = x @ w[f"rnn.weight_ih_l{i}"].T + w[f"rnn.bias_ih_l{i}"]
            gh = h @ w[f"rnn.weight_hh_l{i}"].T + w[f"rnn.bias_hh_l{i}"]
            if self.cell == "gru":
                ir, iz, i_n = np.split(gi, 3, axis=-1)
                hr, hz, hn = np.split(gh, 3, axis=-1)
                r, z = sigmoid(ir + hr), sigmoid(iz + hz)
                x = (1 - z) * np.tanh(i_n + r * hn) + z * h
            elif self.lstm:
                i_, f, g, o = np.split(gi + gh, 4, axis=-1)
                c = sigmoid(f) * state[1][:, i] + sigmoid(i_) * np.tanh(g)
                x = sigmoid(o) * np.tanh(c)
                cs.append(c)
            elif self.cell == "rnn_relu":
                x = np.maximum(gi + gh, 0.0)
            else:
                x = np.tanh(gi + gh)
            hs.append(x)
        new = [np.stack(hs, axis=1)] + ([np.stack(cs, axis=1)] if self.lstm else [])
        self.read = x  # what the output layer reads (a knn model's query)
        return x @ w["lm_head.weight"].T + w["lm_head.bias"], new


class Transformer:
    """Pre-LN GPT decoder with a KV cache; past block_size tokens the window slides and is re-read from position 0
    (as the package does, so steps equal the full forward)."""

    def __init__(self, spec, w):
        c = spec["config"]
        self.bs, self.n_layer, self.n_head, self.w, self.spec = c["block_size"], c["n_layer"], c["n_head"], w, spec

    def init(self, batch, labels=None):
        return {"tokens": np.zeros((batch, 0), dtype=np.int64), "start": np.zeros(batch, dtype=np.int64),
                "k": [np.zeros((batch, 0, self.w["wte.weight"].shape[1]))] * self.n_layer,
                "v": [np.zeros((batch, 0, self.w["wte.weight"].shape[1]))] * self.n_layer}  # fmt: skip

    def attention(self, i, x, keys, values, mask):
        """x (B, T, C) queries; keys/values (B, S, C); mask (B, T, S) -> (B, T, C) after the output projection."""
        w, p, nh = self.w, f"blocks.{i}.attn.", self.n_head
        B, T, C = x.shape
        q = x.reshape(B, T, nh, C // nh)
        k, v = keys.reshape(B, -1, nh, C // nh), values.reshape(B, -1, nh, C // nh)
        scores = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(C // nh)
        scores = np.where(mask[:, None], scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        y = np.einsum("bhts,bshd->bthd", scores / scores.sum(-1, keepdims=True), v).reshape(B, T, C)
        return y @ w[p + "c_proj.weight"].T + w.get(p + "c_proj.bias", 0)

    def blocks(self, x, mask, state, t):
        """x (B, T, C) at positions t..t+T-1 -> logits of the last position; appends keys and values to state."""
        w = self.w
        for i in range(self.n_layer):
            p = f"blocks.{i}."
            a = layer_norm(x, w[p + "ln_1.weight"], w.get(p + "ln_1.bias"))
            q, k, v = np.split(a @ w[p + "attn.c_attn.weight"].T + w.get(p + "attn.c_attn.bias", 0), 3, axis=-1)
            state["k"][i] = np.concatenate([state["k"][i][:, :t], k], axis=1)
            state["v"][i] = np.concatenate([state["v"][i][:, :t], v], axis=1)
            x = x + self.attention(i, q, state["k"][i], state["v"][i], mask)
            a = layer_norm(x, w[p + "ln_2.weight"], w.get(p + "ln_2.bias"))
            a = gelu(a @ w[p + "mlp.0.weight"].T + w.get(p + "mlp.0.bias", 0))
            x = x + a @ w[p + "mlp.2.weight"].T + w.get(p + "mlp.2.bias", 0)
        x = layer_norm(x[:, -1], w["ln_f.weight"], w.get("ln_f.bias"))
        return x @ w["lm_head.weight"].T

    def step(self, ids, state, labels=None):
        w, state = self.w, dict(state, k=list(state["k"]), v=list(state["v"]))
        t = state["tokens"].shape[1]
        if t >= self.bs:  # slide: re-read the last block_size tokens from position 0
            tokens = np.concatenate([state["tokens"][:, 1:], ids[:, None]], axis=1)
            pos = np.arange(self.bs)
            starts = np.maximum.accumulate(np.where(tokens == BOUNDARY, pos, 0), axis=1)  # where each item starts
            mask = (pos[None, None, :] <= pos[None, :, None]) & (pos[None, None, :] >= starts[:, :, None])
            x = with_label(
                w["wte.weight"][tokens] + w["wpe.weight"][pos - starts], w, self.spec, labels, tokens == BOUNDARY
            )
            return self.blocks(x, mask, state, 0), dict(state, tokens=tokens)
        start = np.where(ids == BOUNDARY, t, state["start"])
        x = (w["wte.weight"][ids] + w["wpe.weight"][t - start])[:, None]
        x = with_label(x, w, self.spec, labels, ids[:, None] == BOUNDARY)
        mask = (np.arange(t + 1)[None, :] >= start[:, None])[:, None]  # (B, 1, t + 1): this item's keys
        state["tokens"], state["start"] = np.concatenate([state["tokens"], ids[:, None]], axis=1), start
        return self.blocks(x, mask, state, t), state


class NGram:
    """Interpolated Kneser-Ney / add-k tables: per context its back-off weight and the shares of the symbols seen
    after it; p_m(. | h) = shares + back p_(m-1)(. | shorter h), from the uniform distribution up."""

    def __init__(self, spec, w):
        self.order, self.V, self.w = spec["order"], spec["vocab_size"], w
        self.offsets = w["ctx_offsets"].astype(np.int64)

    def init(self, batch, labels=None):
        return np.zeros((batch, self.order - 1), dtype=np.int64)

    def step(self, ids, context, labels=None):
        context = np.concatenate([context, ids[:, None]], axis=1)[:, 1:]
        return np.log(self.probs(context)), context

    def probs(self, context):
        """(P, >= order - 1) symbols before the next -> (P, V) its probabilities."""
        V, P, w = self.V, len(context), self.w
        keys = np.zeros(P, dtype=np.int64)
        for j in range(context.shape[1] - self.order + 1, context.shape[1]):
            keys = keys * V + context[:, j]
        probs = np.full((P, V), 1.0 / V)
        levels = len(self.offsets) - 1
        for i in range(levels):
            m = self.order - levels + 1 + i
            a, b = self.offsets[i], self.offsets[i + 1]
            if b == a:
                continue
            query = keys % V ** (m - 1)
            pos = np.minimum(np.searchsorted(w["ctx_keys"][a:b], query), b - a - 1)
            found = w["ctx_keys"][a:b][pos] == query
            probs *= np.where(found, w["ctx_back"][a:b][pos], 1.0)[:, None]
            sizes = np.where(found, w["ctx_sizes"][a:b][pos], 0)
            rows = np.repeat(np.arange(P), sizes)
            first = w["ctx_starts"][a:b][pos] - (np.cumsum(sizes) - sizes)
            entries = first[rows] + np.arange(len(rows))
            probs[rows, w["symbols"][entries]] += w["shares"][entries]
        return probs


class LabelledNGram:
    """p(. | h, k) = lambda_k p_k(. | h) + (1 - lambda_k) p_shared(. | h); members: the shared model, then each
    label's."""

    def __init__(self, spec, w):
        self.models = [build(m, w, f"members.{i}.") for i, m in enumerate(spec["members"])]
        self.weights, self.n = np.array(spec["weights"]), max(m.order for m in self.models) - 1

    def init(self, batch, labels=None):
        return np.zeros((batch, self.n), dtype=np.int64)

    def step(self, ids, context, labels=None):
        context = np.concatenate([context, ids[:, None]], axis=1)[:, 1:]
        probs = self.models[0].probs(context)
        for k in [] if labels is None else np.unique(labels):
            rows, weight = labels == k, self.weights[k]
            probs[rows] = weight * self.models[k + 1].probs(context[rows]) + (1 - weight) * probs[rows]
        return np.log(probs), context


class Mix:
    """p = sum_i weight_i p_i (log-linear: softmax(sum_i weight_i log p_i)): every member steps, then the
    distributions are combined."""

    def __init__(self, spec, w):
        self.members = [build(m, w, f"members.{i}.") for i, m in enumerate(spec["members"])]
        self.weights = spec["weights"]
        self.log_weights = [math.log(x) if x > 0 else None for x in spec["weights"]]
        self.log_linear = spec["config"].get("combine") == "log-linear"

    def init(self, batch, labels=None):
        return [m.init(batch, labels) for m in self.members]

    def step(self, ids, state, labels=None):
        outs = [m.step(ids, s, labels) for m, s in zip(self.members, state)]
        if self.log_linear:
            total = sum(x * log_softmax(o[0]) for o, x in zip(outs, self.weights) if x > 0)
            return log_softmax(total), [o[1] for o in outs]
        terms = [log_softmax(o[0]) + lw for o, lw in zip(outs, self.log_weights) if lw is not None]
        return logsumexp(np.stack(terms), axis=0), [o[1] for o in outs]


class KNN:
    """A recurrent network plus a memory of its training states (kNN-LM): lam p_knn + (1 - lam) p_net, p_knn from the
    k nearest distinct states (squared distance d_j), sum_j exp(-d_j / T) counts_j / sum_j exp(-d_j / T) n_j."""

    def __init__(self, spec, w):
        c = spec["config"]
        self.net = build(spec["members"][0], w, "members.0.")
        self.k, self.temperature, self.lam = c["k"], c["temperature"], c["lam"]
        self.mean, self.axes = w["mean"], w["axes"]
        # what followed key j: next_tokens[p], next_counts[p] times, p in offsets[j] .. offsets[j + 1] - 1
        self.offsets, self.next_tokens, self.next_counts = w["offsets"], w["next_tokens"], w["next_counts"]
        self.keys = w["keys"].astype(np.float32)  # (N, D), grouped by cell where there are cells
        self.norms = (self.keys * self.keys).sum(1)
        self.centres, self.starts, self.probes = w["centres"].astype(np.float32), w["starts"], c["probes"]
        self.centre_norms = (self.centres * self.centres).sum(1)  # cell c holds keys[starts[c]:starts[c + 1]]

    def init(self, batch, labels=None):
        return self.net.init(batch, labels)

    def step(self, ids, state, labels=None):
        logits, state = self.net.step(ids, state, labels)
        if self.lam == 0 or not len(self.keys):
            return log_softmax(logits), state
        q = ((self.net.read - self.mean) @ self.axes).astype(np.float32)  # (B, D)
        dist, near = self.nearest(q)
        weights = np.exp(-(dist - dist.min(1, keepdims=True)) / self.temperature)  # 0 where dist is inf
        starts = self.offsets[near].ravel()
        lengths = self.offsets[near + 1].ravel() - starts  # (B k,) pairs of each neighbour
        pairs = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        rows = np.repeat(np.arange(len(near)), lengths.reshape(len(near), -1).sum(1))
        mass = np.zeros(logits.shape, dtype=np.float64)  # (B, V)
        np.add.at(mass, (rows, self.next_tokens[pairs]), np.repeat(weights.ravel(), lengths) * self.next_counts[pairs])
        p = self.lam * mass / mass.sum(1, keepdims=True) + (1 - self.lam) * np.exp(log_softmax(logits))
        return np.log(p), state

    def nearest(self, q):
        """The k nearest keys of each query (B, D), with cells among the keys of its `probes` nearest cells: squared
        distances less |q|^2 (which cancels in the weights; in float64, as makemore's) and indices, (B, k); inf
        where there are fewer keys."""
        dist, near = self.search(q)
        keys = self.keys[near].astype(np.float64)  # (B, k, D)
        exact = (keys * keys).sum(-1) - 2 * np.einsum("bkd,bd->bk", keys, q.astype(np.float64))
        return np.where(np.isinf(dist), np.inf, exact), near

    def search(self, q):
        if not len(self.centres):
            d = self.norms[None, :] - 2 * (q @ self.keys.T)  # (B, N)
            k = min(self.k, d.shape[1])
            near = np.argpartition(d, k - 1, axis=1)[:, :k]  # (B, k)
            return np.take_along_axis(d, near, axis=1).astype(np.float64), near
        probe = np.argsort(self.centre_norms[None, :] - 2 * (q @ self.centres.T), axis=1, kind="stable")
        dist, near = np.full((len(q), self.k), np.inf), np.zeros((len(q), self.k), dtype=np.int64)
        for b, cells in enumerate(probe[:, : self.probes]):
            keys = np.concatenate([np.arange(self.starts[c], self.starts[c + 1]) for c in cells])
            d = self.norms[keys] - 2 * (self.keys[keys] @ q[b])
            k = min(self.k, len(keys))
            best = np.argpartition(d, k - 1)[:k]
            dist[b, :k], near[b, :k] = d[best], keys[best]
        return dist, near


class Conditioned:
    """A labelled net under label weights (K,): one label; a blend (the labels' next-character distributions mixed at
    every step, as `makemore sample --label a=0.7,b=0.3`); or, posterior, the prior updated by Bayes' rule as the
    characters come in, so that the mixture is p(item) = sum_k p(k) p(item | k) (as makemore without --label)."""

    def __init__(self, net, weights, posterior=False):
        self.net, self.posterior = net, posterior
        self.active = [k for k, x in enumerate(weights) if x > 0]
        self.log_w = np.log([weights[k] for k in self.active])

    def init(self, batch):
        labels = [np.full(batch, k) for k in self.active]  # each row steps once per active label
        return {"labels": labels, "s": [self.net.init(batch, k) for k in labels], "w": np.tile(self.log_w, (batch, 1)),
                "seen": None}  # fmt: skip

    def step(self, ids, state):
        w = state["w"]
        if state["seen"] is not None:  # p(k | the characters so far)
            w = w + np.stack([logp[np.arange(len(ids)), ids] for logp in state["seen"]], axis=1)
            w = w - logsumexp(w, axis=1)[:, None]
        outs = [self.net.step(ids, s, k) for s, k in zip(state["s"], state["labels"])]
        logps = [log_softmax(o[0]) for o in outs]
        seen = logps if self.posterior and len(logps) > 1 else None
        mixed = logsumexp(np.stack(logps) + w.T[:, :, None], axis=0)
        return mixed, {"labels": state["labels"], "s": [o[1] for o in outs], "w": w, "seen": seen}


FAMILIES = {"bigram": Bigram, "mlp": MLP, "wavenet": WaveNet, "recurrent": Recurrent, "transformer": Transformer,
            "ngram": NGram, "labelled_ngram": LabelledNGram, "mix": Mix, "knn": KNN}  # fmt: skip


def build(spec, arrays, prefix=""):
    weights = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    return FAMILIES[spec["family"]](spec, weights)


# ------------------------------------------------------------------------------------------ sampling and scoring
class Model:
    def __init__(self, config, arrays):
        self.config, self.chars = config, config["vocab"]
        self.stoi = {c: i + 1 for i, c in enumerate(self.chars)}
        self.V = len(self.chars) + 1
        self.net = build(config["model"], arrays)
        self.labels, self.prior = config.get("labels", []), config.get("label_prior")

    def under(self, label):
        """What samples and scores: the net, or a labelled one under `label` (a name, "a=0.7,b=0.3", a dict of
        weights; None: p(item), the labels' prior updated as the characters come in)."""
        if label is None:
            return Conditioned(self.net, self.prior, posterior=True) if self.labels else self.net
        if not self.labels:
            raise ValueError("this model was trained without labels")
        if isinstance(label, str):
            try:
                label = {n.strip(): float(v) if v else 1.0 for n, _, v in (p.partition("=") for p in label.split(","))}
            except ValueError:
                raise ValueError(f"label {label!r}: expected LABEL or LABEL=WEIGHT,LABEL=WEIGHT") from None
        unknown = [name for name in label if name not in self.labels]
        if unknown:
            raise ValueError(f"label {unknown[0]!r} is not a label of this model (labels: {', '.join(self.labels)})")
        weights = np.array([float(label.get(name, 0.0)) for name in self.labels])
        if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
            raise ValueError(f"label {label}: weights must be finite, >= 0 and not all 0")
        return Conditioned(self.net, weights / weights.sum())

    def encode(self, text, what="item"):
        missing = sorted({c for c in text if c not in self.stoi})
        if missing:
            raise ValueError(f"{what} {text!r} has characters not in the vocabulary: {' '.join(map(repr, missing))}")
        return [self.stoi[c] for c in text]

    def step(self, net, ids, state):
        logits, state = net.step(np.asarray(ids, dtype=np.int64), state)
        return log_softmax(logits), state

    def score(self, items: str | list[str], label=None) -> list[float]:
        """Total log-probability of each item (natural log, the end of the item included); a labelled model's given
        `label` (see `under`)."""
        items = [items] if isinstance(items, str) else list(items)
        encoded, net = [self.encode(item) for item in items], self.under(label)
        totals = [0.0] * len(items)
        for length in sorted({len(e) for e in encoded}):  # one batch per length: every row steps together
            rows = [i for i, e in enumerate(encoded) if len(e) == length]
            tokens = np.array([[BOUNDARY] + encoded[i] + [BOUNDARY] for i in rows], dtype=np.int64)
            state, picked = net.init(len(rows)), []
            for t in range(length + 1):
                logp, state = self.step(net, tokens[:, t], state)
                picked.append(logp[np.arange(len(rows)), tokens[:, t + 1]])
            for row, values in zip(rows, np.stack(picked, axis=1)):
                totals[row] = math.fsum(values.tolist())
        return totals

    def classify(self, items: str | list[str]) -> list[dict]:
        """Per item: the likeliest label and p(label | item) of each, by Bayes' rule with the labels' prior (their
        shares of the training items), as `makemore classify`."""
        if not self.labels:
            raise ValueError("this model was trained without labels")
        items = [items] if isinstance(items, str) else list(items)
        with np.errstate(divide="ignore"):
            scores = np.array([self.score(items, {name: 1}) for name in self.labels]).T.reshape(len(items), -1)
            probs = np.exp(log_softmax(scores + np.log(self.prior)))
        return [{"item": item, "label": self.labels[int(np.argmax(row))], "probs": dict(zip(self.labels, row.tolist()))}
                for item, row in zip(items, probs)]  # fmt: skip

    def sample(
        self,
        n: int = 10,
        temperature: float = 1.0,
        top_k: int | None = None,
        prefix: str = "",
        max_len: int | None = None,
        seed: int | None = None,
        suffix: str = "",
        min_len: int = 1,
        logprobs: bool = False,
        conditioning: str = "auto",
        label=None,
    ) -> list:
        """n items drawn from the model (temperature, then top-k, as makemore samples). prefix/suffix: every item
        starts/ends with them; min_len/max_len: characters per item (default max: the run's). Items are strings, or
        (item, log-probability under the model) pairs with logprobs=True.

        A suffix is met as makemore meets it (`conditioning`): "reject" draws items given the prefix and keeps those
        that end with it (exactly the model conditioned on the suffix; after max(2000, 200 n) candidates it masks
        the rest); "mask" forces it step by step (always fast,
        but it favours items whose early characters made the suffix hard to reach, often long ones); "auto" rejects
        while at least 0.5% of the candidates pass (judged after 2,000), then masks for the rest. A labelled model
        samples given `label` (see `under`; None: from p(item))."""
        max_len = self.config["max_len"] if max_len is None else max_len
        if temperature <= 0 or (top_k is not None and top_k < 1) or n < 0 or min_len < 0 or max_len < 1:
            raise ValueError("need temperature > 0, top_k >= 1, n >= 0, min_len >= 0, max_len >= 1")
        if conditioning not in ("auto", "mask", "reject"):
            raise ValueError(f"conditioning is auto, mask or reject, not {conditioning!r}")
        rng = np.random.default_rng(seed)
        pre, suf = self.encode(prefix, "prefix"), self.encode(suffix, "suffix")
        if len(pre) > max_len:
            raise ValueError(f"the prefix has {len(pre)} characters, over max_len {max_len}")
        masked = self._constraint(pre, suf, min_len, max_len)
        net = self.under(label)
        total = 0.0
        logp, state = self.step(net, [BOUNDARY], net.init(1))
        for token in pre:
            total += logp[0, token]
            logp, state = self.step(net, [token], state)
        primed = (net, logp, state, total)
        if not masked[0](len(pre), masked[2](pre)).any():
            raise ValueError(
                f"no item of {min_len}..{max_len} characters starts with {prefix!r} and ends with {suffix!r}"
            )
        drawn, out = 0, []
        rejecting = bool(suf) and conditioning != "mask"
        free = self._constraint(pre, [], min_len, max_len) if rejecting else None
        while len(out) < n:
            rare = drawn >= 2000 and len(out) + 1 < 0.005 * (drawn + 1)
            if rejecting and ((conditioning == "auto" and rare) or drawn >= max(2000, 200 * n)):
                rejecting = False  # too rare to find by chance: mask for the rest
            if rejecting:
                size = min(max(2 * (n - len(out)), 500), 50_000)
                batch = self._draw(size, pre, primed, free, temperature, top_k, rng)
                drawn += size
                out += [pair for pair in batch if pair[0].endswith(suffix)][: n - len(out)]
            else:
                out += self._draw(n - len(out), pre, primed, masked, temperature, top_k, rng)
        return out if logprobs else [item for item, _ in out]

    def _draw(self, n, pre, primed, constraint, temperature, top_k, rng):
        """n (item, log-prob) pairs from the primed prefix under `constraint` (masks, KMP table, start state)."""
        allowed, advance, start = constraint
        net, logp, state, total = primed
        # Rows whose items so far are equal share one state row (all of them after the prefix, at most V after one
        # character...): `parent` maps rows to state rows while that saves work, as makemore's decoder does.
        parent, logp = np.zeros(n, dtype=np.int64), logp[np.zeros(n, dtype=np.int64)]
        alive, kmp = np.arange(n), np.full(n, start(pre)[0])
        out, totals = [list(pre) for _ in range(n)], np.full(n, total)
        for t in range(len(pre), len(allowed.ends) - 1):
            masked = np.where(allowed(t, kmp), logp, -np.inf) / temperature
            if top_k is not None and top_k < self.V:
                kth = -np.partition(-masked, top_k - 1, axis=1)[:, top_k - 1 : top_k]
                masked = np.where(masked < kth, -np.inf, masked)
            with np.errstate(divide="ignore"):
                noise = -np.log(-np.log(rng.random(masked.shape)))  # Gumbel-max: argmax is a sample
            chosen = np.argmax(masked + noise, axis=1)
            totals[alive] += logp[np.arange(len(alive)), chosen]
            going = chosen != BOUNDARY
            for row, token in zip(alive[going], chosen[going]):
                out[row].append(int(token))
            if not going.any():
                break
            keep = np.nonzero(going)[0]
            alive, kmp, chosen = alive[keep], advance[kmp[keep], chosen[keep]], chosen[keep]
            if parent is not None:
                parent = parent[keep]
                pairs, inverse = np.unique(parent * self.V + chosen, return_inverse=True)
                if len(pairs) <= len(chosen) // 2:
                    logp, state = self.step(net, pairs % self.V, select(state, pairs // self.V))
                    logp, parent = logp[inverse.reshape(-1)], inverse.reshape(-1)
                    continue
                state, parent = select(state, parent), None
            else:
                state = select(state, keep)
            logp, state = self.step(net, chosen, state)
        items = ["".join(self.chars[i - 1] for i in ids) for ids in out]
        return list(zip(items, totals.tolist()))

    def _constraint(self, pre, suf, min_len, max_len):
        """Exact masks for the suffix and the length bounds: a KMP automaton over the suffix (state = how much of it
        the text ends with) and, for each length t and state, whether some allowed completion exists."""
        S, V = len(suf), self.V
        advance = np.zeros((S + 1, V), dtype=np.int64)
        for s in range(S + 1):
            for c in range(1, V):
                text = suf[:s] + [c]  # the longest end of the text so far + c that begins the suffix
                k = next(k for k in range(min(len(text), S), -1, -1) if text[len(text) - k :] == suf[:k])
                advance[s, c] = k
        ends = np.zeros((max_len + 2, S + 1), dtype=bool)  # ends[t, s]: can finish from t characters in state s
        for t in range(max_len, -1, -1):
            ends[t] = (np.arange(S + 1) == S) & (t >= min_len)
            if t < max_len:
                ends[t] |= ends[t + 1][advance[:, 1:]].any(axis=1)

        def allowed(t, states):
            mask = np.zeros((len(states), V), dtype=bool)
            mask[:, BOUNDARY] = (states == S) & (t >= min_len)
            if t < max_len:
                mask[:, 1:] = ends[t + 1][advance[states, 1:]]
            return mask

        def start(ids):  # the automaton's state after the prefix
            state = 0
            for token in ids:
                state = advance[state, token]
            return np.array([state])

        allowed.ends = ends
        return allowed, advance, start


def load(folder: str | None = None) -> Model:
    """The model in `folder` (default: the folder this file is in)."""
    folder = folder or os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    with np.load(os.path.join(folder, "weights.npz")) as data:
        arrays = {k: data[k] if data[k].dtype.kind != "f" else data[k].astype(np.float64) for k in data.files}
    return Model(config, arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sample from or score with an exported makemore model (NumPy).")
    parser.add_argument("--model", default=None, help="the export folder (default: this file's folder)")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("sample", help="draw items")
    s.add_argument("-n", type=int, default=10)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--prefix", default="")
    s.add_argument("--suffix", default="")
    s.add_argument("--min-len", type=int, default=1)
    s.add_argument("--max-len", type=int, default=None)
    s.add_argument("--seed", type=int, default=None)
    c = commands.add_parser("score", help="total log-probability of each item")
    c.add_argument("items", nargs="+")
    for command in (s, c):
        command.add_argument("--label", default=None, help="labelled models: LABEL or a blend LABEL=W,LABEL=W")
    commands.add_parser("classify", help="p(label | item) of each label").add_argument("items", nargs="+")
    args = parser.parse_args(argv)
    try:
        model = load(args.model)
        if args.command == "sample":
            options = {k: getattr(args, k) for k in ("n", "temperature", "top_k", "prefix", "suffix", "seed", "label")}
            for item in model.sample(min_len=args.min_len, max_len=args.max_len, **options):
                print(item)
        elif args.command == "score":
            for item, total in zip(args.items, model.score(args.items, args.label)):
                print(f"{item}\t{total:.6f}")
        else:
            for r in model.classify(args.items):
                print("\t".join([r["item"], r["label"], *(f"{k}={p:.6f}" for k, p in r["probs"].items())]))
    except (ValueError, OSError) as error:
        print(f"makemore_sampler: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
