// makemore's exported sampler, part 2: a seeded sampler with exact masks for prefix, suffix and length (as
// makemore_sampler.py), labels, and the page around it. Part 1 (families.js): the model families.

// ------------------------------------------------------------------------------------------ sampling and scoring
function logSumExp(x) { const top = Math.max(...x); return top + Math.log(x.reduce((a, b) => a + Math.exp(b - top), 0)); }

// A labelled net under label weights (one label; a blend, the labels' next-character distributions mixed at every
// step; or, posterior, p(item): the labels' prior updated by Bayes' rule as the characters come in), as makemore.
function conditioned(net, weights, posterior) {
  const active = weights.map((x, k) => [x, k]).filter(([x]) => x > 0);
  return {
    init: () => ({ s: active.map(([, k]) => net.init(k)), w: active.map(([x]) => Math.log(x)), seen: null }),
    step(t, state) {
      let w = state.w;
      if (state.seen) { w = w.map((a, i) => a + state.seen[i][t]); const z = logSumExp(w); w = w.map((a) => a - z); }
      const outs = active.map(([, k], i) => net.step(t, state.s[i], k)), logps = outs.map((o) => logSoftmax(o[0]));
      const mixed = logps[0].map((_, j) => logSumExp(logps.map((lp, i) => lp[j] + w[i])));
      return [mixed, { s: outs.map((o) => o[1]), w, seen: posterior && logps.length > 1 ? logps : null }];
    },
  };
}

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
    this.labels = config.labels || [];
  }
  under(label) {  // the net sampled and scored: a labelled one given "female", "female=0.7,male=0.3" (none: p(item))
    if (label == null || label === "") return this.labels.length ? conditioned(this.net, this.config.label_prior, true) : this.net;
    if (!this.labels.length) throw new Error("this model was trained without labels");
    const weights = this.labels.map(() => 0);
    for (const part of label.split(",")) {
      const [name, value] = part.split("="), k = this.labels.indexOf(name.trim());
      if (k < 0) throw new Error(`"${name}" is not a label of this model (labels: ${this.labels.join(", ")})`);
      weights[k] = value === undefined ? 1 : Number(value);
    }
    const total = weights.reduce((a, b) => a + b, 0);
    if (!weights.every((x) => x >= 0 && Number.isFinite(x)) || !(total > 0)) throw new Error("label weights must be >= 0, not all 0");
    return conditioned(this.net, weights.map((x) => x / total), false);
  }
  encode(text, what) {
    const bad = [...text].filter((c) => !this.stoi.has(c));
    if (bad.length) throw new Error(`${what} has characters the model does not know: ${[...new Set(bad)].join(" ")}`);
    return [...text].map((c) => this.stoi.get(c));
  }
  step(net, t, s) { const [logits, state] = net.step(t, s); return [logSoftmax(logits), state]; }
  score(items, label = null) {  // total log-probability of each item, the end included (given the label)
    const net = this.under(label);
    return items.map((item) => {
      const ids = this.encode(item, "item").concat([BOUNDARY]);
      let [logp, s] = this.step(net, BOUNDARY, net.init()), total = 0;
      ids.forEach((t, i) => { total += logp[t]; if (i < ids.length - 1) [logp, s] = this.step(net, t, s); });
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
    conditioning = "auto", label = null }) {
    maxLen = maxLen == null ? this.config.max_len : maxLen;
    if (!(temperature > 0) || minLen > maxLen || maxLen < 1) throw new Error("need temperature > 0 and min length <= max length");
    const pre = this.encode(prefix, "prefix"), suf = this.encode(suffix, "suffix");
    const masked = this.constraint(pre, suf, minLen, maxLen);
    const net = this.under(label);
    let [logp, state] = this.step(net, BOUNDARY, net.init()), total = 0, kmp = 0;
    for (const t of pre) { total += logp[t]; [logp, state] = this.step(net, t, state); kmp = masked.advance[kmp][t]; }
    if (pre.length > maxLen || !masked.allowed(pre.length, kmp).some((x) => x)) {
      throw new Error(`no item of ${minLen} to ${maxLen} characters starts with "${prefix}" and ends with "${suffix}"`);
    }
    const random = rng(seed), items = [], memo = new Map();  // states are never modified: safe to share
    const free = suf.length ? this.constraint(pre, [], minLen, maxLen) : null;
    let rejecting = suf.length > 0 && conditioning !== "mask", drawn = 0;
    while (items.length < n) {
      const rare = drawn >= 2000 && items.length + 1 < 0.005 * (drawn + 1);
      if (rejecting && ((conditioning === "auto" && rare) || drawn >= Math.max(2000, 200 * n))) rejecting = false;
      const item = this.draw(pre, [net, logp, state, total], rejecting ? free : masked, rejecting ? 0 : kmp, temperature, topK, random, memo);
      if (rejecting) { drawn++; if (!item.item.endsWith(suffix)) continue; }
      items.push(item);
    }
    return items;
  }
  draw(pre, [net, lp, s, sum], { advance, allowed, steps }, k, temperature, topK, random, memo) {
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
        if (!memo.has(key)) memo.set(key, this.step(net, best, s));
        [lp, s] = memo.get(key);
      } else {
        [lp, s] = this.step(net, best, s);
      }
    }
    return { item: ids.map((c) => this.chars[c - 1]).join(""), logprob: sum };
  }
}

// ------------------------------------------------------------------------------------------------ the page
const $ = (id) => document.getElementById(id);
const FIELDS = ["n", "temperature", "top_k", "seed", "prefix", "suffix", "min_len", "max_len", "label"];
let sampler = null, shown = [];

function readQuery() {
  const q = new URLSearchParams(location.search), form = $("controls");
  for (const name of FIELDS) {
    const value = q.get(name) ?? q.get(name.replace("_", "-")) ?? q.get(name.replace("_", ""));
    if (value === null) continue;
    const field = form.elements[name];
    if (name === "label" && ![...field.options].some((o) => o.value === value)) field.add(new Option(value, value));  // a blend
    field.value = value;
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
      conditioning: new URLSearchParams(location.search).get("conditioning") ?? "auto", label: f.label.value || null });
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
  window.makemore = { score: (items, label) => sampler.score(items, label), sample: (o) => sampler.sample(o), config };
  $("about").textContent = config.about;
  if (sampler.labels.length) {  // a labelled model: items given a label (default: any label, p(item))
    $("label-field").hidden = false;
    $("controls").elements.label.append(new Option("any label", ""), ...sampler.labels.map((x) => new Option(x, x)));
  }
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
