"""The Transformer's incremental step as one compiled (Numba) function, for small batches on the CPU.

At batch size 1 a decoding step is about 150 tiny operations. Each costs its dispatch, not its arithmetic: measured
on the 2-core CI machine for the 4-layer, 64-wide model, a step took 1.8-2.4 ms in eager PyTorch, 1.2 ms
TorchScript-frozen, 0.72 ms `torch.compile`d (after 33 s of compiling), 0.29-0.48 ms as NumPy calls, and 0.08 ms
as this one compiled loop nest. So interactive use (one item per call) gets the compiled step; large batches stay
with PyTorch, whose matrix kernels win once the arithmetic dominates.

It computes exactly what `Transformer.step` computes (same cache layout, read and written in place through NumPy
views of the same tensors, so the two paths can alternate within one decode), in float32 up to summation order.
Compiling takes a few seconds once per machine (cached on disk by Numba), and importing Numba and loading the cache
about half a second per process, so this module is imported lazily and `Transformer` only switches to it once a
process has decoded several small batches. Without Numba, everything works through PyTorch.
"""

from __future__ import annotations

import math

import numba
import numpy as np


def _jit(fn):
    # fastmath lets the inner loops vectorise (reassociated sums); inputs are finite, so no inf/nan is assumed away
    return numba.njit(cache=True, fastmath=True)(fn)


@_jit
def _layer_norm(x, weight, bias, out):  # pragma: no cover - compiled
    n = x.shape[0]
    mean = 0.0
    for i in range(n):
        mean += x[i]
    mean /= n
    var = 0.0
    for i in range(n):
        d = x[i] - mean
        var += d * d
    inv = 1.0 / math.sqrt(var / n + 1e-5)
    for i in range(n):
        out[i] = (x[i] - mean) * inv * weight[i] + bias[i]


@_jit
def _linear(x, weight_t, bias, out):  # pragma: no cover - compiled
    """out = x @ weight_t + bias; weight_t (in, out): the inner loop runs along contiguous outputs."""
    for o in range(weight_t.shape[1]):
        out[o] = bias[o]
    for i in range(weight_t.shape[0]):
        xi = x[i]
        for o in range(weight_t.shape[1]):
            out[o] += xi * weight_t[i, o]


@_jit
def _step_row(token, b, t, start, tokens, keys, values, weights, n_head, out):  # pragma: no cover - compiled
    """Row b of `step_kernel`: its logits into out (V,)."""
    wte, wpe, ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b = weights[:10]
    fc_w, fc_b, out_w, out_b, lnf_w, lnf_b, head_w, head_b = weights[10:]
    C = wte.shape[1]
    x = np.empty(C, np.float32)
    h = np.empty(C, np.float32)
    qkv = np.empty(3 * C, np.float32)
    y = np.empty(C, np.float32)
    branch = np.empty(C, np.float32)
    hidden = np.empty(fc_w.shape[2], np.float32)
    scores = np.empty((n_head, t + 1), np.float32)
    tokens[b, t] = token
    if token == 0:  # the boundary token: a new item starts here
        start[b] = t
    first = start[b]
    for i in range(C):
        x[i] = wte[token, i] + wpe[t - first, i]
    k3, v3 = _rows_of(keys), _rows_of(values)
    for layer in range(attn_w.shape[0]):
        _layer_norm(x, ln1_w[layer], ln1_b[layer], h)
        _linear(h, attn_w[layer], attn_b[layer], qkv)
        _attend_row(qkv, t, first, k3, v3, layer, b, n_head, scores, y)
        _linear(y, proj_w[layer], proj_b[layer], branch)
        for i in range(C):
            x[i] += branch[i]
        _layer_norm(x, ln2_w[layer], ln2_b[layer], h)
        _linear(h, fc_w[layer], fc_b[layer], hidden)
        for i in range(hidden.shape[0]):  # exact GELU, as nn.GELU()
            hidden[i] = 0.5 * hidden[i] * (1.0 + math.erf(hidden[i] * 0.7071067811865476))
        _linear(hidden, out_w[layer], out_b[layer], branch)
        for i in range(C):
            x[i] += branch[i]
    _layer_norm(x, lnf_w, lnf_b, h)
    _linear(h, head_w, head_b, out)


@_jit
def step_kernel(idx, t, start, tokens, keys, values, weights, n_head):  # pragma: no cover - compiled
    """Logits (B, V) for tokens idx (B,) at cache position t < block_size, as `Transformer.step`.

    Updates the state's arrays in place as `step` does: tokens (B, block_size) and keys/values (block_size, L, B,
    n_head, head_size) at position t, and start (B,) (where each row's item began) at a boundary token.
    `weights`: the tuple `Transformer._kernel_arrays` builds (matrices stored (in, out); per-layer weights stacked
    along a first axis of length L).
    """
    head_w = weights[16]  # (C, V): the output layer, in `_kernel_arrays`' order
    logits = np.empty((idx.shape[0], head_w.shape[1]), np.float32)
    for b in range(idx.shape[0]):
        _step_row(idx[b], b, t, start, tokens, keys, values, weights, n_head, logits[b])
    return logits


