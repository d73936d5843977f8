// makemore's exported sampler: the model families of makemore_sampler.py in plain JavaScript (float64 arithmetic
// on the embedded weights), a seeded sampler with exact masks for prefix, suffix and length, and the page around it.
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

// ------------------------------------------------------------------------------------------------ the families
// Each: init() -> state; step(token, state) -> [logits, new state]. States are never modified in place.
const FAMILIES = {
  bigram(spec, w) {
    return { init: () => null, step: (t, s) => [row(w["logits"], t), s] };
  },
  mlp(spec, w) {
    const c = spec.config;
    return {
      init: () => new Array(c.block_size).fill(BOUNDARY),
      step(t, ctx) {
        ctx = ctx.slice(1).concat([t]);
        let h = concat(ctx.map((i) => row(w["wte.weight"], i)));
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
      step(t, queues) {
        let x = row(w["wte.weight"], t);
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
    const initial = (name) => Array.from({ length: c.n_layer }, (_, i) => w[name].data.slice(i * H, (i + 1) * H));
    return {
      init: () => ({ h: initial("h0"), c: lstm ? initial("c0") : null }),
      step(t, s) {
        let x = row(w["wte.weight"], t);
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
        return [linear(w["lm_head.weight"], w["lm_head.bias"], x), { h: hs, c: lstm ? cs : null }];
      },
    };
  },
  transformer(spec, w) {
    const c = spec.config, C = c.n_embd, nh = c.n_head, hs = C / nh;
    const get = (name) => w[name] || null;
    const fresh = () => ({ tokens: [], start: 0, k: [], v: [] });
    function cached(t, s) {  // one new position over the KV cache (positions < block_size)
      const pos = s.tokens.length, start = t === BOUNDARY ? pos : s.start;
      let x = row(w["wte.weight"], t).map((a, i) => a + w["wpe.weight"].data[(pos - start) * C + i]);
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
      step(t, s) {
        if (s.tokens.length < c.block_size) return cached(t, s);
        // past block_size the window slides: re-read the last block_size tokens from position 0, as makemore does
        const tokens = s.tokens.slice(1).concat([t]);
        let out, state = fresh();
        for (const u of tokens) [out, state] = cached(u, state);
        return [out, { tokens, start: 0, k: [], v: [] }];
      },
    };
  },
  ngram(spec, w) {
    const V = spec.vocab_size, order = spec.order, off = w["ctx_offsets"].data, levels = off.length - 1;
    const keys = w["ctx_keys"].data, back = w["ctx_back"].data, sizes = w["ctx_sizes"].data, starts = w["ctx_starts"].data;
    const symbols = w["symbols"].data, shares = w["shares"].data;
    return {
      init: () => new Array(order - 1).fill(BOUNDARY),
      step(t, ctx) {
        ctx = ctx.concat([t]).slice(1);
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
        return [probs.map(Math.log), ctx];
      },
    };
  },
  mix(spec, w) {
    const members = spec.members.map((m, i) => build(m, w, `members.${i}.`));
    return {
      init: () => members.map((m) => m.init()),
      step(t, s) {
        const outs = members.map((m, i) => m.step(t, s[i]));
        const terms = outs.map((o, i) => spec.weights[i] > 0 ? logSoftmax(o[0]).map((a) => a + Math.log(spec.weights[i])) : null).filter((x) => x);
        const logits = terms[0].map((_, j) => {
          const top = Math.max(...terms.map((x) => x[j]));
          return top + Math.log(terms.reduce((a, x) => a + Math.exp(x[j] - top), 0));
        });
        return [logits, outs.map((o) => o[1])];
      },
    };
  },
};

function build(spec, arrays, prefix = "") {
  const w = {};
  for (const [k, v] of Object.entries(arrays)) if (k.startsWith(prefix)) w[k.slice(prefix.length)] = v;
  return FAMILIES[spec.family](spec, w);
}

// ------------------------------------------------------------------------------------------ sampling and scoring
function rng(seed) {  // splitmix32 -> mulberry32: the same seed gives the same numbers in every browser
  let a = (seed >>> 0) ^ 0x9e3779b9;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;  // in (0, 1): never 0, so log stays finite
  };
}

class Sampler {
  constructor(config, arrays) {
    this.config = config;
    this.chars = config.vocab;
    this.V = this.chars.length + 1;
    this.stoi = new Map(this.chars.map((c, i) => [c, i + 1]));
    this.net = build(config.model, arrays);
  }
  encode(text, what) {
    const bad = [...text].filter((c) => !this.stoi.has(c));
    if (bad.length) throw new Error(`${what} has characters the model does not know: ${[...new Set(bad)].join(" ")}`);
    return [...text].map((c) => this.stoi.get(c));
  }
  step(t, s) { const [logits, state] = this.net.step(t, s); return [logSoftmax(logits), state]; }
  score(items) {  // total log-probability of each item, the end included
    return items.map((item) => {
      const ids = this.encode(item, "item").concat([BOUNDARY]);
      let [logp, s] = this.step(BOUNDARY, this.net.init()), total = 0;
      ids.forEach((t, i) => { total += logp[t]; if (i < ids.length - 1) [logp, s] = this.step(t, s); });
      return total;
    });
  }
  constraint(pre, suf, minLen, maxLen) {  // as makemore_sampler.py: KMP states over the suffix + reachability
    const S = suf.length, V = this.V;
    const advance = [];
    for (let s = 0; s <= S; s++) {
      advance.push([0]);
      for (let c = 1; c < V; c++) {
        const text = suf.slice(0, s).concat([c]);
        let k = Math.min(text.length, S);
        while (k > 0 && text.slice(text.length - k).some((u, i) => u !== suf[i])) k--;
        advance[s].push(k);
      }
    }
    const ends = Array.from({ length: maxLen + 2 }, () => new Array(S + 1).fill(false));
    for (let t = maxLen; t >= 0; t--) for (let s = 0; s <= S; s++) {
      ends[t][s] = (s === S && t >= minLen) || (t < maxLen && advance[s].some((n, c) => c > 0 && ends[t + 1][n]));
    }
    const allowed = (t, s) => advance[s].map((n, c) => c === BOUNDARY ? s === S && t >= minLen : t < maxLen && ends[t + 1][n]);
    return { advance, allowed, steps: maxLen + 1 };
  }
  // A suffix is met as makemore meets it: "reject" draws items given the prefix and keeps those that end with it
  // (exactly the model conditioned on the suffix), "mask" forces it step by step (fast, but it favours items whose
  // early characters made the suffix hard to reach: often long ones), "auto" (makemore's rule) rejects while at least
  // 0.5% of the candidates pass, judged after 2,000, then masks for the rest.
  sample({ n = 10, temperature = 1, topK = null, prefix = "", suffix = "", minLen = 1, maxLen = null, seed = 0,
    conditioning = "auto" }) {
    maxLen = maxLen == null ? this.config.max_len : maxLen;
    if (!(temperature > 0) || minLen > maxLen || maxLen < 1) throw new Error("need temperature > 0 and min length <= max length");
    const pre = this.encode(prefix, "prefix"), suf = this.encode(suffix, "suffix");
    const masked = this.constraint(pre, suf, minLen, maxLen);
    let [logp, state] = this.step(BOUNDARY, this.net.init()), total = 0, kmp = 0;
    for (const t of pre) { total += logp[t]; [logp, state] = this.step(t, state); kmp = masked.advance[kmp][t]; }
    if (pre.length > maxLen || !masked.allowed(pre.length, kmp).some((x) => x)) {
      throw new Error(`no item of ${minLen} to ${maxLen} characters starts with "${prefix}" and ends with "${suffix}"`);
    }
    const random = rng(seed), items = [], memo = new Map();  // states are never modified: safe to share
    const free = suf.length ? this.constraint(pre, [], minLen, maxLen) : null;
    let rejecting = suf.length > 0 && conditioning !== "mask", drawn = 0;
    while (items.length < n) {
      const rare = drawn >= 2000 && items.length + 1 < 0.005 * (drawn + 1);
      if (rejecting && ((conditioning === "auto" && rare) || drawn >= Math.max(2000, 200 * n))) rejecting = false;
      const item = this.draw(pre, [logp, state, total], rejecting ? free : masked, rejecting ? 0 : kmp, temperature, topK, random, memo);
      if (rejecting) { drawn++; if (!item.item.endsWith(suffix)) continue; }
      items.push(item);
    }
    return items;
  }
  draw(pre, [lp, s, sum], { advance, allowed, steps }, k, temperature, topK, random, memo) {
    const ids = pre.slice();
    for (let t = pre.length; t < steps; t++) {
      const ok = allowed(t, k);
      let scaled = lp.map((a, c) => ok[c] ? a / temperature : -Infinity);
      if (topK && topK < this.V) {
        const kth = scaled.slice().sort((a, b) => b - a)[topK - 1];
        scaled = scaled.map((a) => a < kth ? -Infinity : a);
      }
      let best = -1, bestValue = -Infinity;  // Gumbel-max: the argmax of logits + Gumbel noise is a sample
      for (let c = 0; c < this.V; c++) {
        const value = scaled[c] - Math.log(-Math.log(random()));
        if (value > bestValue) { bestValue = value; best = c; }
      }
      sum += lp[best];
      if (best === BOUNDARY) break;
      ids.push(best);
      k = advance[k][best];
      if (ids.length - pre.length <= 2) {  // the first characters repeat across items: step each path once
        const key = ids.slice(pre.length).join(",");
        if (!memo.has(key)) memo.set(key, this.step(best, s));
        [lp, s] = memo.get(key);
      } else {
        [lp, s] = this.step(best, s);
      }
    }
    return { item: ids.map((c) => this.chars[c - 1]).join(""), logprob: sum };
  }
}

// ------------------------------------------------------------------------------------------------ the page
const $ = (id) => document.getElementById(id);
const FIELDS = ["n", "temperature", "top_k", "seed", "prefix", "suffix", "min_len", "max_len"];
let sampler = null, shown = [];

function readQuery() {
  const q = new URLSearchParams(location.search), form = $("controls");
  for (const name of FIELDS) {
    const value = q.get(name) ?? q.get(name.replace("_", "-")) ?? q.get(name.replace("_", ""));
    if (value !== null) form.elements[name].value = value;
  }
}

function generate() {
  const f = $("controls").elements, num = (name) => f[name].value === "" ? null : Number(f[name].value);
  const status = $("status");
  status.className = "";
  try {
    let seed = num("seed");
    if (seed === null) { seed = crypto.getRandomValues(new Uint32Array(1))[0]; }
    const started = performance.now();
    shown = sampler.sample({ n: num("n") ?? 10, temperature: num("temperature") ?? 1, topK: num("top_k"), seed,
      prefix: f.prefix.value, suffix: f.suffix.value, minLen: num("min_len") ?? 1, maxLen: num("max_len"),
      conditioning: new URLSearchParams(location.search).get("conditioning") ?? "auto" });
    const list = $("items");
    list.replaceChildren(...shown.map(({ item, logprob }) => {
      const li = document.createElement("li"), text = document.createElement("span"), lp = document.createElement("span");
      li.className = "item"; li.dataset.logprob = String(logprob);
      text.className = "text"; text.textContent = item;
      lp.className = "lp"; lp.textContent = logprob.toFixed(2); lp.title = "log-probability (nats)";
      li.append(text, lp);
      return li;
    }));
    $("legend").hidden = shown.length === 0;
    status.textContent = `${shown.length} items, seed ${seed}, ${((performance.now() - started) / 1000).toFixed(2)} s`;
  } catch (error) {
    status.className = "error";
    status.textContent = error.message;
  }
  document.body.dataset.state = "done";
}

async function main() {
  const config = JSON.parse($("model-config").textContent);
  try {
    sampler = new Sampler(config, await readWeights(config));
  } catch (error) {
    $("about").textContent = `cannot load the model: ${error.message}`;
    document.body.dataset.state = "error";
    return;
  }
  window.makemore = { score: (items) => sampler.score(items), sample: (o) => sampler.sample(o), config };
  $("about").textContent = config.about;
  $("controls").elements.max_len.placeholder = String(config.max_len);
  readQuery();
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); document.body.dataset.state = "busy"; setTimeout(generate, 0); });
  const text = () => shown.map((x) => x.item).join("\n") + "\n";
  $("copy").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(text()); $("status").textContent = "copied"; }
    catch { $("status").textContent = "copy is blocked here: use Download"; }
  });
  $("download").addEventListener("click", () => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text()], { type: "text/plain" }));
    a.download = `${config.run || "items"}.txt`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
  generate();
}
main();
