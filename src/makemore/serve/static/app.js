// makemore serve: the page's shared helpers, the view switcher, Generate and Compare. No build step, no CDN.
// Every setting lives in the URL (?view=generate&run=...&seed=...), so a copied link reproduces the same list:
// the server's answer depends only on the run, the settings and the seed.
"use strict";

const MM = (() => {
  const query = new URLSearchParams(location.search);
  const token = query.get("token");
  const views = ["generate", "score", "train", "inspect", "compare"];
  let runs = [];

  async function api(path, options = {}) {
    const headers = {};
    if (options.json !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = "Bearer " + token;
    const body = options.json !== undefined ? JSON.stringify(options.json) : options.body;
    const response = await fetch(path, { method: options.method || (body ? "POST" : "GET"), headers, body });
    const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
    return data;
  }

  function withToken(path) {
    return token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function banner(message) {
    const node = document.getElementById("banner");
    node.textContent = message || "";
    node.hidden = !message;
  }

  // The URL: view plus the view's settings; empty settings are left out, the token is kept.
  function setUrl(view, settings = {}) {
    const params = new URLSearchParams();
    if (token) params.set("token", token);
    params.set("view", view);
    for (const [key, value] of Object.entries(settings)) {
      if (value !== "" && value !== false && value !== null && value !== undefined) params.set(key, value === true ? "1" : value);
    }
    history.replaceState(null, "", "?" + params.toString());
  }

  function formSettings(form) {
    const out = {};
    for (const input of form.querySelectorAll("input[name], select[name], textarea[name]")) {
      if (input.type === "file" || input.type === "radio") continue;
      out[input.name] = input.type === "checkbox" ? input.checked : input.value.trim();
    }
    return out;
  }

  function fillForm(form, params) {
    for (const input of form.querySelectorAll("input[name], select[name], textarea[name]")) {
      if (!params.has(input.name) || input.type === "file" || input.type === "radio") continue;
      const value = params.get(input.name);
      if (input.type === "checkbox") input.checked = value === "1" || value === "true";
      else if (input.tagName === "SELECT" && ![...input.options].some((o) => o.value === value)) {
        input.append(el("option", { value, text: value }));  // a run this server lacks: the error will say so
        input.value = value;
      } else input.value = value;
    }
  }

  function showView(view, pushUrl = true) {
    if (!views.includes(view)) view = "generate";
    for (const name of views) document.getElementById("view-" + name).hidden = name !== view;
    for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("active", link.dataset.view === view);
    if (pushUrl) setUrl(view, {});
    document.dispatchEvent(new CustomEvent("mm:view", { detail: view }));
  }

  async function loadRuns() {
    try {
      runs = await api("/api/runs");
    } catch (error) {
      banner(error.message);
      return runs;
    }
    for (const select of document.querySelectorAll("select.run-select")) {
      const previous = select.value;
      select.replaceChildren();
      if (!runs.length) select.append(el("option", { value: "", text: "no runs yet: train one" }));
      for (const run of runs) {
        // "names-tf (transformer, val 2.095)"; the model is left out when the name says it already
        const about = [run.model && !run.name.includes(run.model) ? run.model : null,
          run.val_nll == null ? null : `val ${run.val_nll.toFixed(3)}`].filter(Boolean).join(", ");
        select.append(el("option", { value: run.name, text: about ? `${run.name} (${about})` : run.name }));
      }
      if (previous && runs.some((r) => r.name === previous)) select.value = previous;
    }
    // Compare starts with two different runs when there are two.
    const b = document.querySelector("#compare-form [name=run_b]");
    if (b && runs.length > 1 && !query.get("run_b") && b.selectedIndex === 0) b.selectedIndex = 1;
    return runs;
  }

  function number(value, parse = parseInt) {
    return value === "" || value === undefined ? null : parse(value, 10);
  }

  // A labelled run's label setting, as the CLI's --label takes it: "female", or a blend "female=0.7,male=0.3"
  // (label2 blended in with weight = the first label's share). null: no label (p(item) summed over the labels).
  function labelSpec(s) {
    if (!s.label) return null;
    if (!s.label2 || s.label2 === s.label) return s.label;
    const w = Math.min(1, Math.max(0, number(s.weight, parseFloat) ?? 0.5));
    const share = (x) => String(Math.round(x * 100) / 100);
    return `${s.label}=${share(w)},${s.label2}=${share(1 - w)}`;
  }

  // The page's settings -> POST /api/sample's body (a label only when one is chosen: unlabelled runs take none).
  function sampleBody(s) {
    const body = {
      run: s.run, n: number(s.n) ?? 20, seed: number(s.seed), temperature: number(s.temperature, parseFloat) ?? 1,
      top_k: number(s.top_k), top_p: number(s.top_p, parseFloat), prefix: s.prefix || "", suffix: s.suffix || "",
      contains: (s.contains || "").split(",").map((c) => c.trim()).filter(Boolean), regex: s.regex || "",
      min_len: number(s.min_len), max_len: number(s.max_len), only_new: !!s.only_new, unique: !!s.unique,
      min_distance: number(s.min_distance), best: number(s.best),
    };
    const label = labelSpec(s);
    if (label) body.label = label;
    return body;
  }

  function download(name, text, type) {
    const link = el("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
    document.body.append(link);
    link.click();
    setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = el("textarea", {}, text);
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    if (button) {
      const label = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = label; }, 1200);
    }
  }

  function badge(status) {
    return el("span", { class: "badge " + status, text: status.replace(/-/g, " ") });
  }

  return { api, withToken, el, banner, setUrl, formSettings, fillForm, showView, loadRuns, sampleBody, labelSpec,
    download, copy, badge, number, query, runs: () => runs };
})();

// ------------------------------------------------------------------------------------------------------ Generate
const Generate = (() => {
  const form = document.getElementById("gen-form");
  const tbody = document.querySelector("#gen-table tbody");
  let last = null; // {settings, result}
  const FAV_KEY = "makemore.favourites";

  const favourites = () => JSON.parse(localStorage.getItem(FAV_KEY) || "[]");
  const isFavourite = (run, item) => favourites().some((f) => f.run === run && f.item === item);

  function toggleFavourite(run, item) {
    let list = favourites();
    list = isFavourite(run, item) ? list.filter((f) => !(f.run === run && f.item === item)) : [...list, { run, item }];
    localStorage.setItem(FAV_KEY, JSON.stringify(list));
    renderFavourites();
    for (const button of tbody.querySelectorAll("button.star")) {
      const on = isFavourite(button.dataset.run, button.dataset.item);
      button.classList.toggle("on", on);
      button.textContent = on ? "★" : "☆";
      button.setAttribute("aria-pressed", on);
    }
  }

  function renderFavourites() {
    const list = favourites();
    const ul = document.getElementById("fav-list");
    ul.replaceChildren(...list.map((f) => MM.el("li", { title: f.run }, f.item,
      MM.el("button", { type: "button", "aria-label": "remove " + f.item, text: "×",
        onclick: () => toggleFavourite(f.run, f.item) }))));
    document.querySelector("#favourites .empty").hidden = list.length > 0;
    document.getElementById("fav-count").textContent = list.length ? `(${list.length})` : "";
  }

  function row(run, item) {
    const on = isFavourite(run, item.item);
    const near = item.nearest == null ? MM.el("span", { class: "muted", text: "—" })
      : item.distance === 0 ? MM.el("span", { class: "muted", text: "itself" })
      : MM.el("span", { class: "nearest" }, item.nearest, " ", MM.el("small", { class: "muted", text: `(${item.distance} edit${item.distance === 1 ? "" : "s"})` }));
    return MM.el("tr", {},
      MM.el("td", {}, MM.el("button", { type: "button", class: "star" + (on ? " on" : ""), "data-run": run,
        "data-item": item.item, "aria-pressed": on, "aria-label": "star " + item.item, text: on ? "★" : "☆",
        onclick: () => toggleFavourite(run, item.item) })),
      MM.el("td", { class: "item", text: item.item }),
      MM.el("td", { class: "num", text: item.logprob == null ? "" : item.logprob.toFixed(2) }),
      MM.el("td", {}, MM.badge(item.status)),
      MM.el("td", {}, near));
  }

  // The label selector: shown for a labelled run, with its labels; a second label blends in with a weight.
  const labelsBox = document.getElementById("gen-labels");

  function labelsOf(name) {
    const info = MM.runs().find((r) => r.name === name);
    return info && info.labels ? info.labels : [];
  }

  // keepUnknown: a shared link's label stays even if the run lacks it, so that the server says what is wrong
  function updateLabels(keepUnknown = false) {
    const labels = labelsOf(form.elements.run.value);
    for (const [name, empty] of [["label", "any label"], ["label2", "no blend"]]) {
      const select = form.elements[name];
      const previous = select.value;
      const kept = previous && !labels.includes(previous) && keepUnknown ? [previous] : [];
      select.replaceChildren(MM.el("option", { value: "", text: empty }),
        ...[...labels, ...kept].map((label) => MM.el("option", { value: label, text: label })));
      select.value = labels.includes(previous) || kept.length ? previous : "";
    }
    labelsBox.hidden = !labels.length && !form.elements.label.value;
    showWeight();
  }

  function showWeight() {
    const { label, label2, weight } = form.elements;
    const blending = !!label.value && !!label2.value && label2.value !== label.value;
    weight.closest("label").hidden = !blending;
    label2.disabled = !label.value;
    const w = Math.round(parseFloat(weight.value) * 100);
    document.getElementById("gen-weight").textContent = blending ? `${label.value} ${w}% · ${label2.value} ${100 - w}%` : "";
  }

  function labelText(settings) {
    const spec = MM.labelSpec(settings);
    if (!spec) return "";
    const parts = spec.split(",").map((part) => part.split("="));
    return parts.length === 1 ? `label ${spec}`
      : "blend " + parts.map(([label, share]) => `${label} ${Math.round(parseFloat(share) * 100)}%`).join(" + ");
  }

  async function run() {
    const settings = MM.formSettings(form);
    if (!settings.run) {
      MM.banner("No run to sample from yet: train one under Train.");
      return;
    }
    if (!settings.label) delete settings.label;  // (the URL keeps only what applies)
    if (!settings.label || !settings.label2 || settings.label2 === settings.label) {
      delete settings.label2;
      delete settings.weight;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    document.getElementById("gen-summary").textContent = "Generating…";
    try {
      const result = await MM.api("/api/sample", { json: MM.sampleBody(settings) });
      settings.seed = String(result.seed ?? settings.seed ?? "");
      form.elements.seed.value = settings.seed;
      last = { settings, result };
      MM.setUrl("generate", settings);
      tbody.replaceChildren(...result.items.map((item) => row(settings.run, item)));
      document.getElementById("gen-table").hidden = !result.items.length;
      for (const id of ["gen-copy", "gen-txt", "gen-csv", "gen-link"]) document.getElementById(id).disabled = false;
      const news = result.items.filter((i) => i.status === "new").length;
      const given = labelText(settings);
      document.getElementById("gen-summary").textContent =
        `${result.items.length} items from ${settings.run}${given ? ", " + given : ""}, seed ${settings.seed || "—"}: ${news} new`;
      const note = document.getElementById("gen-note");
      note.textContent = result.note || "";
      note.hidden = !result.note;
      MM.banner("");
    } catch (error) {
      MM.banner(error.message);
      document.getElementById("gen-summary").textContent = "No items.";
    } finally {
      button.disabled = false;
    }
  }

  function csv(items) {
    const quote = (v) => (v == null ? "" : /[",\n]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));
    const lines = ["item,logprob,status,nearest,distance"];
    for (const i of items) lines.push([i.item, i.logprob, i.status, i.nearest, i.distance].map(quote).join(","));
    return lines.join("\n") + "\n";
  }

  function fileName(ext) {
    return `${last.settings.run}-seed${last.settings.seed || "x"}.${ext}`;
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  form.elements.run.addEventListener("change", () => updateLabels());
  for (const name of ["label", "label2", "weight"]) form.elements[name].addEventListener("input", showWeight);
  document.getElementById("gen-copy").onclick = (e) => last && MM.copy(last.result.items.map((i) => i.item).join("\n") + "\n", e.target);
  document.getElementById("gen-txt").onclick = () => last && MM.download(fileName("txt"), last.result.items.map((i) => i.item).join("\n") + "\n", "text/plain");
  document.getElementById("gen-csv").onclick = () => last && MM.download(fileName("csv"), csv(last.result.items), "text/csv");
  document.getElementById("gen-link").onclick = (e) => MM.copy(location.href, e.target);
  renderFavourites();
  return { run, form, updateLabels };
})();

// ------------------------------------------------------------------------------------------------------- Compare
const Compare = (() => {
  const form = document.getElementById("compare-form");

  function column(name, result, error) {
    const info = MM.runs().find((r) => r.name === name);
    const about = info ? ` · ${info.model}${info.val_nll == null ? "" : `, val ${info.val_nll.toFixed(3)}`}` : "";
    const children = [MM.el("h2", {}, name, MM.el("span", { class: "muted", text: about }))];
    if (error) children.push(MM.el("p", { class: "note", text: error }));
    else {
      const rows = result.items.map((i) => MM.el("tr", {}, MM.el("td", { class: "item", text: i.item }),
        MM.el("td", { class: "num", text: i.logprob == null ? "" : i.logprob.toFixed(2) }), MM.el("td", {}, MM.badge(i.status))));
      const news = result.items.filter((i) => i.status === "new").length;
      const mean = result.items.reduce((sum, i) => sum + (i.logprob || 0), 0) / Math.max(1, result.items.length);
      children.push(MM.el("p", { class: "muted", text: `${news} of ${result.items.length} new · mean log-prob ${mean.toFixed(2)}` }),
        MM.el("table", { class: "items" }, MM.el("tbody", {}, ...rows)));
    }
    return children;
  }

  async function run() {
    const s = MM.formSettings(form);
    if (!s.run_a || !s.run_b) return;
    MM.setUrl("compare", s);
    const shared = MM.sampleBody({ ...s, nearest: false });
    const ask = (name) => MM.api("/api/sample", { json: { ...shared, run: name, nearest: false } })
      .then((result) => [result, null], (error) => [null, error.message]);
    const [a, b] = await Promise.all([ask(s.run_a), ask(s.run_b)]);
    document.getElementById("compare-a").replaceChildren(...column(s.run_a, ...a));
    document.getElementById("compare-b").replaceChildren(...column(s.run_b, ...b));
    document.getElementById("compare-summary").textContent =
      `Seed ${s.seed || "random"}, temperature ${s.temperature || 1}${s.prefix ? `, prefix "${s.prefix}"` : ""}: the same settings for both.`;
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  return { run, form };
})();

// --------------------------------------------------------------------------------------------------------- start
(async () => {
  for (const link of document.querySelectorAll("#tabs a")) {
    link.addEventListener("click", (event) => { event.preventDefault(); MM.showView(link.dataset.view); });
  }
  const view = MM.query.get("view") || "generate";
  MM.showView(view, false);
  await MM.loadRuns();
  Generate.updateLabels();
  // A shared link: fill the view's form from the URL and run it, which reproduces the list.
  if (view === "generate" && MM.query.get("run")) {
    MM.fillForm(Generate.form, MM.query);
    Generate.updateLabels(true);
    Generate.run();
  } else if (view === "compare" && MM.query.get("run_a")) {
    MM.fillForm(Compare.form, MM.query);
    Compare.run();
  }
  document.dispatchEvent(new CustomEvent("mm:ready", { detail: view }));
})();
