// The operations dashboard: reads the operations API with the user's token and renders it.
// Everything from the server is put on the page as text (textContent), never as markup.

import { formatNumber, lineChart, ringDiagram } from "./charts.js";

const API = "/api/v1";
const TOKEN_KEY = "tsc-central.token";
const params = new URLSearchParams(window.location.search);
const POLL_MS = Math.max(1, Number(params.get("poll")) || 5) * 1000;
const AUDIT_LIMIT = 50;

const state = {
  token: null,
  user: null,
  site: "",
  intersections: [],
  overrides: [],
  selected: null,
  timer: null,
  signatures: {},
  auditOpen: new Set(),
  cancelling: null,
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === "string" ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

// --- small DOM helpers --------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(kind, value) {
  const text = value ?? "unknown";
  return h("span", { class: `badge ${kind}-${String(text).replace(/[^a-z-]/g, "")}` }, text);
}

function pad(n) { return String(n).padStart(2, "0"); }

function fmtTime(t, { seconds = true } = {}) {
  if (t === null || t === undefined) return "–";
  const d = new Date(t * 1000);
  const now = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? ":" + pad(d.getSeconds()) : ""}`;
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** Server texts give times as POSIX seconds ("until 1796112600"): show them as clock times. */
function withTimes(text) {
  return String(text ?? "").replace(/\b1[5-9]\d{8}(\.\d+)?\b/g, (t) => fmtTime(Number(t)));
}

function fmtIn(t) {
  const s = t - Date.now() / 1000;
  if (s <= 0) return "now";
  if (s < 90) return `in ${Math.round(s)} s`;
  if (s < 5400) return `in ${Math.round(s / 60)} min`;
  return `in ${(s / 3600).toFixed(1)} h`;
}

const KPI_UNITS = [["_vph", "veh/h"], ["_veh", "veh"], ["_mps", "m/s"], ["_pct", "%"],
  ["_s", "s"], ["_m", "m"]];

function kpiLabel(name) {
  for (const [suffix, unit] of KPI_UNITS) {
    if (name.endsWith(suffix)) {
      return { label: name.slice(0, -suffix.length).replace(/_/g, " "), unit };
    }
  }
  return { label: name.replace(/_/g, " "), unit: "" };
}

function changed(key, value) {
  const signature = JSON.stringify(value);
  if (state.signatures[key] === signature) return false;
  state.signatures[key] = signature;
  return true;
}

/** Rebuild a container's content, keeping keyboard focus on the same control if it is rebuilt. */
function replace(container, ...children) {
  const active = document.activeElement;
  const focusKey = active && container.contains(active) ? active.dataset.focus : undefined;
  container.replaceChildren(...children.flat(Infinity));
  if (focusKey) {
    const again = container.querySelector(`[data-focus="${CSS.escape(focusKey)}"]`);
    if (again) again.focus();
  }
}

// --- the API --------------------------------------------------------------------------------
async function api(path, { method = "GET", body, token = state.token } = {}) {
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text || "";
  banner.hidden = !text;
}

// --- sign in and out --------------------------------------------------------------------
async function signIn(token, { remembered = false } = {}) {
  try {
    const me = await api("/me", { token });
    state.token = token;
    state.user = me;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login-error").textContent = "";
    $("token").value = "";
    $("who").textContent = `${me.name} (${me.role})`;
    $("session").hidden = false;
    $("login-view").hidden = true;
    $("app-view").hidden = false;
    applyRole();
    showBanner("");
    await refresh();
    return true;
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    const message = error instanceof ApiError && error.status === 401
      ? (remembered ? "Your session's token is no longer accepted; sign in again."
        : "That token is not accepted (mistyped, rotated or revoked).")
      : `Cannot reach the operations API: ${error.message}`;
    $("login-error").textContent = message;
    return false;
  }
}

function signOut(message = "") {
  clearTimeout(state.timer);
  state.timer = null;
  state.token = null;
  state.user = null;
  state.signatures = {};
  sessionStorage.removeItem(TOKEN_KEY);
  $("session").hidden = true;
  $("app-view").hidden = true;
  $("login-view").hidden = false;
  $("site-name").textContent = "";
  $("login-error").textContent = message;
  showBanner("");
  $("token").focus();
}

function canOperate() {
  return state.user && (state.user.role === "operator" || state.user.role === "admin");
}

function applyRole() {
  const allowed = canOperate();
  for (const control of $("override-form").elements) control.disabled = !allowed;
  $("ov-role-note").hidden = allowed;
}

// --- polling ------------------------------------------------------------------------------
async function refresh() {
  clearTimeout(state.timer);
  if (!state.token) return;
  try {
    const filter = $("audit-filter").value;
    const auditQuery = `/audit?newest_first=true&limit=${AUDIT_LIMIT}`
      + (filter ? `&intersection=${encodeURIComponent(filter)}` : "");
    const [xs, ovs, audit] = await Promise.all([
      api("/intersections"), api("/overrides"), api(auditQuery),
    ]);
    state.site = xs.site;
    state.intersections = xs.intersections;
    state.overrides = ovs.overrides;
    if (!state.selected || !xs.intersections.some((x) => x.id === state.selected)) {
      state.selected = xs.intersections[0]?.id ?? null;
    }
    $("site-name").textContent = `site ${xs.site}`;
    renderIntersections();
    renderOverrideChoices();
    renderOverrides();
    renderAudit(audit.entries);
    await refreshDetail();
    $("updated").textContent = `updated ${fmtTime(Date.now() / 1000)}`;
    showBanner("");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut("Your token is no longer accepted (rotated or revoked); sign in again.");
      return;
    }
    showBanner(`Cannot update from the operations API (${error.message}); retrying every `
      + `${POLL_MS / 1000} s. What is shown may be out of date.`);
  }
  state.timer = setTimeout(refresh, POLL_MS);
}

async function refreshDetail() {
  const x = state.intersections.find((i) => i.id === state.selected);
  if (!x) return;
  const id = encodeURIComponent(x.id);
  const [kpis, meas] = await Promise.all([
    api(`/intersections/${id}/kpis?limit=720`),
    api(`/intersections/${id}/measurements?limit=1`),
  ]);
  renderDetail(x);
  renderMeasurements(x, meas.measurements);
  renderKpis(x, kpis.kpis);
}

// --- intersections ------------------------------------------------------------------------
function kpiSummary(kpis) {
  if (!kpis) return h("span", { class: "muted" }, "none yet");
  const names = Object.keys(kpis.values).sort().slice(0, 3);
  return h("ul", { class: "kpis" }, names.map((name) => {
    const { label, unit } = kpiLabel(name);
    return h("li", { class: "kpi" }, `${label} `,
      h("strong", {}, formatNumber(kpis.values[name])), unit ? ` ${unit}` : "");
  }));
}

function renderIntersections() {
  if (!changed("intersections", [state.intersections, state.selected])) return;
  const rows = state.intersections.map((x) => {
    const selected = x.id === state.selected;
    const plan = x.plan;
    return h("tr", { class: selected ? "selected" : "", dataset: { id: x.id } },
      h("th", { scope: "row" },
        h("button", { type: "button", class: "link", "aria-current": selected ? "true" : null,
          dataset: { focus: `x-${x.id}` }, onclick: () => select(x.id) }, x.name || x.id),
        h("div", { class: "id" }, x.id)),
      h("td", {}, badge("mode", x.mode)),
      h("td", {}, badge("health", x.health),
        x.edge ? h("div", { class: "id" }, `edge ${x.edge.mode} · ${fmtTime(x.edge.t)}`) : null),
      h("td", { class: "nowrap" }, plan ? h("span", {}, `#${plan.plan_id} · ${formatNumber(plan.cycle)} s`,
        h("div", { class: "id" }, plan.source)) : h("span", { class: "muted" }, "no plan")),
      h("td", {}, kpiSummary(x.kpis)));
  });
  replace($("x-table").tBodies[0], rows);
}

