// The dashboard's only way into the daemon: /api/v1, with the session cookie.
// State-changing requests echo the CSRF cookie in X-CSRF-Token (double submit).

const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function csrf() {
  const found = document.cookie.split("; ").find((c) => c.startsWith("supervise_csrf="));
  return found ? decodeURIComponent(found.slice("supervise_csrf=".length)) : "";
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(BASE + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!response.ok) {
    if (response.status === 401 && api.onUnauthorized) api.onUnauthorized();
    throw new ApiError(response.status, data);
  }
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);

// A Server-Sent Events stream of the API: EventSource sends the cookie (same origin) and
// Last-Event-ID on reconnects by itself. Returns a function that closes it.
export function stream(path, handlers, onState) {
  const source = new EventSource(BASE + path);
  for (const [kind, handler] of Object.entries(handlers)) {
    source.addEventListener(kind, (e) => {
      let data = null;
      try {
        data = JSON.parse(e.data);
      } catch {
        return;
      }
      handler(data, kind);
    });
  }
  if (onState) {
    source.onopen = () => onState("live");
    source.onerror = () => onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  }
  return () => source.close();
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}
