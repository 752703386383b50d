// The dashboard's shell: sign-in, the router (#/path), the live streams, and what every view shares.
import { api, ApiError, get, stream } from "./api.js";
import { CLUSTER_KINDS } from "./cluster.js";
import { EVENT_KINDS, h } from "./format.js";
import { VIEWS } from "./views.js";

const SAMPLE_POINTS = 60;

export const app = {
  session: null,
  services: new Map(), // name -> the API's service row, plus .fetchedAt
  samples: new Map(), // name -> {t: [], cpu: [], rss: []}
  view: null,
  closeStreams: [],
  generation: new Map(), // name -> counter: a slower answer never overwrites a newer one
};

const $ = (sel) => document.querySelector(sel);

// -- theme ----------------------------------------------------------------------------------
function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}
applyTheme(localStorage.getItem("supervise-theme"));
function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  localStorage.setItem("supervise-theme", next);
  applyTheme(next);
}

// -- confirmation and actions -----------------------------------------------------------------
export function confirmAction(text) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  $("#confirm-ok").focus();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

// Run `call` (an API request); show its outcome in `out`; `confirmText` first asks.
export async function act(out, label, call, confirmText) {
  if (confirmText && !(await confirmAction(confirmText))) {
    out.textContent = `${label}: not done.`;
    out.className = "result muted";
    return null;
  }
  out.textContent = `${label}…`;
  out.className = "result";
  try {
    const result = await call();
    out.textContent = `${label}: done.`;
    out.className = "result ok";
    return result;
  } catch (e) {
    out.textContent = `${label}: ${e instanceof ApiError ? `${e.status} — ${e.message}` : e.message}`;
    out.className = "result bad";
    return null;
  }
}

export function can(what) {
  return Boolean(app.session?.can?.includes(what));
}

// -- data kept for every view ------------------------------------------------------------------
export async function refreshService(name) {
  const gen = (app.generation.get(name) || 0) + 1;
  app.generation.set(name, gen);
  try {
    const got = await get(`/services/${encodeURIComponent(name)}`);
    if (app.generation.get(name) !== gen) return;
    const row = got.services[0];
    if (row) app.services.set(name, { ...row, fetchedAt: Date.now() });
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) app.services.delete(name);
    else throw e;
  }
  app.view?.onService?.(name);
}

async function loadServices() {
  const got = await get("/services");
  const now = Date.now();
  app.services = new Map(got.services.map((s) => [s.name, { ...s, fetchedAt: now }]));
}

async function loadSamples() {
  const got = await get(`/samples?points=${SAMPLE_POINTS}`);
  app.samples = new Map(Object.entries(got.services));
}

function onSample(data) {
  for (const [name, [cpu, rss]] of Object.entries(data.services)) {
    const s = app.samples.get(name) || { t: [], cpu: [], rss: [] };
    s.t.push(data.t);
    s.cpu.push(cpu);
    s.rss.push(rss);
    if (s.t.length > SAMPLE_POINTS) for (const k of ["t", "cpu", "rss"]) s[k].shift();
    app.samples.set(name, s);
    const row = app.services.get(name);
    if (row) Object.assign(row, { cpu_percent: cpu, rss_bytes: rss });
  }
  app.view?.onSample?.();
}

const pending = new Map();
function onEvent(event) {
  const name = CLUSTER_KINDS.includes(event.kind) ? null : event.service; // "cluster" is a topic, not a service
  if (event.kind === "state" && app.services.has(name)) {
    // The new state is shown at once; the rest of the row follows from a fetch.
    const row = app.services.get(name);
    row.state = event.to;
    if (event.pid !== undefined) row.pid = event.pid;
    app.view?.onService?.(name);
  }
  if (name && !pending.has(name)) {
    pending.set(name, setTimeout(() => {
      pending.delete(name);
      refreshService(name).catch(() => {});
    }, 100));
  }
  if (["state", "fatal"].includes(event.kind)) scheduleHealth();
  app.view?.onEvent?.(event);
}

