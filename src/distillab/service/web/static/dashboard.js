// The dashboard's one script: the API key lives in sessionStorage; every page calls the JSON API.
"use strict";
const API = document.body.dataset.api;
const KEY = "distillab-key";
const $ = (selector) => document.querySelector(selector);

function show(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

function cell(row, value) {
  const td = document.createElement("td");
  if (value instanceof Node) td.append(value); else td.textContent = value ?? "-";
  row.append(td);
  return td;
}

function toLogin(reason) {
  sessionStorage.removeItem(KEY);
  location.href = "/ui/login" + (reason ? "?reason=" + encodeURIComponent(reason) : "");
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY);
  if (!key) { toLogin("Log in with your API key."); throw new Error("no key"); }
  const response = await fetch(API + path, { ...options, headers: { ...(options.headers || {}), "X-API-Key": key } });
  if (response.status === 401) { toLogin("Your API key was refused (expired or unknown); log in again."); throw new Error("401"); }
  return response;
}

async function detail(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) return body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
    return body.detail || response.statusText;
  } catch { return response.statusText; }
}

// Server-Sent Events over fetch (EventSource cannot send the X-API-Key header).
async function followEvents(jobId, onState) {
  const response = await api(`/jobs/${jobId}/events`);
  if (!response.ok || !response.body) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      const event = (block.split("\n").find((l) => l.startsWith("event:")) || "event: progress").slice(6).trim();
      if (data) onState(JSON.parse(data), event);
      if (event === "end") { reader.cancel(); return; }
    }
  }
}

const ACTIVE = ["queued", "running", "cancelling"];
const money = (v) => (v == null ? "-" : `$${Number(v).toFixed(4)}`);
const when = (iso) => (iso ? iso.replace("T", " ").replace("+00:00", " UTC") : "-");

// an automated search's status: trials, budget used, and the best point so far (every trained
// point met the constraints as predicted before it trained)
function searchStatus(search) {
  const parts = [`${search.trials_done} of ${search.trials_planned} trials`];
  const seconds = `${Math.round(search.searched_seconds)} s`;
  parts.push(search.budget_s ? `${seconds} of ${Math.round(search.budget_s)} s budget` : `${seconds} searched`);
  if (search.best_val_score != null) {
    const score = search.metric === "accuracy" ? `${(100 * search.best_val_score).toFixed(2)} %`
      : search.best_val_score.toFixed(4);
    const student = search.best_student
      ? ` (${search.best_student.model}, ${search.best_student.params.toLocaleString("en-US")} params)` : "";
    parts.push(`best validation ${search.metric || "score"} ${score}${student}`);
  }
  return parts.join(" · ");
}

async function isAdmin() {
  const response = await api("/analytics");
  return response.ok;
}

