// makemore's exported sampler, part 1: the model families of makemore_sampler.py in plain JavaScript (float64
// arithmetic on the embedded weights); part 2 (sampler.js): the seeded sampler and the page around it.
const BOUNDARY = 0;

// ------------------------------------------------------------------------------------------------ weights
function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
  if (e === 0) return s * f * Math.pow(2, -24);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * Math.pow(2, e - 15);
}

async function readWeights(config) {
  const text = document.getElementById("model-weights").textContent.trim(), digit = new Int32Array(128).fill(-1);
  [...config.weights.alphabet].forEach((c, i) => { digit[c.charCodeAt(0)] = i; });
  const raw = new Uint8Array(text.length / 5 * 4);  // base85: 5 characters -> 4 bytes, big-endian
  for (let g = 0; g < text.length / 5; g++) {
    let v = 0;
    for (let k = 0; k < 5; k++) v = v * 85 + digit[text.charCodeAt(5 * g + k)];
    raw[4 * g] = v >>> 24; raw[4 * g + 1] = (v >>> 16) & 255; raw[4 * g + 2] = (v >>> 8) & 255; raw[4 * g + 3] = v & 255;
  }
  const stream = new Blob([raw.subarray(0, config.weights.bytes)]).stream().pipeThrough(new DecompressionStream("gzip"));
  const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  const arrays = {};
  for (const [name, t] of Object.entries(config.tensors)) {
    const size = { float64: 8, float32: 4, float16: 2, int64: 8, int32: 4, int16: 2, uint8: 1 }[t.dtype];
    const n = t.shape.reduce((a, b) => a * b, 1);
    const plain = new Uint8Array(n * size);  // the bytes were stored plane by plane (they compress better)
    for (let j = 0; j < size; j++) for (let i = 0; i < n; i++) plain[i * size + j] = bytes[t.offset + j * n + i];
    const view = new DataView(plain.buffer);
    let data;
    if (t.dtype === "int64") {
      data = new BigInt64Array(n);
      for (let i = 0; i < n; i++) data[i] = view.getBigInt64(i * 8, true);
    } else {
      data = new Float64Array(n);
      const get = { float64: (i) => view.getFloat64(i * 8, true), float32: (i) => view.getFloat32(i * 4, true),
        float16: (i) => halfToFloat(view.getUint16(i * 2, true)), int32: (i) => view.getInt32(i * 4, true),
        int16: (i) => view.getInt16(i * 2, true), uint8: (i) => view.getUint8(i) }[t.dtype];
      for (let i = 0; i < n; i++) data[i] = get(i);
    }
    arrays[name] = { data, shape: t.shape };
  }
  return arrays;
}