function select(id) {
  state.selected = id;
  $("ov-intersection").value = id;
  renderPhaseChoices();
  renderIntersections();
  refreshDetail().catch((error) => showBanner(`Cannot load ${id}: ${error.message}`));
}

function renderDetail(x) {
  if (!changed("detail", x)) return;
  $("detail-title").textContent = `${x.name || x.id} (${x.id})`;
  const edge = x.edge;
  const facts = [
    ["Mode", badge("mode", x.mode)],
    ["Why", withTimes(x.reason)],
    ["Health", h("span", {}, badge("health", x.health),
      edge ? ` edge ${edge.online ? "online" : "offline"}, ${edge.mode}, controller `
        + `${edge.controller_ok ? "ok" : "FAILED"}, last status ${fmtTime(edge.t)}`
        : " no status from the edge yet")],
  ];
  if (edge && edge.failed_detectors.length) {
    facts.push(["Failed detectors", edge.failed_detectors.join(", ")]);
  }
  if (edge && edge.detail) facts.push(["Edge says", edge.detail]);
  if (x.override) {
    facts.push(["Override", `#${x.override.override_id} by ${x.override.user} until `
      + `${fmtTime(x.override.expiry)}: ${x.override.reason}`]);
  }
  replace($("detail-body"), h("dl", { class: "facts" },
    facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));

  const plan = x.plan;
  if (!plan) {
    replace($("plan"), h("p", { class: "muted" },
      "No central plan: the edge runs its local fallback."));
    return;
  }
  const phases = plan.rings.flat();
  replace($("plan"),
    h("dl", { class: "facts" },
      h("dt", {}, "Plan"), h("dd", {}, `#${plan.plan_id} from ${plan.source}, by ${plan.author}`),
      h("dt", {}, "Cycle"), h("dd", {}, `${formatNumber(plan.cycle)} s, offset `
        + `${formatNumber(plan.offset)} s on phase ${plan.offset_reference}`),
      h("dt", {}, "In force"), h("dd", {}, `since ${fmtTime(plan.activation)}`
        + (plan.expiry ? `, until ${fmtTime(plan.expiry)} (${fmtIn(plan.expiry)})` : ", no expiry")),
      h("dt", {}, "Explanation"), h("dd", { class: "explanation" },
        plan.explanation || "(none given)")),
    h("figure", { class: "rings-figure" }, ringDiagram(plan),
      h("figcaption", { class: "legend" },
        h("span", { class: "key seg-green" }), "green ",
        h("span", { class: "key seg-yellow" }), "yellow ",
        h("span", { class: "key seg-red" }), "red clearance")),
    h("table", { class: "grid compact-table" },
      h("caption", { class: "sr-only" }, "Phase timings of the plan in force"),
      h("thead", {}, h("tr", {}, ["Phase", "Split", "Green", "Yellow", "Red", "Min–max green",
        "Walk · ped clear"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, phases.map((p) => h("tr", {},
        h("th", { scope: "row" }, `Φ${p.phase}`),
        h("td", {}, `${formatNumber(p.split)} s`),
        h("td", {}, `${formatNumber(p.split - p.yellow - p.red_clearance)} s`),
        h("td", {}, `${formatNumber(p.yellow)} s`),
        h("td", {}, `${formatNumber(p.red_clearance)} s`),
        h("td", {}, `${formatNumber(p.min_green)}–${formatNumber(p.max_green)} s`),
        h("td", {}, p.walk || p.ped_clearance
          ? `${formatNumber(p.walk)} · ${formatNumber(p.ped_clearance)} s` : "–"))))));
}

function renderMeasurements(x, measurements) {
  if (!changed("measurements", [x.id, measurements])) return;
  const last = measurements[measurements.length - 1];
  if (!last) {
    replace($("measurements"), h("p", { class: "muted" },
      "No measurements received from this intersection yet."));
    return;
  }
  // The wire form leaves out fields at their default (healthy: true, services: 1, () lists).
  const m = { failed_detectors: [], phase_greens: [], ...last };
  const opt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  replace($("measurements"),
    h("p", { class: "help" }, `Interval ${fmtTime(m.interval_start)}–`
      + `${fmtTime(m.interval_start + m.interval_s)} (${formatNumber(m.interval_s)} s), `
      + `message ${m.seq}`
      + (m.failed_detectors.length ? `; failed detectors: ${m.failed_detectors.join(", ")}` : "")),
    h("div", { class: "table-wrap" }, h("table", { class: "grid compact-table", id: "meas-table" },
      h("caption", { class: "sr-only" }, "Latest measurement per lane"),
      h("thead", {}, h("tr", {}, ["Lane", "Count", "Flow (veh/h)", "Occupancy", "Speed (m/s)",
        "Queue (veh)", "Detectors"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, m.lanes.map((lane) => h("tr", { class: lane.healthy === false ? "bad" : "" },
        h("th", { scope: "row" }, lane.lane),
        h("td", {}, lane.count),
        h("td", {}, formatNumber(lane.flow_vph)),
        h("td", {}, `${(lane.occupancy * 100).toFixed(0)} %`),
        h("td", {}, opt(lane.mean_speed_mps)),
        h("td", {}, opt(lane.queue_veh, 0)),
        h("td", {}, lane.healthy === false ? badge("health", "fault") : "ok")))))),
    m.phase_greens.length ? h("p", { class: "help" }, "Green served: ",
      m.phase_greens.map((p) => `Φ${p.phase} ${formatNumber(p.green_s)} s`
        + ` (${p.services ?? 1}×)`).join(", ")) : null);
}

function renderKpis(x, snapshots) {
  if (!changed("kpis", [x.id, snapshots])) return;
  const names = [...new Set(snapshots.flatMap((k) => Object.keys(k.values)))].sort();
  if (!names.length) {
    replace($("kpi-charts"), h("p", { class: "muted" }, "No KPIs recorded yet."));
    return;
  }
  replace($("kpi-charts"), names.map((name) => {
    const { label, unit } = kpiLabel(name);
    const points = snapshots.filter((k) => Number.isFinite(k.values[name]))
      .map((k) => [k.t, k.values[name]]);
    const last = points[points.length - 1];
    return h("figure", { class: "chart-figure", dataset: { kpi: name } },
      h("figcaption", {}, h("span", {}, `${label}${unit ? ` (${unit})` : ""}`),
        h("strong", {}, last ? formatNumber(last[1]) : "–")),
      lineChart({ title: `${label}${unit ? ` in ${unit}` : ""}`, unit, points }));
  }));
}

// --- overrides ----------------------------------------------------------------------------
function renderOverrideChoices() {
  const select = $("ov-intersection");
  const current = select.value || state.selected;
  if (changed("ov-choices", state.intersections.map((x) => [x.id, x.name]))) {
    select.replaceChildren(...state.intersections.map((x) =>
      h("option", { value: x.id }, `${x.name || x.id} (${x.id})`)));
    const filter = $("audit-filter");
    const keep = filter.value;
    filter.replaceChildren(h("option", { value: "" }, "every intersection"),
      ...state.intersections.map((x) => h("option", { value: x.id }, x.name || x.id)));
    filter.value = keep;
  }
  if (current && state.intersections.some((x) => x.id === current)) select.value = current;
  renderPhaseChoices();
}

function renderPhaseChoices() {
  const x = state.intersections.find((i) => i.id === $("ov-intersection").value);
  const phases = x?.plan ? x.plan.rings.flat() : [];
  const select = $("ov-phase");
  if (!changed("ov-phases", [x?.id, phases.map((p) => [p.phase, p.split])])) return;
  const keep = select.value;
  select.replaceChildren(...phases.map((p) => h("option", { value: p.phase },
    `Φ${p.phase} (green ${formatNumber(p.split - p.yellow - p.red_clearance)} s)`)));
  if (phases.some((p) => String(p.phase) === keep)) select.value = keep;
  if (x?.plan && !$("ov-cycle").dataset.touched) $("ov-cycle").value = x.plan.cycle;
}

function showKind() {
  const kind = $("ov-kind").value;
  for (const block of document.querySelectorAll("#override-form [data-kind]")) {
    block.hidden = block.dataset.kind !== kind;
  }
}

function fillPlan() {
  const x = state.intersections.find((i) => i.id === $("ov-intersection").value);
  if (!x?.plan) {
    showResult("error", "This intersection has no plan in force to start from.");
    return;
  }
  const { expiry, ...plan } = x.plan;  // the override sets its own expiry
  $("ov-plan").value = JSON.stringify(plan, null, 2);
}

function showResult(kind, title, lines = [], auditSeq = null, target = $("ov-result")) {
  target.className = `result ${kind}`;
  target.replaceChildren(h("p", { class: "result-title" }, title),
    lines.length ? h("ul", {}, lines.map((line) => h("li", {}, line))) : null,
    auditSeq ? h("p", { class: "help" }, `Recorded as audit entry ${auditSeq}.`) : null);
}

function violationText(v) {
  const where = v.phase !== null && v.phase !== undefined ? `phase ${v.phase}: ` : "";
  return `[${v.rule}] ${where}${v.message}`;
}

function describeRefusal(error) {
  const body = error.body || {};
  if (Array.isArray(body.violations) && body.violations.length) {
    return { title: `Refused by the safety guard: ${body.violations.length} violation`
      + `${body.violations.length === 1 ? "" : "s"}. Nothing was changed.`,
      lines: body.violations.map(violationText) };
  }
  if (Array.isArray(body.detail)) {
    return { title: "Refused: the request is not valid.",
      lines: body.detail.map((e) => `${(e.loc || []).slice(1).join(".") || "request"}: ${e.msg}`) };
  }
  const prefix = { 403: "Not allowed", 404: "Not found", 409: "Refused (conflict)",
    422: "Refused" }[error.status] || `Failed (HTTP ${error.status})`;
  return { title: `${prefix}: ${body.detail || error.message}`, lines: [] };
}

function readForm() {
  const kind = $("ov-kind").value;
  const reason = $("ov-reason").value.trim();
  const problems = [];
  let pattern;
  if (kind === "extend-phase") {
    const phase = Number($("ov-phase").value);
    const seconds = Number($("ov-seconds").value);
    if (!Number.isInteger(phase) || phase < 1) problems.push("Choose a phase.");
    if (!(seconds > 0)) problems.push("Extra green must be more than 0 s.");
    pattern = { kind, phase, seconds };
  } else if (kind === "fixed-cycle") {
    const cycle = Number($("ov-cycle").value);
    const offsetText = $("ov-offset").value.trim();
    if (!(cycle > 0)) problems.push("The cycle must be more than 0 s.");
    pattern = { kind, cycle };
    if (offsetText !== "") pattern.offset = Number(offsetText);
  } else {
    try {
      pattern = { kind, plan: JSON.parse($("ov-plan").value) };
    } catch (error) {
      problems.push(`The plan is not valid JSON: ${error.message}`);
    }
  }
  const body = { intersection_id: $("ov-intersection").value, pattern, reason };
  if ($("ov-until-duration").checked) {
    const minutes = Number($("ov-minutes").value);
    if (!(minutes > 0)) problems.push("The duration must be more than 0 minutes.");
    body.duration_s = minutes * 60;
  } else {
    const when = $("ov-expiry").value;
    const t = when ? new Date(when).getTime() / 1000 : NaN;
    if (!Number.isFinite(t)) problems.push("Give the end time.");
    else if (t <= Date.now() / 1000) problems.push("The end time must be in the future.");
    body.expiry = t;
  }
  if (!reason) problems.push("Give a reason: every override is audited with it.");
  return { body, problems };
}

async function submitOverride(event) {
  event.preventDefault();
  const { body, problems } = readForm();
  if (problems.length) {
    showResult("error", "Check the form:", problems);
    if (!body.reason) $("ov-reason").setAttribute("aria-invalid", "true");
    return;
  }
  $("ov-reason").removeAttribute("aria-invalid");
  const button = $("ov-submit");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const result = await api("/overrides", { method: "POST", body });
    const o = result.override;
    showResult("ok", `Override #${o.override_id} in force at ${o.intersection_id}: plan `
      + `#${result.plan.plan_id}, cycle ${formatNumber(result.plan.cycle)} s, until `
      + `${fmtTime(o.expiry)}.`, [], result.audit_seq);
    $("ov-reason").value = "";
    await refresh();
  } catch (error) {
    if (!(error instanceof ApiError)) {
      showResult("error", `Cannot reach the operations API: ${error.message}`);
    } else if (error.status === 401) {
      signOut("Your token is no longer accepted; sign in again.");
    } else {
      const { title, lines } = describeRefusal(error);
      showResult("error", title, lines, error.body?.audit_seq);
      refresh();
    }
  } finally {
    button.disabled = !canOperate();
    button.removeAttribute("aria-busy");
  }
}

function renderOverrides() {
  const allowed = canOperate();
  if (!changed("overrides", [state.overrides, allowed])) return;
  const rows = state.overrides.map((o) => h("tr", { dataset: { override: o.override_id } },
    h("td", {}, `#${o.override_id}`),
    h("td", {}, o.intersection_id),
    h("td", {}, o.pattern || `cycle ${formatNumber(o.cycle)} s`),
    h("td", {}, h("strong", {}, o.user), ` · ${o.reason}`),
    h("td", {}, fmtTime(o.expiry, { seconds: false })),
    h("td", {}, allowed ? h("button", { type: "button", class: "danger small",
      dataset: { focus: `cancel-${o.override_id}` },
      "aria-label": `Cancel override ${o.override_id} at ${o.intersection_id}`,
      onclick: () => openCancel(o) }, "Cancel…") : null)));
  replace($("ov-table").tBodies[0], rows);
  $("ov-none").hidden = state.overrides.length > 0;
  $("ov-table").hidden = state.overrides.length === 0;
}

function openCancel(o) {
  state.cancelling = o;
  $("cancel-what").textContent = `Override #${o.override_id} at ${o.intersection_id} `
    + `(${o.pattern}) by ${o.user}, until ${fmtTime(o.expiry)}. The intersection goes back to `
    + "its adaptive or time-of-day plan.";
  $("cancel-reason").value = "";
  $("cancel-error").textContent = "";
  $("cancel-dialog").showModal();
  $("cancel-reason").focus();
}

async function submitCancel(event) {
  event.preventDefault();
  const o = state.cancelling;
  const reason = $("cancel-reason").value.trim();
  if (!reason) {
    $("cancel-error").textContent = "Give a reason: the cancellation is audited with it.";
    $("cancel-reason").setAttribute("aria-invalid", "true");
    return;
  }
  $("cancel-reason").removeAttribute("aria-invalid");
  try {
    const result = await api(`/overrides/${o.override_id}/cancel`, { method: "POST",
      body: { reason } });
    $("cancel-dialog").close();
    showResult("ok", `Override #${o.override_id} cancelled; ${o.intersection_id} is back to `
      + `${result.mode}${result.plan ? ` (plan #${result.plan.plan_id})` : ""}.`, [],
      result.audit_seq, $("cancel-result"));
    await refresh();
  } catch (error) {
    const text = error instanceof ApiError ? describeRefusal(error).title : error.message;
    $("cancel-error").textContent = text;
  }
}

// --- audit ----------------------------------------------------------------------------------
function auditDetails(entry) {
  const d = entry.details || {};
  const parts = [];
  if (entry.reason) parts.push(h("div", {}, entry.reason));
  if (Array.isArray(d.violations) && d.violations.length) {  // the error repeats them
    parts.push(h("ul", { class: "violations" }, d.violations.map((v) => h("li", {}, violationText(v)))));
  } else if (d.error) {
    parts.push(h("div", { class: "error-text" }, withTimes(d.error)));
  }
  const open = state.auditOpen.has(entry.seq);
  const more = h("details", { open: open || null, dataset: { seq: entry.seq } },
    h("summary", {}, "details"), h("pre", {}, JSON.stringify(d, null, 2)));
  more.addEventListener("toggle", () => {
    if (more.open) state.auditOpen.add(entry.seq); else state.auditOpen.delete(entry.seq);
  });
  parts.push(more);
  return parts;
}

function renderAudit(entries) {
  if (!changed("audit", entries.map((e) => e.hash))) return;
  const rows = entries.map((e) => h("tr", { dataset: { seq: e.seq } },
    h("td", {}, e.seq),
    h("td", { class: "nowrap" }, fmtTime(e.t)),
    h("td", {}, e.who),
    h("td", {}, h("code", {}, e.action), e.intersection ? h("div", { class: "id" }, e.intersection) : null),
    h("td", {}, badge("outcome", e.outcome)),
    h("td", {}, auditDetails(e))));
  replace($("audit-table").tBodies[0], rows.length ? rows
    : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No entries yet."))]);
}

// --- start ----------------------------------------------------------------------------------
function start() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      $("login-error").textContent = "Enter your access token.";
      return;
    }
    signIn(token);
  });
  $("logout").addEventListener("click", () => signOut("Signed out."));
  $("override-form").addEventListener("submit", submitOverride);
  $("ov-kind").addEventListener("change", showKind);
  $("ov-intersection").addEventListener("change", renderPhaseChoices);
  $("ov-cycle").addEventListener("input", () => { $("ov-cycle").dataset.touched = "1"; });
  $("ov-plan-fill").addEventListener("click", fillPlan);
  $("ov-expiry").addEventListener("focus", () => { $("ov-until-time").checked = true; });
  $("ov-minutes").addEventListener("focus", () => { $("ov-until-duration").checked = true; });
  $("cancel-form").addEventListener("submit", submitCancel);
  $("cancel-back").addEventListener("click", () => $("cancel-dialog").close());
  $("audit-filter").addEventListener("change", () => refresh());
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.token) refresh();
  });
  showKind();
  const remembered = sessionStorage.getItem(TOKEN_KEY);
  if (remembered) signIn(remembered, { remembered: true });
  else $("token").focus();
}

start();
