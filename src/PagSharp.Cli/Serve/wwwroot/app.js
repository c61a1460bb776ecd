// pag serve's page: builds a job from the form, POSTs it to /api/jobs, follows it with server-sent events and shows
// the grid. Everything it shows comes from this server's JSON API (README, "pag serve"); no other requests.
"use strict";

const $ = (id) => document.getElementById(id);

// The method rows: the pag compare tokens they make (cfg:W, pag:S, …). "cfg+pag" has no slider: it uses CFG's and PAG's.
const METHODS = [
  { key: "none", name: "none", note: "no guidance" },
  { key: "cfg", name: "CFG", min: 1, max: 15, step: 0.5, scale: "cfg", cfg: true },
  { key: "pag", name: "PAG", min: 0, max: 10, step: 0.25, scale: "pag" },
  { key: "cfg+pag", name: "CFG + PAG", note: "CFG's w and PAG's s", cfg: true },
  { key: "sag", name: "SAG", min: 0, max: 3, step: 0.05, scale: "sag" },
  { key: "seg", name: "SEG", min: 0, max: 10, step: 0.25, scale: "seg" },
  { key: "slg", name: "SLG", min: 0, max: 10, step: 0.25, scale: "slg" },
  { key: "apg", name: "APG", min: 1, max: 15, step: 0.5, scale: "cfg", cfg: true },
  { key: "cfgzero", name: "CFG-Zero*", min: 1, max: 15, step: 0.5, scale: "cfg", cfg: true },
];
const CHECKED_BY_DEFAULT = new Set(["none", "pag"]);

const state = { models: [], limits: {}, model: null, defaultLayers: [], job: null, events: null, previewUrl: null };

function num(v) { return String(Number(Number(v).toFixed(4))); }

async function api(path, options) {
  const res = await fetch(path, options);
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  if (!res.ok) throw new Error(body && body.error ? body.error : `${res.status} ${res.statusText}`);
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function buildMethodRows() {
  const box = $("methods");
  for (const m of METHODS) {
    const row = document.createElement("div");
    row.className = "method";
    row.dataset.key = m.key;
    const check = document.createElement("input");
    check.type = "checkbox";
    check.id = `m-${m.key}`;
    check.checked = CHECKED_BY_DEFAULT.has(m.key);
    const name = document.createElement("label");
    name.className = "name";
    name.htmlFor = check.id;
    name.textContent = m.name;
    row.append(check, name);
    if (m.min !== undefined) {
      const slider = document.createElement("input");
      slider.type = "range";
      slider.min = m.min; slider.max = m.max; slider.step = m.step;
      slider.id = `s-${m.key}`;
      slider.setAttribute("aria-label", `${m.name} scale`);
      const value = document.createElement("span");
      value.className = "value";
      value.id = `v-${m.key}`;
      slider.addEventListener("input", () => { value.textContent = num(slider.value); updateTokens(); });
      row.append(slider, value);
    } else {
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = m.note;
      row.append(note, document.createElement("span"));
    }
    check.addEventListener("change", updateTokens);
    box.append(row);
  }
}

function scaleOf(key) { return num($(`s-${key}`).value); }

function cfgPossible() {
  const m = state.model;
  if (!m || !m.cfg) return false;
  return m.family === "sd" || $("label").value !== "";
}

function tokens() {
  const list = [];
  const cfgOk = cfgPossible();
  for (const m of METHODS) {
    if (!$(`m-${m.key}`).checked || (m.cfg && !cfgOk)) continue;
    if (m.key === "none") list.push("none");
    else if (m.key === "cfg+pag") list.push(`cfg:${scaleOf("cfg")}+pag:${scaleOf("pag")}`);
    else list.push(`${m.key}:${scaleOf(m.key)}`);
  }
  for (const t of $("extra").value.split(",")) if (t.trim()) list.push(t.trim());
  return list;
}

function updateTokens() {
  const cfgOk = cfgPossible();
  for (const m of METHODS) {
    const row = document.querySelector(`.method[data-key="${CSS.escape(m.key)}"]`);
    const off = m.cfg && !cfgOk;
    row.classList.toggle("disabled", off);
    $(`m-${m.key}`).disabled = off;
    row.title = off ? (state.model && !state.model.cfg ? "this model has no unconditional (null) class" : "pick a label for CFG") : "";
  }
  $("tokens").textContent = tokens().join(", ") || "(none)";
  const m = state.model;
  $("methods-note").textContent = !m || cfgOk ? ""
    : !m.cfg ? "CFG, APG and CFG-Zero* need a model with an unconditional (null) class."
    : "CFG, CFG + PAG, APG and CFG-Zero* push towards a class: pick a label to use them.";
}

function selectedLayers() {
  return [...document.querySelectorAll("#layers tbody input:checked")].map((c) => c.value);
}

async function loadLayers(model) {
  const tbody = document.querySelector("#layers tbody");
  tbody.replaceChildren();
  $("layers-status").textContent = "loading the layers…";
  const data = await api(`/api/models/${encodeURIComponent(model.id)}/layers`);
  $("layers-status").textContent = "";
  state.defaultLayers = data.defaultLayers;
  for (const l of data.layers) {
    const tr = document.createElement("tr");
    if (l.default) tr.className = "default";
    const check = document.createElement("input");
    check.type = "checkbox";
    check.value = l.name;
    check.checked = l.default;
    check.setAttribute("aria-label", l.name);
    const cells = [check, l.name, l.group, `${l.resolution}×${l.resolution}`, l.channels, l.heads, `${l.pagCost.toFixed(2)}×`, `${l.cfgPagCost.toFixed(2)}×`];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i >= 4) td.className = "num";
      if (c instanceof Node) td.append(c); else td.textContent = String(c);
      tr.append(td);
    });
    tbody.append(tr);
  }
}

