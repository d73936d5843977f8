// makemore serve: the Train view. A job streams its events (server-sent events): the loss curve, progress and ETA.
"use strict";

const Train = (() => {
  const form = document.getElementById("train-form");
  const canvas = document.getElementById("curve");
  let models = [];
  let watching = null; // {job, source}
  let points = { train: [], val: [] }; // [seconds, loss]
  let pollTimer = null;

  // ------------------------------------------------------------------------------------------------ the curve
  function draw() {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 720;
    const height = Math.round(width * 0.42);
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.clearRect(0, 0, width, height);
    const all = [...points.train, ...points.val];
    const pad = { left: 48, right: 12, top: 12, bottom: 30 };
    g.font = "12px system-ui, sans-serif";
    g.fillStyle = "#5b6475";
    if (!all.length) {
      g.fillText("Waiting for the first logged step…", pad.left, height / 2);
      return;
    }
    const xmax = Math.max(...all.map((p) => p[0]), 1e-3);
    let ymin = Math.min(...all.map((p) => p[1]));
    let ymax = Math.max(...all.map((p) => p[1]));
    if (ymax - ymin < 1e-3) { ymin -= 0.5; ymax += 0.5; }
    const x = (v) => pad.left + (v / xmax) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (1 - (v - ymin) / (ymax - ymin)) * (height - pad.top - pad.bottom);
    g.strokeStyle = "#e3e7ee";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const value = ymin + ((ymax - ymin) * i) / 4;
      g.beginPath(); g.moveTo(pad.left, y(value)); g.lineTo(width - pad.right, y(value)); g.stroke();
      g.fillText(value.toFixed(2), 6, y(value) + 4);
    }
    for (let i = 0; i <= 4; i++) {
      const value = (xmax * i) / 4;
      g.textAlign = i === 0 ? "left" : i === 4 ? "right" : "center";
      g.fillText(value < 10 ? value.toFixed(1) + " s" : Math.round(value) + " s", x(value), height - 10);
    }
    g.textAlign = "left";
    const line = (series, colour, dots) => {
      if (!series.length) return;
      g.strokeStyle = colour; g.fillStyle = colour; g.lineWidth = 2;
      g.beginPath();
      series.forEach(([a, b], i) => (i ? g.lineTo(x(a), y(b)) : g.moveTo(x(a), y(b))));
      g.stroke();
      if (dots) for (const [a, b] of series) { g.beginPath(); g.arc(x(a), y(b), 3, 0, 2 * Math.PI); g.fill(); }
    };
    line(points.train, "#2456c9", false);
    line(points.val, "#d9480f", true);
  }

  // ------------------------------------------------------------------------------------------------- progress
  const seconds = (s) => (s == null ? "—" : s < 90 ? `${Math.round(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);

  function showJob(job) {
    document.getElementById("job-panel").hidden = false;
    document.getElementById("train-empty").hidden = true;
    document.getElementById("job-title").textContent = `Job ${job.id}: ${job.run} — ${job.status}` +
      (job.status === "queued" && job.queue_position ? ` (#${job.queue_position} in the queue)` : "");
    const share = job.max_steps ? Math.min(1, job.step / job.max_steps) : 0;
    document.getElementById("job-bar").style.width = `${(100 * share).toFixed(1)}%`;
    const parts = [`step ${job.step.toLocaleString()}${job.max_steps ? " / " + job.max_steps.toLocaleString() : ""}`];
    if (job.elapsed != null) parts.push(`${seconds(job.elapsed)} trained`);
    if (job.status === "running") parts.push(`ETA ${seconds(job.eta)}`);
    if (job.train_loss != null) parts.push(`train ${job.train_loss.toFixed(3)}`);
    if (job.val_loss != null) parts.push(`val ${job.val_loss.toFixed(3)}`);
    if (job.error) parts.push(job.error);
    if (job.result && job.result.message) parts.push(job.result.message);
    document.getElementById("job-progress").textContent = parts.join(" · ");
    const active = job.status === "running" || job.status === "queued";
    document.getElementById("job-stop").hidden = !active;
    document.getElementById("job-resume").hidden = job.status !== "stopped";
    document.getElementById("job-stop").dataset.job = job.id;
    document.getElementById("job-resume").dataset.run = job.run;
  }

  function log(message) {
    const node = document.getElementById("job-log");
    node.textContent += message + "\n";
    node.scrollTop = node.scrollHeight;
  }

  function watch(job, keepCurve = false) {
    if (watching) watching.source.close();
    if (!keepCurve) { points = { train: [], val: [] }; document.getElementById("job-log").textContent = ""; }
    showJob(job);
    draw();
    const source = new EventSource(MM.withToken(`/api/jobs/${job.id}/events`));
    watching = { job, source };
    source.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.event === "train" && event.train_loss != null) points.train.push([event.elapsed, event.train_loss]);
      else if (event.event === "eval" && event.val_loss != null) points.val.push([event.elapsed, event.val_loss]);
      else if (event.event === "info" || event.event === "warning") log(event.message);
      else if (event.event === "end") {
        source.close();
        if (event.error) log("error: " + event.error);
        MM.api(`/api/jobs/${job.id}`).then(showJob, (error) => MM.banner(error.message));
        MM.loadRuns().then(() => Generate.updateLabels());
        refreshJobs();
      }
      draw();
    };
    source.addEventListener("job", (message) => showJob(JSON.parse(message.data)));
    source.onerror = () => { if (source.readyState === EventSource.CLOSED) refreshJobs(); };
  }

  // ------------------------------------------------------------------------------------------------------ jobs
  async function refreshJobs() {
    let jobs;
    try { jobs = await MM.api("/api/jobs"); } catch (error) { MM.banner(error.message); return []; }
    const list = document.getElementById("job-list");
    list.replaceChildren(...(jobs.length ? jobs.map((job) => MM.el("li", {},
      MM.el("span", { class: "status " + job.status, text: job.status }),
      MM.el("span", { text: `#${job.id} ${job.run}` }),
      MM.el("span", { class: "muted", text: job.max_steps ? `step ${job.step.toLocaleString()} / ${job.max_steps.toLocaleString()}` : "" }),
      MM.el("button", { type: "button", text: "Watch", onclick: () => watch(job) })))
      : [MM.el("li", { class: "muted", text: "No jobs yet." })]));
    const active = jobs.some((j) => j.status === "running" || j.status === "queued");
    clearTimeout(pollTimer);
    if (active) pollTimer = setTimeout(refreshJobs, 2000);
    return jobs;
  }

  async function start() {
    const s = MM.formSettings(form);
    const steps = MM.number(s.max_steps) || 2000;
    // a curve with ~100 points and ~10 evaluations, whatever the length; auto plans its own (a time budget)
    const settings = s.model === "auto" ? { time_budget: MM.number(s.time_budget, parseFloat) || 120 }
      : { max_steps: steps, log_every: Math.max(1, Math.min(100, Math.round(steps / 100))),
        eval_every: Math.max(10, Math.min(500, Math.round(steps / 10))) };
    const fromFile = form.querySelector("input[name=source]:checked").value === "file";
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      let job;
      if (fromFile) {
        const file = form.elements.file.files[0];
        if (!file) throw new Error("choose a text file to upload, or pick a built-in dataset");
        const data = new FormData();
        data.append("file", file);
        data.append("model", s.model);
        if (s.labelled) data.append("labelled", "true");
        if (s.name) data.append("name", s.name);
        data.append("settings", JSON.stringify(settings));
        job = await MM.api("/api/train", { body: data, method: "POST" });
      } else {
        job = await MM.api("/api/train", { json: { dataset: s.dataset, model: s.model, name: s.name || null, settings } });
      }
      MM.banner("");
      watch(job);
      refreshJobs();
    } catch (error) {
      MM.banner(error.message);
    } finally {
      button.disabled = false;
    }
  }

  async function load() {
    try {
      const [datasets, registry] = await Promise.all([MM.api("/api/datasets"), MM.api("/api/models")]);
      models = registry.filter((m) => m.trainable);
      const dataset = document.getElementById("dataset-select");
      dataset.replaceChildren(...datasets.map((d) => MM.el("option", { value: d.name, selected: d.default,
        text: `${d.name} (${d.items.toLocaleString()} items${d.labelled ? ", labelled" : ""})`,
        title: d.labelled ? `labels: ${d.labels.join(", ")}` : null })));
      const model = document.getElementById("model-select");
      model.replaceChildren(...models.map((m) => MM.el("option", { value: m.name, selected: m.default,
        text: m.default ? `${m.name} (the default)` : m.name })));
      describeModel();
    } catch (error) {
      MM.banner(error.message);
    }
    const jobs = await refreshJobs();
    const running = jobs.find((j) => j.status === "running") || jobs[0];
    if (running && !watching) watch(running);
  }

  function describeModel() {
    const chosen = models.find((m) => m.name === form.elements.model.value);
    document.getElementById("model-summary").textContent = chosen ? chosen.summary : "";
    const auto = form.elements.model.value === "auto";  // auto takes a time budget and plans the rest
    document.getElementById("steps-field").hidden = auto;
    document.getElementById("budget-field").hidden = !auto;
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); start(); });
  form.elements.model.addEventListener("change", describeModel);
  form.elements.file.addEventListener("change", () => { form.querySelector("input[value=file]").checked = true; });
  form.elements.labelled.addEventListener("change", () => {
    if (form.elements.labelled.checked) form.querySelector("input[value=file]").checked = true;  // (uploads only)
  });
  document.getElementById("job-stop").onclick = async (event) => {
    try { showJob(await MM.api(`/api/jobs/${event.target.dataset.job}/stop`, { method: "POST" })); } catch (error) { MM.banner(error.message); }
  };
  document.getElementById("job-resume").onclick = async (event) => {
    try {
      const job = await MM.api("/api/train", { json: { resume: event.target.dataset.run } });
      watch(job, true);
      refreshJobs();
    } catch (error) { MM.banner(error.message); }
  };
  window.addEventListener("resize", draw);
  document.addEventListener("mm:view", (event) => { if (event.detail === "train") draw(); });
  load();
  return { watch, refreshJobs, points: () => points, watching: () => (watching ? watching.job.id : null) };
})();