// ------------------------------------------------------------------------------------------------ arithmetic
function linear(w, b, x) {  // w (out, in) row-major, x (in,) -> (out,)
  const [nout, nin] = w.shape, W = w.data, y = new Float64Array(nout);
  for (let o = 0; o < nout; o++) {
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0, i = 0;  // four running sums: the loop is the page's hot spot
    const base = o * nin;
    for (; i + 3 < nin; i += 4) {
      s0 += W[base + i] * x[i]; s1 += W[base + i + 1] * x[i + 1];
      s2 += W[base + i + 2] * x[i + 2]; s3 += W[base + i + 3] * x[i + 3];
    }
    for (; i < nin; i++) s0 += W[base + i] * x[i];
    y[o] = (b ? b.data[o] : 0) + ((s0 + s1) + (s2 + s3));
  }
  return y;
}
function row(t, i) { const n = t.shape[t.shape.length - 1]; return t.data.slice(i * n, (i + 1) * n); }
function concat(parts) {
  const out = new Float64Array(parts.reduce((a, p) => a + p.length, 0));
  let k = 0;
  for (const p of parts) { out.set(p, k); k += p.length; }
  return out;
}
function layerNorm(x, w, b) {
  let mean = 0, v = 0;
  for (const a of x) mean += a;
  mean /= x.length;
  for (const a of x) v += (a - mean) * (a - mean);
  const r = 1 / Math.sqrt(v / x.length + 1e-5);
  return x.map((a, i) => (a - mean) * r * w.data[i] + (b ? b.data[i] : 0));
}
function batchNorm(x, w, p) {
  const m = w[p + "running_mean"].data, v = w[p + "running_var"].data, g = w[p + "weight"].data, b = w[p + "bias"].data;
  return x.map((a, i) => (a - m[i]) / Math.sqrt(v[i] + 1e-5) * g[i] + b[i]);
}
const sigmoid = (a) => 0.5 * (1 + Math.tanh(0.5 * a));
function logSoftmax(x) {
  let top = -Infinity, s = 0;
  for (const a of x) if (a > top) top = a;
  for (const a of x) s += Math.exp(a - top);
  const z = top + Math.log(s);
  return x.map((a) => a - z);
}
function erfSeries(x) {  // to ~1e-15: a series of positive terms below 2.5, the continued fraction of erfc above
  const ax = Math.abs(x);
  if (ax > 6) return Math.sign(x);
  if (ax < 2.5) {  // erf x = 2/sqrt(pi) e^{-x^2} sum 2^n x^{2n+1} / (1 3 5 ... (2n+1))
    let term = ax, sum = ax;
    for (let n = 0; n < 200 && term > 1e-17 * sum; n++) { term *= 2 * ax * ax / (2 * n + 3); sum += term; }
    return Math.sign(x) * 2 / Math.sqrt(Math.PI) * Math.exp(-ax * ax) * sum;
  }
  let f = ax;  // erfc x = e^{-x^2}/sqrt(pi) / (x + 1/2 / (x + 1 / (x + 3/2 / (x + ...)))), evaluated from the tail
  for (let k = 60; k >= 1; k--) f = ax + (k / 2) / f;
  return Math.sign(x) * (1 - Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f);
}
const ERF_SCALE = 16384;  // as makemore_sampler.py: linear interpolation on a grid of 2**-14, error < 5e-10
let erfTable = null;
function erf(x) {
  if (erfTable === null) {
    erfTable = new Float64Array(12 * ERF_SCALE + 2);
    for (let i = 0; i < erfTable.length; i++) erfTable[i] = erfSeries(-6 + i / ERF_SCALE);
  }
  const u = (Math.min(Math.max(x, -6), 6) + 6) * ERF_SCALE, i = Math.floor(u);
  return erfTable[i] + (u - i) * (erfTable[i + 1] - erfTable[i]);
}
const gelu = (a) => 0.5 * a * (1 + erf(a / Math.SQRT2));
// A labelled model's label vector on input x: at every input (add), or at the item's start (state, `start`).
function withLabel(x, w, spec, label, start) {
  if (label == null || (spec.label_mode === "state" && !start)) return x;
  const v = row(w["label_emb.table.weight"], label);
  return x.map((a, i) => a + v[i]);
}