const pages = {
  login() {
    const reason = new URLSearchParams(location.search).get("reason");
    if (reason) show(reason);
    $("#login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = $("#key").value.trim();
      const response = await fetch(API + "/jobs?limit=1", { headers: { "X-API-Key": key } });
      if (response.ok) { sessionStorage.setItem(KEY, key); location.href = "/ui/jobs"; }
      else show(response.status === 401 ? "Unknown API key." : await detail(response));
    });
  },

  async jobs() {
    const form = $("#filters");
    const admin = await isAdmin();
    if (admin) document.querySelectorAll(".admin-only").forEach((e) => { e.hidden = false; });
    const streams = [];
    async function load() {
      streams.forEach((s) => s.abort());
      streams.length = 0;
      const params = new URLSearchParams({ limit: "100" });
      const data = new FormData(form);
      for (const name of ["status", "strategy"]) if (data.get(name)) params.set(name, data.get(name));
      if (data.get("all_users")) params.set("all_users", "true");
      const response = await api("/jobs?" + params);
      if (!response.ok) { show(await detail(response)); return; }
      const page = await response.json();
      const body = $("#jobs-table tbody");
      body.replaceChildren();
      $("#jobs-empty").hidden = page.items.length > 0;
      for (const job of page.items) {
        const row = document.createElement("tr");
        row.dataset.job = job.job_id;
        const link = document.createElement("a");
        link.href = `/ui/jobs/${job.job_id}`;
        link.textContent = job.name;
        cell(row, link); cell(row, job.strategy);
        const status = cell(row, job.status); status.className = "status";
        const bar = document.createElement("progress"); bar.max = 100; bar.value = job.progress;
        cell(row, bar);
        const phase = cell(row, job.current_phase);
        cell(row, when(job.created_at)); cell(row, money(job.estimated_cost));
        body.append(row);
        if (ACTIVE.includes(job.status)) {
          followEvents(job.job_id, (state) => {
            status.textContent = state.status; bar.value = state.progress; phase.textContent = state.current_phase || "-";
          }).catch(() => {});
        }
      }
    }
    form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
    load();
  },

  async job() {
    const jobId = document.body.dataset.job;
    const response = await api(`/jobs/${jobId}`);
    if (!response.ok) { show(response.status === 404 ? `No job ${jobId}.` : await detail(response)); return; }
    let finished = false;
    const render = async (job) => {
      $("#job-name").textContent = job.name;
      $("#job-status").textContent = job.status;
      $("#job-phase").textContent = job.current_phase || "-";
      $("#job-progress").value = job.progress;
      $("#job-percent").textContent = `${job.progress.toFixed(1)} %`;
      $("#job-eta").textContent = when(job.estimated_completion);
      $("#job-cost").textContent = money(job.estimated_cost);
      $("#job-device").textContent = `${job.device_seconds.toFixed(1)} s`;
      const search = (job.current_metrics || {}).auto;
      $("#job-search-fact").hidden = !search;
      if (search) $("#job-search").textContent = searchStatus(search);
      $("#cancel").hidden = !ACTIVE.includes(job.status) || job.status === "cancelling";
      if (!ACTIVE.includes(job.status) && !finished) { finished = true; await results(job); }
    };
    const results = async (job) => {
      if (!job.results_available && !job.partial_results_available) return;
      const response = await api(`/jobs/${jobId}/results`);
      if (!response.ok) return;
      const data = await response.json();
      $("#results").hidden = false;
      const files = data.artifacts || {};
      if (files["report.json"]) {
        const report = await (await api(files["report.json"].slice(API.length))).json();
        $("#verdict").textContent = report.verdict || "";
        const body = $("#report-table tbody");
        body.replaceChildren();
        for (const model of report.models || []) {
          const row = document.createElement("tr");
          const score = model.score || model.accuracy;
          const percent = (report.task || {}).metric ? (report.task.metric === "accuracy") : true;
          const fmt = (v) => (percent ? `${(100 * v).toFixed(2)} %` : v.toFixed(4));
          cell(row, model.name); cell(row, model.role);
          cell(row, score ? `${fmt(score.mean)} ± ${percent ? (100 * score.std).toFixed(2) : score.std.toFixed(4)}` : "-");
          cell(row, model.params?.toLocaleString()); cell(row, model.size_mb?.toFixed(3));
          cell(row, model.latency_ms?.toFixed(3));
          body.append(row);
        }
      }
      const plots = $("#plots");
      plots.replaceChildren();
      const list = $("#artifacts");
      list.replaceChildren();
      for (const [name, url] of Object.entries(files)) {
        const path = url.slice(API.length);
        if (name.endsWith(".png")) {
          const blob = await (await api(path)).blob();
          const figure = document.createElement("figure");
          const img = document.createElement("img");
          img.src = URL.createObjectURL(blob); img.alt = name;
          const caption = document.createElement("figcaption"); caption.textContent = name;
          figure.append(img, caption); plots.append(figure);
        }
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button"; button.textContent = name; button.className = "link";
        button.addEventListener("click", async () => {
          const blob = await (await api(path)).blob();
          const a = document.createElement("a");
          a.href = URL.createObjectURL(blob); a.download = name;
          document.body.append(a); a.click(); a.remove();
        });
        item.append(button); list.append(item);
      }
    };
    $("#cancel").addEventListener("click", async () => {
      const answer = await api(`/jobs/${jobId}`, { method: "DELETE" });
      if (answer.ok) render(await answer.json()); else show(await detail(answer));
    });
    const job = await response.json();
    await render(job);
    if (ACTIVE.includes(job.status)) followEvents(jobId, (state) => render(state)).catch(() => {});
  },

  submit() {
    const send = async (path) => {
      $("#spec-errors").replaceChildren();
      $("#spec-ok").hidden = true;
      const response = await api(path, { method: "POST", headers: { "content-type": "application/yaml" },
                                         body: $("#spec").value });
      const body = await response.json();
      if (!response.ok) {
        const items = Array.isArray(body.detail) ? body.detail : [{ loc: [], msg: body.detail }];
        for (const error of items) {
          const li = document.createElement("li");
          const path = (error.loc || []).filter((p) => p !== "body").join(".");
          const code = document.createElement("code"); code.textContent = path || "(spec)";
          li.append(code, `: ${error.msg}`);
          $("#spec-errors").append(li);
        }
        return null;
      }
      return body;
    };
    $("#validate").addEventListener("click", async () => {
      const ok = await send("/specs/validate");
      if (ok) { $("#spec-ok").textContent = `Valid: ${ok.name} (${ok.strategy}, ${ok.epochs} epochs, seeds ${ok.seeds.join(", ")}).`; $("#spec-ok").hidden = false; }
    });
    $("#submit-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const created = await send("/jobs/yaml");
      if (created) location.href = `/ui/jobs/${created.job_id}`;
    });
  },

  async catalog() {
    const strategies = await (await api("/strategies")).json();
    for (const s of strategies) {
      const row = document.createElement("tr");
      cell(row, s.name); cell(row, s.summary);
      cell(row, Object.entries(s.params || {}).map(([k, v]) => `${k}=${JSON.stringify(v.default)}`).join(", "));
      $("#strategies-table tbody").append(row);
    }
    const types = await (await api("/model-types")).json();
    const rows = [...types.architectures.map((a) => [a, "zoo architecture", "image classification"]),
                  ...types.language_model_students.map((a) => [a, "language-model student", "language modelling"]),
                  ...Object.entries(types.pretrained_teachers).map(([k, v]) => [k, v, "pretrained teacher"])];
    for (const [name, what, task] of rows) {
      const row = document.createElement("tr");
      cell(row, name); cell(row, what); cell(row, task);
      $("#models-table tbody").append(row);
    }
  },

  async admin() {
    const response = await api("/analytics");
    if (response.status === 403) { show("The admin pages are for admins."); return; }
    const a = await response.json();
    const facts = [["jobs", a.total_jobs], ["active", a.active_jobs], ["completed", a.completed_jobs],
      ["success rate", a.success_rate == null ? "-" : `${(100 * a.success_rate).toFixed(0)} %`],
      ["mean improvement", a.average_improvement == null ? "-" : `${(100 * a.average_improvement).toFixed(2)} points`],
      ["device hours", a.device_hours.toFixed(3)], ["cost", money(a.training_cost_usd)],
      ["queue", a.system_utilization.queue_length], ["workers (busy/live)",
        `${a.system_utilization.busy_workers}/${a.system_utilization.live_workers}`]];
    for (const [label, value] of facts) {
      const div = document.createElement("div");
      const span = document.createElement("span"); span.textContent = label;
      const strong = document.createElement("strong"); strong.textContent = value;
      div.append(span, strong); $("#analytics").append(div);
    }
    const audit = await (await api("/audit?limit=100")).json();
    for (const e of audit.items) {
      const row = document.createElement("tr");
      cell(row, when(e.at)); cell(row, e.user); cell(row, e.action); cell(row, e.target);
      cell(row, JSON.stringify(e.detail || {}));
      $("#audit-table tbody").append(row);
    }
  },
};

const logout = $("#logout");
if (logout) logout.addEventListener("click", () => toLogin(""));
pages[document.body.dataset.page]();