async function selectModel(id) {
  const m = state.models.find((x) => x.id === id);
  state.model = m;
  const adm = m.family === "adm";
  $("adm-fields").hidden = !adm || m.labels.length === 0;
  $("sd-fields").hidden = adm;
  if (adm) {
    const label = $("label");
    label.replaceChildren();
    if (!m.labelRequired) label.append(option("", "none (unconditional)"));
    for (const l of m.labels) label.append(option(String(l), String(l)));
  } else {
    $("width").value = m.defaultWidth; $("height").value = m.defaultHeight;
    $("width").step = $("height").step = Math.max(8, m.sizeMultiple);
    $("width").max = $("height").max = state.limits.maxImageSize;
  }
  const sched = $("scheduler");
  sched.replaceChildren(...m.schedulers.map((s) => option(s, s)));
  sched.value = m.defaultScheduler;
  $("steps").value = Math.min(adm ? 25 : m.defaultSteps, state.limits.maxSteps);
  for (const meth of METHODS) {
    if (!meth.scale) continue;
    const s = $(`s-${meth.key}`);
    s.value = m.defaultScales[meth.scale];
    $(`v-${meth.key}`).textContent = num(s.value);
  }
  updateTokens();
  await loadLayers(m);
}

function request() {
  const m = state.model;
  const body = {
    model: m.id,
    seed: Number($("seed").value),
    count: Number($("count").value),
    steps: Number($("steps").value),
    scheduler: $("scheduler").value,
    methods: tokens(),
    layers: selectedLayers(),
  };
  if (body.layers.length === 0) delete body.layers; // the model's default
  if (m.family === "adm") {
    if ($("label").value !== "") body.label = Number($("label").value);
  } else {
    body.prompt = $("prompt").value;
    if ($("negative").value) body.negativePrompt = $("negative").value;
    body.width = Number($("width").value);
    body.height = Number($("height").value);
  }
  return body;
}

async function run(event) {
  event.preventDefault();
  showError("");
  if (state.job && !isFinished(state.job)) return;
  $("run").disabled = true;
  $("results-card").hidden = true;
  try {
    const job = await api("/api/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request()),
    });
    follow(job);
  } catch (e) {
    showError(e.message);
    $("run").disabled = false;
  }
}

function isFinished(job) { return ["succeeded", "failed", "cancelled"].includes(job.status); }

function follow(job) {
  state.job = job;
  render(job);
  if (state.events) state.events.close();
  const events = new EventSource(job.links.events);
  state.events = events;
  events.addEventListener("job", (e) => {
    const j = JSON.parse(e.data);
    state.job = j;
    render(j);
    if (isFinished(j)) events.close();
  });
  events.onerror = () => {
    if (state.job && isFinished(state.job)) events.close();
  };
}