let healthTimer = null;
function scheduleHealth() {
  clearTimeout(healthTimer);
  healthTimer = setTimeout(loadHealth, 300);
}
async function loadHealth() {
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const body = await response.json();
    const pill = $("#health");
    pill.textContent = body.healthy ? "healthy" : "unhealthy";
    pill.className = `pill ${body.healthy ? "tone-ok" : "tone-bad"}`;
    pill.title = `${body.services.running} of ${body.services.total} services up; supervisor ${app.session?.version || ""}`;
  } catch {
    $("#health").textContent = "unreachable";
  }
  const failing = [...app.services.values()].filter((s) => s.state === "FATAL").length;
  const count = $("#failure-count");
  count.hidden = failing === 0;
  count.textContent = String(failing);
}

function setLive(state) {
  const el = $("#live");
  el.dataset.state = state;
  el.title = state === "live" ? "live: updates arrive as they happen" : `updates ${state}`;
}

function openStreams() {
  for (const close of app.closeStreams) close();
  const handlers = Object.fromEntries([...EVENT_KINDS, ...CLUSTER_KINDS].map((k) => [k, onEvent]));
  handlers.missed = () => loadServices().then(() => app.view?.onService?.(null));
  app.closeStreams = [stream("/events", handlers, setLive), stream("/samples/stream", { sample: onSample })];
}

// The tab is shown only in cluster mode (a tenant's token gets 404: nodes are not a tenant's).
async function detectCluster() {
  const tab = $("#cluster-tab");
  try {
    tab.hidden = !(await get("/cluster")).enabled;
  } catch {
    tab.hidden = true;
  }
  tab.dataset.mode = tab.hidden ? "off" : "on";
}

// -- sign-in and routing ----------------------------------------------------------------------
function showSignIn(message) {
  for (const close of app.closeStreams) close();
  app.closeStreams = [];
  app.session = null;
  $("header.top").hidden = true;
  const error = h("p", { class: "result bad", role: "alert", id: "sign-in-error" }, message || "");
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "current-password", required: true,
    placeholder: "svt_…", spellcheck: "false",
  });
  const form = h(
    "form",
    { class: "card sign-in", id: "sign-in" },
    h("h1", {}, "supervise"),
    h("p", { class: "muted" }, "Sign in with an API token (", h("code", {}, "supervise token create NAME --role viewer"), ")."),
    h("label", { for: "token" }, "Token"),
    input,
    h("button", { type: "submit" }, "Sign in"),
    error,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("POST", "/session", { token: input.value });
      input.value = "";
      await start();
    } catch (err) {
      error.textContent = err.status === 401 ? "That token is unknown, revoked or expired." : err.message;
    }
  });
  $("#main").replaceChildren(form);
  input.focus();
}

async function start() {
  try {
    app.session = await get("/session");
  } catch {
    showSignIn();
    return;
  }
  const s = app.session;
  $("#who").textContent = `${s.name} · ${s.role}${s.tenant ? ` · ${s.tenant}` : ""}`;
  $("#version").textContent = `v${s.version}`;
  $("header.top").hidden = false;
  await Promise.all([loadServices(), loadSamples().catch(() => {})]);
  openStreams();
  loadHealth();
  detectCluster();
  route();
}

function route() {
  if (!app.session) return;
  const [path, search] = (location.hash.slice(1) || "/").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const key = parts[0] || "overview";
  const view = VIEWS[key] || VIEWS.overview;
  app.view?.leave?.();
  app.view = view;
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.toggleAttribute("aria-current", a.dataset.nav === (view.nav || key));
  }
  const main = $("#main");
  main.replaceChildren();
  document.title = `${view.title(parts)} · supervise`;
  view.render(main, parts.slice(1), new URLSearchParams(search || ""));
}

api.onUnauthorized = () => {
  if (app.session) showSignIn("The session ended (the token was revoked or has expired). Sign in again.");
};

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#theme").addEventListener("click", toggleTheme);
  $("#sign-out").addEventListener("click", async () => {
    await api("DELETE", "/session").catch(() => {});
    showSignIn("Signed out.");
  });
  start();
});
