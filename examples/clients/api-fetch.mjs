// The supervise HTTP API from JavaScript fetch (docs/api.md): Node.js 18+ or a browser.
//
//   SUPERVISE_API=http://127.0.0.1:9180 SUPERVISE_TOKEN=svt_... node api-fetch.mjs https://example.com/hook
//
// Over HTTPS with a self-signed http_tls_cert, give Node its CA: NODE_EXTRA_CA_CERTS=/path/ca.pem.
// SUPERVISE_NOTIFY_URL=https://example.com/done adds a webhook told when the task has run.
//
// Errors are application/problem+json: `errors[].pointer` names the field that is wrong.

const base = `${process.env.SUPERVISE_API ?? "http://127.0.0.1:9180"}/api/v1`;
const token = process.env.SUPERVISE_TOKEN;
if (!token) throw new Error("set SUPERVISE_TOKEN (supervise token create NAME --role operator)");

class ApiError extends Error {
  constructor(problem) {
    super(`${problem.status} ${problem.title}: ${problem.detail ?? ""}`);
    this.problem = problem; // {type, title, status, detail, instance, errors: [{pointer, detail}]}
  }
}

async function api(method, path, { body, idempotencyKey } = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  const response = await fetch(`${base}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const payload = await response.json();
  if (!response.ok) throw new ApiError(payload);
  return { status: response.status, location: response.headers.get("Location"), payload };
}

const FINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "terminated", "lost", "skipped"]);

async function main(url) {
  const delayMs = 1000 * Number(process.env.SUPERVISE_DELAY_S ?? 5);
  const at = new Date(Date.now() + delayMs).toISOString(); // toISOString ends in Z: an offset, as required
  const notifyUrl = process.env.SUPERVISE_NOTIFY_URL;
  const notify = notifyUrl ? { webhook: notifyUrl, on: ["success", "failure", "retries_exhausted"] } : undefined;
  const created = await api("POST", "/tasks", {
    body: { url, method: "POST", body: { hello: "world" }, at, retries: { max: 2 }, notify },
    idempotencyKey: `demo-${Date.now()}`, // the same key and body again returns this same task
  });
  console.log("created", created.status, created.location, created.payload.state);

  let task = created.payload;
  while (!FINAL.has(task.state)) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    task = (await api("GET", `/tasks/${task.id}`)).payload;
    console.log("state", task.state);
  }
  console.log("result", task.result, task.error ?? "");
  while (notify && task.notify.state === "waiting") {
    await new Promise((resolve) => setTimeout(resolve, 1000)); // its message is sent once the task has ended
    task = (await api("GET", `/tasks/${task.id}`)).payload;
  }
  if (notify) console.log("notify", task.notify.state, task.notify.event);

  const runs = (await api("GET", "/runs?limit=10")).payload;
  console.log("newest runs", runs.runs.map((r) => `${r.service} ${r.state}`));

  try {
    await api("POST", "/tasks", { body: { url: "ftp://example.com/" } });
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    console.log("refused:", e.problem.errors.map((x) => `${x.pointer}: ${x.detail}`));
  }
}

await main(process.argv[2] ?? "https://example.com/");