function render(job) {
  const p = job.progress;
  const bar = $("progress");
  $("cancel").disabled = isFinished(job) || job.cancelling;
  $("run").disabled = !isFinished(job);
  let text;
  switch (job.status) {
    case "queued":
      text = `Queued: position ${job.position} in the queue (${job.ahead} job${job.ahead === 1 ? "" : "s"} ahead).`;
      bar.value = 0;
      break;
    case "running":
      text = job.cancelling ? "Cancelling…"
        : `Running column ${p.column + 1} of ${p.columns} (${p.method}): step ${p.step} of ${p.steps}.`;
      bar.value = p.fraction;
      break;
    case "succeeded": {
      const secs = (new Date(job.finishedAt) - new Date(job.startedAt)) / 1000;
      text = `Done: ${job.result.seeds.length} seed(s) × ${job.result.columns.length} method(s) in ${secs.toFixed(1)} s (job ${job.id}).`;
      bar.value = 1;
      break;
    }
    case "failed":
      text = "Failed.";
      showError(job.error);
      bar.value = 0;
      break;
    default:
      text = "Cancelled: nothing was written.";
      bar.value = 0;
  }
  $("status").textContent = text;
  const box = $("preview-box");
  if (job.status === "running" && job.preview) {
    if (state.previewUrl !== job.preview) {
      state.previewUrl = job.preview;
      $("preview").src = job.preview;
      $("preview-caption").textContent = `${p.method}: the images this column is heading for (predicted at the current step; updated every few steps)`;
    }
    box.hidden = false;
  } else if (job.status !== "running") {
    box.hidden = true;
    state.previewUrl = null;
  }
  if (job.status === "succeeded") showResults(job);
}

function showResults(job) {
  const r = job.result;
  const base = job.links.files;
  $("dl-grid").href = base + r.grid;
  $("dl-run").href = base + r.run;
  $("dl-zip").href = base + r.zip;
  const small = Math.max(r.width, r.height) <= 128;
  const scale = small ? Math.max(1, Math.floor(128 / Math.max(r.width, r.height))) : Math.min(1, 256 / Math.max(r.width, r.height));
  const grid = $("grid");
  grid.replaceChildren();
  const head = document.createElement("tr");
  head.append(document.createElement("th"));
  for (const c of r.columns) {
    const th = document.createElement("th");
    th.textContent = c;
    head.append(th);
  }
  grid.append(head);
  const label = job.request.label;
  r.images.forEach((row, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.className = "seed";
    th.textContent = `seed ${r.seeds[i]}` + (label !== undefined && label !== null ? ` · ${label}` : "");
    tr.append(th);
    row.forEach((file, j) => {
      const td = document.createElement("td");
      const a = document.createElement("a");
      a.href = base + file;
      a.download = file;
      const img = document.createElement("img");
      img.src = base + file;
      img.alt = `seed ${r.seeds[i]}, ${r.columns[j]}`;
      img.width = Math.round(r.width * scale);
      img.height = Math.round(r.height * scale);
      if (!small) img.className = "smooth";
      a.append(img);
      td.append(a);
      tr.append(td);
    });
    grid.append(tr);
  });
  $("results-card").hidden = false;
}

async function cancel() {
  if (!state.job) return;
  $("cancel").disabled = true;
  try {
    render(await api(`/api/jobs/${state.job.id}`, { method: "DELETE" }));
  } catch (e) {
    showError(e.message);
  }
}

async function start() {
  buildMethodRows();
  try {
    const data = await api("/api/models");
    state.models = data.models;
    state.limits = data.limits;
    const l = data.limits;
    $("limits").textContent = `up to ${l.maxCount} seeds, ${l.maxSteps} steps, ${l.maxColumns} methods per job; ${l.maxQueue} jobs may wait`;
    $("count").max = l.maxCount;
    $("steps").max = l.maxSteps;
    $("model").replaceChildren(...data.models.map((m) => option(m.id, m.name)));
    await selectModel(data.models[0].id);
  } catch (e) {
    showError(`cannot load the models: ${e.message}`);
  }
  $("model").addEventListener("change", () => selectModel($("model").value).catch((e) => showError(e.message)));
  $("label").addEventListener("change", updateTokens);
  $("extra").addEventListener("input", updateTokens);
  $("form").addEventListener("submit", run);
  $("preview").addEventListener("load", () => {
    // Small previews (32-pixel digits) enlarged by a whole factor, at most 640 × 200 pixels.
    const img = $("preview");
    const k = Math.max(1, Math.floor(Math.min(640 / img.naturalWidth, 200 / img.naturalHeight)));
    img.width = img.naturalWidth * k;
    img.height = img.naturalHeight * k;
  });
  $("cancel").addEventListener("click", cancel);
  $("layers-default").addEventListener("click", () => {
    for (const c of document.querySelectorAll("#layers tbody input")) c.checked = state.defaultLayers.includes(c.value);
  });
  $("layers-none").addEventListener("click", () => {
    for (const c of document.querySelectorAll("#layers tbody input")) c.checked = false;
  });
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", start);
