// makemore serve: the Score and Inspect views.
"use strict";

// --------------------------------------------------------------------------------------------------------- Score
const Score = (() => {
  const form = document.getElementById("score-form");

  // A character's probability as a colour: red (unlikely) through amber to green (likely), light enough to read.
  function colour(p) {
    const hue = Math.round(130 * Math.sqrt(Math.max(0, Math.min(1, p))));
    return `hsl(${hue}, 70%, 84%)`;
  }

  function strip(charLogprobs) {
    return MM.el("div", { class: "strip" }, ...charLogprobs.map(([c, lp]) => {
      const p = Math.exp(lp);
      const shown = c === "<end>" ? "end" : c === " " ? "␣" : c;
      return MM.el("span", { style: `background:${colour(p)}`, title: `${c}: p = ${p.toFixed(3)} (log-prob ${lp.toFixed(2)})` },
        shown, MM.el("small", { text: p >= 0.995 ? "1.00" : p.toFixed(2) }));
    }));
  }

  // A labelled run's p(label | item): each label with its probability and a bar, the most probable first.
  function labelProbs(r) {
    if (!r.probs) return null;
    const ranked = Object.entries(r.probs).sort((a, b) => b[1] - a[1]);
    return MM.el("div", { class: "label-probs", title: "p(label | item): Bayes' rule on p(item | label) and the labels' shares of train" },
      ...ranked.map(([label, p]) => MM.el("span", { class: "label-prob" + (label === r.label ? " top" : "") },
        label, MM.el("span", { class: "bar" }, MM.el("span", { style: `width:${(100 * p).toFixed(1)}%` })),
        `${(100 * p).toFixed(p >= 0.995 || p < 0.005 ? 0 : 1)}%`)));
  }

  async function run() {
    const s = MM.formSettings(form);
    const items = s.items.split("\n").map((line) => line.trim()).filter(Boolean);
    if (!s.run || !items.length) return;
    MM.setUrl("score", { run: s.run, items: items.join("\n"), sort: s.sort });
    try {
      const result = await MM.api("/api/score", { json: { run: s.run, items, sort: !!s.sort } });
      document.getElementById("score-list").replaceChildren(...result.items.map((r, i) => MM.el("div", { class: "score-row" },
        MM.el("div", { class: "head" },
          MM.el("span", { class: "name", text: (s.sort ? `${i + 1}. ` : "") + r.item }),
          MM.el("span", { class: "muted" }, `log-prob ${r.logprob.toFixed(2)} · NLL/char ${r.nll_per_token.toFixed(2)} · `,
            MM.badge(r.status))),
        labelProbs(r),
        strip(r.char_logprobs))));
      const labelled = result.items.some((r) => r.probs);
      document.getElementById("score-summary").textContent = `${result.items.length} scored by ${s.run}` +
        (s.sort ? ", most plausible first (lowest NLL per character)." : ". Each box: a character and its probability.") +
        (labelled ? " Bars: p(label | name), from this labelled run." : "");
      MM.banner("");
    } catch (error) {
      MM.banner(error.message);
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  document.addEventListener("mm:ready", (event) => {
    if (event.detail === "score" && MM.query.get("items")) { MM.fillForm(form, MM.query); run(); }
  });
  return { run, form };
})();

// ------------------------------------------------------------------------------------------------------- Inspect
const Inspect = (() => {
  const form = document.getElementById("inspect-form");
  const PLOTS = [["loss", "Loss against time"], ["bigram", "Learned next-character probabilities"],
    ["embeddings", "Character embeddings"], ["attention", "Attention maps"]];

  function rows(info) {
    const data = info.data || {};
    const sizes = data.sizes ? Object.entries(data.sizes).map(([k, v]) => `${k} ${v.toLocaleString()}`).join(", ") : "";
    const trained = info.closed_form ? "fitted in closed form" : info.steps == null ? "not yet"
      : `${info.steps.toLocaleString()} of ${(info.schedule_steps || info.max_steps || info.steps).toLocaleString()} steps`;
    return [
      ["run", info.run], ["model", info.model],
      ["config", Object.entries(info.model_config || {}).map(([k, v]) => `${k}=${v}`).join(", ")],
      ["parameters", (info.parameters ?? 0).toLocaleString()], ["trained", trained],
      ["best val", info.best_val_loss == null ? "none yet" : `${info.best_val_loss.toFixed(4)} nats/token` +
        (info.best_step != null ? ` (step ${info.best_step.toLocaleString()})` : "")],
      ["data", (data.source || "?") + (data.builtin ? " (built-in)" : "")], ["mode", data.mode || "line"],
      ["sizes", sizes], ["vocabulary", `${info.vocab_size} symbols incl. the boundary`],
    ].filter(([, v]) => v !== "");
  }

  async function plot(name, kind, caption, text) {
    const figure = MM.el("figure", {}, MM.el("figcaption", { text: caption }));
    const url = `/api/runs/${encodeURIComponent(name)}/plots/${kind}.png` + (kind === "attention" ? `?text=${encodeURIComponent(text)}` : "");
    try {
      const headers = MM.query.get("token") ? { Authorization: "Bearer " + MM.query.get("token") } : {};
      const response = await fetch(url, { headers });
      if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.statusText);
      figure.append(MM.el("img", { src: URL.createObjectURL(await response.blob()), alt: caption + " of " + name }));
    } catch (error) {
      figure.append(MM.el("p", { class: "muted", text: error.message }));
    }
    return figure;
  }

  async function run() {
    const s = MM.formSettings(form);
    if (!s.run) return;
    MM.setUrl("inspect", s);
    const table = document.querySelector("#info-table tbody");
    try {
      const info = await MM.api(`/api/runs/${encodeURIComponent(s.run)}`);
      table.replaceChildren(...rows(info).map(([k, v]) => MM.el("tr", {}, MM.el("td", { text: k }), MM.el("td", { text: v }))));
      MM.banner("");
    } catch (error) {
      MM.banner(error.message);
      return;
    }
    const plots = document.getElementById("plots");
    plots.replaceChildren(MM.el("p", { class: "muted", text: "Drawing…" }));
    const figures = await Promise.all(PLOTS.map(([kind, caption]) => plot(s.run, kind, caption, s.text || "emma")));
    plots.replaceChildren(...figures);
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  document.addEventListener("mm:ready", (event) => {
    if (event.detail !== "inspect") return;
    if (MM.query.get("run")) MM.fillForm(form, MM.query);
    run();
  });
  document.addEventListener("mm:view", (event) => {
    if (event.detail === "inspect" && form.elements.run.value && !document.querySelector("#plots figure")) run();
  });
  return { run, form };
})();
