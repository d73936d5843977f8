"""Causal self-attention over packed rows, forward and backward, as compiled (Numba) loops, for training on a CPU.

At makemore's sizes (16 positions, 16-wide heads, items packed into rows) PyTorch's CPU attention
(`scaled_dot_product_attention`, a flash-attention kernel made for long sequences) took a fifth of a training step.
Here one loop nest reads the query/key/value projection (B, T, 3C) as the linear layer wrote it, visits only the
allowed key positions of each query (its own item's, not later ones: packed rows leave few), and writes the output
(B, T, C) where the next linear layer reads it. The softmax probabilities are kept for the backward pass. On full
causal windows longer than 16 positions PyTorch's kernel is faster: `transformer.COMPILED_ATTENTION_MAX_T`.

Each call releases the GIL (threads training shards of one batch run side by side) and computes in float32, up to
summation order what `scaled_dot_product_attention` computes with the equivalent mask.
"""

from __future__ import annotations

import math

import numba
import numpy as np


def _jit(fn):
    # fastmath lets the loops over a head's dimensions vectorise (reassociated sums); inputs are finite. NumPy's
    # error model: no zero-division checks (softmax sums are >= 1): backward 226 vs 256 us (batch 16 x 32, 1 thread)
    return numba.njit(cache=True, fastmath=True, nogil=True, error_model="numpy")(fn)


@_jit
def forward(qkv, starts, n_head, y, probs):  # pragma: no cover - compiled
    """qkv (B, T, 3C): queries, keys, values of all heads; starts (B, T): first position each query may see (its
    item's start). Writes y (B, T, C) and the probabilities into probs (B, n_head, T, T), only the allowed entries;
    probs (1, n_head, T, T) is scratch space reused by every row (no backward to come)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    scale = np.float32(1.0 / math.sqrt(hs))
    for b in range(B):
        for h in range(n_head):
            qo, ko, vo = h * hs, C + h * hs, 2 * C + h * hs
            for i in range(T):
                first = starts[b, i]
                q = qkv[b, i, qo : qo + hs]
                p = probs[b if probs.shape[0] == B else 0, h, i]
                top = np.float32(-np.inf)
                for j in range(first, i + 1):
                    k = qkv[b, j, ko : ko + hs]
                    dot = np.float32(0.0)
                    for d in range(hs):
                        dot += q[d] * k[d]
                    dot *= scale
                    p[j] = dot
                    top = max(top, dot)
                total = np.float32(0.0)
                for j in range(first, i + 1):
                    e = np.float32(math.exp(p[j] - top))
                    p[j] = e
                    total += e
                inv = np.float32(1.0) / total
                out = y[b, i, h * hs : (h + 1) * hs]
                for d in range(hs):
                    out[d] = 0.0
                for j in range(first, i + 1):
                    pj = p[j] * inv
                    p[j] = pj
                    v = qkv[b, j, vo : vo + hs]
                    for d in range(hs):
                        out[d] += pj * v[d]


@_jit
def backward(qkv, starts, n_head, probs, dy, dqkv):  # pragma: no cover - compiled
    """Gradient of `forward`: dy (B, T, C) -> dqkv (B, T, 3C), which must start zeroed."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    scale = np.float32(1.0 / math.sqrt(hs))
    dp = np.empty(T, dtype=np.float32)
    for b in range(B):
        for h in range(n_head):
            qo, ko, vo = h * hs, C + h * hs, 2 * C + h * hs
            for i in range(T):
                first = starts[b, i]
                p = probs[b, h, i]
                g = dy[b, i, h * hs : (h + 1) * hs]
                row = np.float32(0.0)  # sum_j p_j dp_j: the softmax's backward subtracts it
                for j in range(first, i + 1):
                    v = qkv[b, j, vo : vo + hs]
                    dv = dqkv[b, j, vo : vo + hs]
                    pj = p[j]
                    dot = np.float32(0.0)
                    for d in range(hs):
                        dot += g[d] * v[d]
                        dv[d] += pj * g[d]
                    dp[j] = dot
                    row += pj * dot
                q = qkv[b, i, qo : qo + hs]
                dq = dqkv[b, i, qo : qo + hs]
                for j in range(first, i + 1):
                    ds = p[j] * (dp[j] - row) * scale
                    k = qkv[b, j, ko : ko + hs]
                    dk = dqkv[b, j, ko : ko + hs]
                    for d in range(hs):
                        dq[d] += ds * k[d]
                        dk[d] += ds * q[d]
