// Formatting and small drawings: pure functions of their arguments.

export const EVENT_KINDS = [
  "state", "spawned", "exited", "restarting", "fatal", "hung", "killed", "memory_exceeded", "start_timeout",
  "reloading", "stopping", "spawn_failed", "error", "run_started", "run_progress", "run_finished", "run_skipped",
  "run_requeued", "missed",
];

// Element builder: attributes by name, children as nodes or text (never parsed as HTML).
export function h(tag, attrs, ...children) {
  const el = document.createElementNS(
    tag === "svg" || tag === "polyline" || tag === "path" ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml",
    tag,
  );
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SERVICE_TONE = {
  RUNNING: "ok", SCHEDULED: "info", STARTING: "busy", STOPPING: "busy", BACKOFF: "warn", PAUSED: "paused",
  FATAL: "bad", EXITED: "muted", STOPPED: "muted",
};
const RUN_TONE = {
  succeeded: "ok", running: "busy", starting: "busy", pending: "muted", due: "muted", queued: "muted",
  buffered: "muted", scheduled: "info", retry_wait: "warn", skipped: "warn", failed: "bad", timed_out: "bad",
  lost: "bad", cancelled: "muted", terminated: "muted",
};

export function badge(state, kind = "service") {
  const word = String(state ?? "—");
  const tone = (kind === "service" ? SERVICE_TONE[word] : RUN_TONE[word]) || "muted";
  return h("span", { class: `badge tone-${tone}`, "data-state": word }, word.replace("_", " "));
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  let s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  s %= 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${m}m`;
  return `${m}m ${s}s`;
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value < 1000) return `${value} ms`;
  return value < 60000 ? `${(value / 1000).toFixed(1)} s` : duration(value / 1000);
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

export function percent(n) {
  return n === null || n === undefined ? "—" : `${n.toFixed(n < 10 ? 1 : 0)}%`;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

export function relative(iso) {
  if (!iso) return "";
  const delta = (new Date(iso).getTime() - Date.now()) / 1000;
  return delta >= 0 ? `in ${duration(delta)}` : `${duration(-delta)} ago`;
}

const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS = ["", "January", "February", "March", "April", "May", "June", "July", "August", "September",
  "October", "November", "December"];
const UNITS = { ms: "millisecond", s: "second", m: "minute", h: "hour", d: "day", w: "week" };

function plural(n, unit) {
  return n === 1 ? unit : `${n} ${unit}s`;
}

function list(words) {
  return words.length < 2 ? words.join("") : `${words.slice(0, -1).join(", ")} and ${words.at(-1)}`;
}

// "cron \"0 2 * * *\" in Asia/Kolkata (…)" -> "every day at 02:00 Asia/Kolkata"; "every 20s" -> "every 20 seconds".
export function triggerWords(text) {
  if (!text) return "—";
  const every = /^every ((?:\d+(?:ms|s|m|h|d|w))+)(.*)$/.exec(text);
  if (every) {
    const parts = [...every[1].matchAll(/(\d+)(ms|s|m|h|d|w)/g)].map((p) => plural(Number(p[1]), UNITS[p[2]]));
    return `every ${parts.join(" ")}${every[2]}`;
  }
  const cron = /^cron "([^"]+)"(?: in ([^ (]+))?/.exec(text);
  if (!cron) return text;
  const zone = cron[2] ? ` ${cron[2]}` : "";
  const f = cron[1].trim().split(/\s+/);
  if (f.length !== 5) return text;
  const [mi, ho, dom, mon, dow] = f;
  const num = (x) => /^\d+$/.test(x);
  const at = num(mi) && num(ho) ? `at ${ho.padStart(2, "0")}:${mi.padStart(2, "0")}` : null;
  if (mi === "*" && ho === "*" && dom === "*" && mon === "*" && dow === "*") return "every minute";
  const step = /^\*\/(\d+)$/.exec(mi);
  if (step && ho === "*" && dom === "*" && mon === "*" && dow === "*") return `every ${plural(Number(step[1]), "minute")}`;
  if (num(mi) && ho === "*" && dom === "*" && mon === "*" && dow === "*") return `every hour at minute ${mi}`;
  if (!at) return `cron "${cron[1]}"${zone}`;
  if (dom === "*" && mon === "*" && dow === "*") return `every day ${at}${zone}`;
  if (dom === "*" && mon === "*" && /^[0-7](,[0-7])*$/.test(dow)) {
    return `every ${list(dow.split(",").map((d) => DAYS[Number(d) % 7]))} ${at}${zone}`;
  }
  if (dom === "*" && mon === "*" && dow === "1-5") return `every weekday ${at}${zone}`;
  if (num(dom) && mon === "*" && dow === "*") return `on day ${dom} of every month ${at}${zone}`;
  if (num(dom) && num(mon) && dow === "*") return `every year on ${MONTHS[Number(mon)]} ${dom} ${at}${zone}`;
  return `cron "${cron[1]}"${zone}`;
}

// A sparkline: the values as a polyline in a w×h box (the newest on the right).
export function sparkline(values, { w = 88, h: height = 22, label = "" } = {}) {
  const svg = h("svg", {
    viewBox: `0 0 ${w} ${height}`, width: w, height, class: "spark", role: "img", "aria-label": label,
    preserveAspectRatio: "none",
  });
  if (!values || values.length < 2) return svg;
  const max = Math.max(...values), min = Math.min(...values, max === 0 ? 0 : Infinity);
  const span = max - min || 1;
  const step = w / (values.length - 1);
  const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - ((v - min) / span) * (height - 4)).toFixed(1)}`);
  svg.append(h("polyline", { points: pts.join(" "), fill: "none", "stroke-width": 1.5, "vector-effect": "non-scaling-stroke" }));
  return svg;
}

// A larger line chart with its range written out.
export function chart(values, { title, format, w = 560, h: height = 120 }) {
  const last = values.length ? values.at(-1) : null;
  const max = values.length ? Math.max(...values) : null;
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, h("span", {}, title), h("span", { class: "muted" }, `now ${format(last)} · max ${format(max)}`)),
    sparkline(values, { w, h: height, label: `${title} over the last minutes` }),
  );
}