// ------------------------------------------------------------------------------------------------ the families
// Each: init(label) -> state; step(token, state, label) -> [logits, new state]; label: a labelled model's label
// index, else null. States are never modified in place.
const FAMILIES = {
  bigram(spec, w) {
    return { init: () => null, step(t, s, label) {  // a labelled bigram: its label's own logit offsets, added
      const x = row(w["logits"], t), v = label == null ? null : row(w["label_logits"], label);
      return [v ? x.map((a, i) => a + v[i]) : x, s];
    } };
  },
  mlp(spec, w) {
    const c = spec.config;
    return {
      init: () => new Array(c.block_size).fill(BOUNDARY),
      step(t, ctx, label) {
        ctx = ctx.slice(1).concat([t]);
        const start = ctx.lastIndexOf(BOUNDARY);  // the item's start (the boundaries before it: padding)
        const embedded = ctx.map((i, j) => withLabel(row(w["wte.weight"], i), w, spec, spec.label_mode === "concat" ? null : label, j === start));
        if (label != null && spec.label_mode === "concat") embedded.push(row(w["label_emb.table.weight"], label));
        let h = concat(embedded);
        for (let i = 0; i < c.n_layer; i++) {
          h = linear(w[`hidden.${i}.weight`], w[`hidden.${i}.bias`], h);
          if (c.batch_norm) h = batchNorm(h, w, `norms.${i}.`);
          h = h.map(Math.tanh);
        }
        return [linear(w["lm_head.weight"], w["lm_head.bias"], h), ctx];
      },
    };
  },
  wavenet(spec, w) {
    const c = spec.config;
    const level = (i, pair) => {
      let h = linear(w[`fuse.${i}.weight`], c.norm === "none" ? w[`fuse.${i}.bias`] : null, pair);
      if (c.norm === "batch") h = batchNorm(h, w, `norms.${i}.`);
      else if (c.norm === "layer") h = layerNorm(h, w[`norms.${i}.weight`], w[`norms.${i}.bias`]);
      return h.map(Math.tanh);
    };
    const empty = [];  // each layer's "before the start" input, repeated 2**layer times
    let h = row(w["wte.weight"], BOUNDARY);
    for (let i = 0; i < c.n_layer; i++) { empty.push(new Array(2 ** i).fill(h)); h = level(i, concat([h, h])); }
    return {
      init: () => empty,
      step(t, queues, label) {
        let x = withLabel(row(w["wte.weight"], t), w, spec, label, t === BOUNDARY);
        const out = [];
        for (let i = 0; i < c.n_layer; i++) {
          const q = t === BOUNDARY ? empty[i] : queues[i];
          out.push(q.slice(1).concat([x]));
          x = level(i, concat([q[0], x]));
        }
        return [linear(w["lm_head.weight"], w["lm_head.bias"], x), out];
      },
    };
  },
  recurrent(spec, w) {
    const c = spec.config, H = c.n_hidden, lstm = spec.cell === "lstm";
    const initial = (name, label) => Array.from({ length: c.n_layer }, (_, i) => {  // + a label's learned start
      const h0 = w[name].data.slice(i * H, (i + 1) * H);
      return label == null || spec.label_mode !== "state" ? h0 : h0.map((a, j) => a + w[`label_${name}.table.weight`].data[(label * c.n_layer + i) * H + j]);
    });
    const net = {
      init: (label = null) => ({ h: initial("h0", label), c: lstm ? initial("c0", label) : null }),
      step(t, s, label) {
        let x = row(w["wte.weight"], t);
        if (label != null && spec.label_mode === "concat") x = concat([x, row(w["label_emb.table.weight"], label)]);
        else if (spec.label_mode !== "state") x = withLabel(x, w, spec, label, true);
        const hs = [], cs = [];
        for (let i = 0; i < c.n_layer; i++) {
          const h = s.h[i];
          const gi = linear(w[`rnn.weight_ih_l${i}`], w[`rnn.bias_ih_l${i}`], x);
          const gh = linear(w[`rnn.weight_hh_l${i}`], w[`rnn.bias_hh_l${i}`], h);
          const y = new Float64Array(H);
          if (spec.cell === "gru") {  // PyTorch's gate order r, z, n; n = tanh(W_in x + r * (W_hn h + b_hn))
            for (let j = 0; j < H; j++) {
              const r = sigmoid(gi[j] + gh[j]), z = sigmoid(gi[H + j] + gh[H + j]);
              y[j] = (1 - z) * Math.tanh(gi[2 * H + j] + r * gh[2 * H + j]) + z * h[j];
            }
          } else if (lstm) {  // i, f, g, o
            const cell = new Float64Array(H);
            for (let j = 0; j < H; j++) {
              const g = (k) => gi[k * H + j] + gh[k * H + j];
              cell[j] = sigmoid(g(1)) * s.c[i][j] + sigmoid(g(0)) * Math.tanh(g(2));
              y[j] = sigmoid(g(3)) * Math.tanh(cell[j]);
            }
            cs.push(cell);
          } else {
            for (let j = 0; j < H; j++) y[j] = spec.cell === "rnn_relu" ? Math.max(gi[j] + gh[j], 0) : Math.tanh(gi[j] + gh[j]);
          }
          hs.push(y);
          x = y;
        }
        net.read = x;  // what the output layer reads (a knn model's query)
        return [linear(w["lm_head.weight"], w["lm_head.bias"], x), { h: hs, c: lstm ? cs : null }];
      },
    };
    return net;
  },
  transformer(spec, w) {
    const c = spec.config, C = c.n_embd, nh = c.n_head, hs = C / nh;
    const get = (name) => w[name] || null;
    const fresh = () => ({ tokens: [], start: 0, k: [], v: [] });
    function cached(t, s, label) {  // one new position over the KV cache (positions < block_size)
      const pos = s.tokens.length, start = t === BOUNDARY ? pos : s.start;
      let x = row(w["wte.weight"], t).map((a, i) => a + w["wpe.weight"].data[(pos - start) * C + i]);
      x = withLabel(x, w, spec, label, t === BOUNDARY);
      const ks = [], vs = [];
      for (let l = 0; l < c.n_layer; l++) {
        const p = `blocks.${l}.`;
        const qkv = linear(w[p + "attn.c_attn.weight"], get(p + "attn.c_attn.bias"), layerNorm(x, w[p + "ln_1.weight"], get(p + "ln_1.bias")));
        const keys = (s.k[l] || []).concat([qkv.slice(C, 2 * C)]), values = (s.v[l] || []).concat([qkv.slice(2 * C)]);
        ks.push(keys); vs.push(values);
        const y = new Float64Array(C);
        for (let h = 0; h < nh; h++) {
          const scores = [];
          for (let j = start; j <= pos; j++) {
            let d = 0;
            for (let e = 0; e < hs; e++) d += qkv[h * hs + e] * keys[j][h * hs + e];
            scores.push(d / Math.sqrt(hs));
          }
          const p = logSoftmax(scores).map(Math.exp);
          for (let j = start; j <= pos; j++) for (let e = 0; e < hs; e++) y[h * hs + e] += p[j - start] * values[j][h * hs + e];
        }
        const a = linear(w[p + "attn.c_proj.weight"], get(p + "attn.c_proj.bias"), y);
        x = x.map((u, i) => u + a[i]);
        const m = linear(w[p + "mlp.0.weight"], get(p + "mlp.0.bias"), layerNorm(x, w[p + "ln_2.weight"], get(p + "ln_2.bias"))).map(gelu);
        const o = linear(w[p + "mlp.2.weight"], get(p + "mlp.2.bias"), m);
        x = x.map((u, i) => u + o[i]);
      }
      const logits = linear(w["lm_head.weight"], null, layerNorm(x, w["ln_f.weight"], get("ln_f.bias")));
      return [logits, { tokens: s.tokens.concat([t]), start, k: ks, v: vs }];
    }
    return {
      init: fresh,
      step(t, s, label) {
        if (s.tokens.length < c.block_size) return cached(t, s, label);
        // past block_size the window slides: re-read the last block_size tokens from position 0, as makemore does
        const tokens = s.tokens.slice(1).concat([t]);
        let out, state = fresh();
        for (const u of tokens) [out, state] = cached(u, state, label);
        return [out, { tokens, start: 0, k: [], v: [] }];
      },
    };
  },
  ngram(spec, w) {
    const V = spec.vocab_size, order = spec.order, off = w["ctx_offsets"].data, levels = off.length - 1;
    const keys = w["ctx_keys"].data, back = w["ctx_back"].data, sizes = w["ctx_sizes"].data, starts = w["ctx_starts"].data;
    const symbols = w["symbols"].data, shares = w["shares"].data;
    return {
      order,
      init: () => new Array(order - 1).fill(BOUNDARY),
      step(t, ctx) { ctx = ctx.concat([t]).slice(1); return [this.probs(ctx).map(Math.log), ctx]; },
      probs(ctx) {  // the symbols before the next (at least order - 1) -> its probabilities
        const probs = new Float64Array(V).fill(1 / V);
        for (let i = 0; i < levels; i++) {
          const m = order - levels + 1 + i;
          let key = 0n;  // the last m - 1 symbols in base V (64-bit: BigInt)
          for (const u of ctx.slice(ctx.length - (m - 1))) key = key * BigInt(V) + BigInt(u);
          if (m === 1) key = 0n;
          let lo = off[i], hi = off[i + 1];
          while (lo < hi) { const mid = (lo + hi) >> 1; if (keys[mid] < key) lo = mid + 1; else hi = mid; }
          if (lo >= off[i + 1] || keys[lo] !== key) continue;  // unseen context: the lower order as it is
          for (let j = 0; j < V; j++) probs[j] *= back[lo];
          for (let e = starts[lo]; e < starts[lo] + sizes[lo]; e++) probs[symbols[e]] += shares[e];
        }
        return probs;
      },
    };
  },
  labelled_ngram(spec, w) {  // lambda_k p_k + (1 - lambda_k) p_shared; members: the shared model, then each label's
    const models = spec.members.map((m, i) => build(m, w, `members.${i}.`));
    const n = Math.max(...models.map((m) => m.order)) - 1;
    return {
      init: () => new Array(n).fill(BOUNDARY),
      step(t, ctx, label) {
        ctx = ctx.concat([t]).slice(1);
        let probs = models[0].probs(ctx);
        if (label != null) {
          const own = models[label + 1].probs(ctx), lam = spec.weights[label];
          probs = probs.map((p, j) => lam * own[j] + (1 - lam) * p);
        }
        return [probs.map(Math.log), ctx];
      },
    };
  },
  mix(spec, w) {
    const members = spec.members.map((m, i) => build(m, w, `members.${i}.`));
    return {
      init: (label = null) => members.map((m) => m.init(label)),
      step(t, s, label) {
        const outs = members.map((m, i) => m.step(t, s[i], label));
        if (spec.config.combine === "log-linear") {  // softmax(sum_i w_i log p_i)
          const used = outs.map((o, i) => [logSoftmax(o[0]), spec.weights[i]]).filter(([, wi]) => wi > 0);
          const total = used[0][0].map((_, j) => used.reduce((a, [lp, wi]) => a + wi * lp[j], 0));
          return [logSoftmax(total), outs.map((o) => o[1])];
        }
        const terms = outs.map((o, i) => spec.weights[i] > 0 ? logSoftmax(o[0]).map((a) => a + Math.log(spec.weights[i])) : null).filter((x) => x);
        const logits = terms[0].map((_, j) => {
          const top = Math.max(...terms.map((x) => x[j]));
          return top + Math.log(terms.reduce((a, x) => a + Math.exp(x[j] - top), 0));
        });
        return [logits, outs.map((o) => o[1])];
      },
    };
  },
  knn(spec, w) {  // a recurrent network plus the nearest of its training states: lam p_knn + (1 - lam) p_net
    const c = spec.config, net = build(spec.members[0], w, "members.0."), keys = w.keys.data;
    const [N, D] = w.keys.shape, H = w.mean.shape[0], C = w.centres.shape[0];
    // what followed key j: nextTokens[p], nextCounts[p] times, p in offsets[j] .. offsets[j + 1] - 1
    const offsets = Array.from(w.offsets.data, Number), nextTokens = w.next_tokens.data;
    const nextCounts = Array.from(w.next_counts.data, Number);
    const centres = w.centres.data, starts = Array.from(w.starts.data, Number);  // cell c: keys starts[c]..starts[c+1]
    const sumsOfSquares = (x, n) => {
      const out = new Float64Array(n);
      for (let j = 0; j < n; j++) for (let e = 0; e < D; e++) out[j] += x[j * D + e] * x[j * D + e];
      return out;
    };
    const norms = sumsOfSquares(keys, N), centreNorms = sumsOfSquares(centres, C);
    const dot = (q, x, j) => {
      let s = 0;
      for (let e = 0; e < D; e++) s += q[e] * x[j * D + e];
      return s;
    };
    const searched = (q) => {  // the key ranges searched: all, or the keys of the `probes` cells nearest to q
      if (C === 0) return [[0, N]];
      const order = Array.from({ length: C }, (_, cell) => [centreNorms[cell] - 2 * dot(q, centres, cell), cell]);
      order.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      return order.slice(0, c.probes).map(([, cell]) => [starts[cell], starts[cell + 1]]);
    };
    return {
      init: (label = null) => net.init(label),
      step(t, s, label) {
        const [logits, state] = net.step(t, s, label);
        if (c.lam === 0 || N === 0) return [logSoftmax(logits), state];
        const q = new Float64Array(D);
        for (let i = 0; i < H; i++) {
          const a = net.read[i] - w.mean.data[i];
          for (let e = 0; e < D; e++) q[e] += a * w.axes.data[i * D + e];
        }
        const k = Math.min(c.k, N), near = [];  // the k nearest [distance, index], sorted (insertion: k is small)
        for (const [from, to] of searched(q)) {
          for (let j = from; j < to; j++) {
            const d = norms[j] - 2 * dot(q, keys, j);  // + |q|^2, which cancels below
            if (near.length === k && d >= near[k - 1][0]) continue;
            let at = near.length === k ? k - 1 : near.length;
            while (at > 0 && near[at - 1][0] > d) { near[at] = near[at - 1]; at--; }
            near[at] = [d, j];
          }
        }
        const mass = new Float64Array(logits.length);
        for (const [d, j] of near) {
          const weight = Math.exp(-(d - near[0][0]) / c.temperature);
          for (let p = offsets[j]; p < offsets[j + 1]; p++) mass[Number(nextTokens[p])] += weight * nextCounts[p];
        }
        const total = mass.reduce((a, b) => a + b, 0), p = logSoftmax(logits).map(Math.exp);
        return [p.map((pv, v) => Math.log(c.lam * mass[v] / total + (1 - c.lam) * pv)), state];
      },
    };
  },
};

function build(spec, arrays, prefix = "") {
  const w = {};
  for (const [k, v] of Object.entries(arrays)) if (k.startsWith(prefix)) w[k.slice(prefix.length)] = v;
  return FAMILIES[spec.family](spec, w);
}