@numba.njit(cache=True)  # no fastmath: the choices must equal PyTorch's float32 arithmetic in sample._decode_small
def sample_rows(logits, noise, steps, t, min_len, max_len, temperature, greedy, position, start, tokens, keys,
                values, weights, n_head):  # fmt: skip  # pragma: no cover - compiled
    """The whole decode of a few rows under lengths-only constraints, one compiled call: what
    `sample._decode_small` does with `Transformer.step`, with the same random numbers and the same choices.

    logits (n, V): the next-token logits after the prefix (t characters so far), the state's cache holding
    `position` positions; noise (steps, n, V): Gumbel noise (unused when greedy). Each step masks the end token
    before min_len characters and every character at max_len, divides by the temperature (unless 1), adds the
    noise, and takes the first maximum. Returns the tokens (n, steps; 0 = end, then 0s) and, per token, the
    model's log-prob and the masked (renormalised) log-prob.
    """
    n, V = logits.shape
    out_tokens = np.zeros((n, steps), np.int64)
    model_lp = np.zeros((n, steps), np.float32)
    masked_lp = np.zeros((n, steps), np.float32)
    for b in range(n):
        row = logits[b].copy()
        for j in range(steps):
            chars = t + j
            end_ok = chars >= min_len
            char_ok = chars + 1 <= max_len
            best, best_score = -1, np.float32(0.0)
            top = -np.inf
            for v in range(V):
                top = max(top, np.float64(row[v]))
            all_sum, allowed_sum = 0.0, 0.0
            for v in range(V):
                e = math.exp(np.float64(row[v]) - top)
                all_sum += e
                if end_ok if v == 0 else char_ok:
                    allowed_sum += e
                    score = row[v]
                    if not greedy:
                        if temperature != 1.0:
                            score = score / np.float32(temperature)
                        score = score + noise[j, b, v]
                    if best < 0 or score > best_score:
                        best, best_score = v, score
            out_tokens[b, j] = best
            picked = np.float64(row[best]) - top
            model_lp[b, j] = picked - math.log(all_sum)
            masked_lp[b, j] = picked - math.log(allowed_sum)
            if best == 0 or j == steps - 1:
                break
            _step_row(best, b, position + j, start, tokens, keys, values, weights, n_head, row)
    return out_tokens, model_lp, masked_lp


@_jit
def add_layer_norm(x, delta, weight, bias, out):  # pragma: no cover - compiled
    """For batches of any size: x += delta (the residual branch; skipped when delta has no rows), then
    out = LayerNorm(x), row by row. x, delta, out (B, C); the PyTorch step's add and layer_norm, in one pass."""
    add = delta.shape[0] > 0
    for b in range(x.shape[0]):
        if add:
            for i in range(x.shape[1]):
                x[b, i] += delta[b, i]
        _layer_norm(x[b], weight, bias, out[b])


@_jit
def _rows_of(cache):  # pragma: no cover - compiled
    """A cache (block_size, L, B, n_head, head_size) viewed as (block_size, L, B, C): a row's heads side by side."""
    return cache.reshape(cache.shape[0], cache.shape[1], cache.shape[2], cache.shape[3] * cache.shape[4])


@_jit
def _attend_row(qkv, t, first, keys, values, layer, r, n_head, scores, out):  # pragma: no cover - compiled
    """One row's attention at position t: writes its key and value into the cache (keys/values: `_rows_of` views)
    at row r, then puts into out (C,) the attention of its query over positions first..t (earlier ones belong
    to another item). qkv (3C,); scores: scratch (n_head, >= t + 1). Slices keep every inner loop on a plain
    index, so it vectorises (indices computed otherwise carry Numba's negative-index checks, which block that)."""
    C = out.shape[0]
    hs = C // n_head
    scale = np.float32(1.0 / math.sqrt(hs))
    key_t, value_t = keys[t, layer, r], values[t, layer, r]
    new_key, new_value = qkv[C : 2 * C], qkv[2 * C :]
    for c in range(C):
        key_t[c] = new_key[c]
        value_t[c] = new_value[c]
    for j in range(first, t + 1):
        key = keys[j, layer, r]
        for h in range(n_head):
            q_h, k_h = qkv[h * hs : (h + 1) * hs], key[h * hs : (h + 1) * hs]
            s = np.float32(0.0)
            for d in range(hs):
                s += q_h[d] * k_h[d]
            scores[h, j] = s * scale
    for h in range(n_head):
        row = scores[h]
        top = np.float32(-3.0e38)
        for j in range(first, t + 1):
            top = max(top, row[j])
        total = np.float32(0.0)
        for j in range(first, t + 1):
            row[j] = math.exp(row[j] - top)
            total += row[j]
        for j in range(first, t + 1):
            row[j] /= total
    for c in range(C):
        out[c] = 0.0
    for j in range(first, t + 1):
        value = values[j, layer, r]
        for h in range(n_head):
            weight, out_h, v_h = scores[h, j], out[h * hs : (h + 1) * hs], value[h * hs : (h + 1) * hs]
            for d in range(hs):
                out_h[d] += weight * v_h[d]


@_jit
def attend(qkv, t, start, keys, values, rows, layer, n_head):  # pragma: no cover - compiled
    """One query per row, for batches of any size: qkv (B, 3C) of this step's position t. Writes its keys and
    values into the cache (block_size, L, B', n_head, head_size), row b's at rows[b], and returns the attention
    output (B, C) over positions start[b]..t of each row, as the PyTorch step's baddbmm/softmax/bmm."""
    B, C = qkv.shape[0], qkv.shape[1] // 3
    k3, v3 = _rows_of(keys), _rows_of(values)
    out = np.empty((B, C), np.float32)
    scores = np.empty((n_head, t + 1), np.float32)
    for b in range(B):
        _attend_row(qkv[b], t, start[b], k3, v3, layer, rows[b], n_head, scores, out[b])
    return out
