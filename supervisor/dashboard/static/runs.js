// Jobs, runs, failures first, and tasks.
import { api, get, post, query } from "./api.js";
import { act, app, can } from "./app.js";
import { badge, h, ms, relative, triggerWords, when } from "./format.js";
import { debounce, empty, enc, isJob, link, result, section, table } from "./ui.js";

const RUN_STATES = ["running", "pending", "queued", "succeeded", "failed", "timed_out", "lost", "cancelled",
  "terminated", "skipped", "retry_wait"];
const CANCELLABLE = new Set(["pending", "due", "buffered", "queued", "starting", "running", "retry_wait"]);
const RETRYABLE = new Set(["failed", "timed_out", "lost", "cancelled", "terminated"]);

// -- jobs -------------------------------------------------------------------------------------------
const jobs = {
  title: () => "Jobs",
  async render(main) {
    this.body = h("div");
    main.append(h("div", { class: "head" }, h("h1", {}, "Jobs")), this.body);
    await this.load();
  },
  async load() {
    const got = await get("/jobs");
    const rows = got.jobs.map((j) => h("tr", { dataset: { job: j.name } },
      h("td", {}, j.paused ? badge("paused", "run") : badge("scheduled", "run")),
      h("th", { scope: "row" }, link(`#/job/${enc(j.name)}`, j.name)),
      h("td", {}, triggerWords(j.trigger)),
      h("td", {}, j.next_fire ? `${when(j.next_fire)} (${relative(j.next_fire)})` : "—"),
      h("td", {}, j.last_run ? link(`#/run/${j.last_run.run_id}`, badge(j.last_run.state, "run")) : "—"),
      h("td", { class: "num" }, j.runs_so_far)));
    this.body.replaceChildren(rows.length
      ? section("Scheduled", table(["State", "Name", "Trigger", "Next fire", "Last run", "Runs"], rows, { id: "jobs" }))
      : empty("No jobs this token can see."));
  },
  onEvent: debounce(function (e) {
    if (e.kind?.startsWith("run_")) jobs.load();
  }, 300),
};

function runRows(runs, { showJob = true } = {}) {
  return runs.map((r) => h("tr", { dataset: { run: r.run_id } },
    h("td", {}, badge(r.state, "run")),
    showJob ? h("td", {}, link(`#/job/${enc(r.service)}`, r.service)) : null,
    h("td", {}, link(`#/run/${r.run_id}`, r.run_id.slice(0, 8), { class: "mono" })),
    h("td", {}, r.origin),
    h("td", { class: "num" }, r.attempt),
    h("td", {}, when(r.created_at)),
    h("td", { class: "num" }, ms(r.duration_ms)),
    h("td", { class: "muted" }, r.reason ?? "")));
}

const RUN_HEADERS = ["State", "Job", "Run", "Origin", "Attempt", "Created", "Duration", "Reason"];

const job = {
  nav: "jobs",
  title: (parts) => parts[1] || "Job",
  async render(main, [name]) {
    this.name = name;
    this.out = result();
    this.head = h("div", { class: "head" });
    this.facts = h("dl", { class: "facts" });
    this.runs = h("div");
    const actions = h("div", { class: "actions", id: "actions" });
    if (can("act")) {
      const button = (label, path, confirmText, body) => h("button", {
        type: "button", class: confirmText ? "danger" : "", dataset: { action: path },
        onclick: async () => {
          const got = await act(this.out, `${label} ${name}`, () => post(`/jobs/${enc(name)}/${path}`, body), confirmText);
          if (got?.run_id) this.out.append(" ", link(`#/run/${got.run_id}`, `run ${got.run_id.slice(0, 8)}`));
          if (got?.skipping) this.out.append(` The occurrence of ${when(got.skipping)} will be skipped.`);
          await this.load();
        },
      }, label);
      this.pause = button("Pause", "pause");
      this.resume = button("Resume", "resume");
      actions.append(this.pause, this.resume, button("Run now", "run", null, {}),
        button("Skip next", "skip", `Skip the next occurrence of ${name}?`));
    }
    main.append(this.head, h("div", { class: "grid" }, section("Schedule", this.facts, actions, this.out),
      section("Next fire times", this.next = h("ol", { class: "plain" }))), section("Last runs", this.runs));
    await this.load();
  },
  async load() {
    let j;
    try {
      j = await get(`/jobs/${enc(this.name)}`);
    } catch (e) {
      this.head.replaceChildren(h("h1", {}, this.name));
      this.facts.replaceChildren(empty(e.status === 404 ? "No such job (or it is not yours to see)." : e.message));
      return;
    }
    this.head.replaceChildren(h("h1", {}, this.name), j.paused ? badge("paused", "run") : badge("scheduled", "run"),
      link(`#/service/${enc(this.name)}`, "its service →"));
    if (this.pause) {
      this.pause.hidden = j.paused;
      this.resume.hidden = !j.paused;
    }
    const facts = [["Trigger", triggerWords(j.trigger)], ["As written", j.trigger], ["Paused", j.paused ? "paused" : "no"],
      ["Running", j.running], ["Runs so far", j.runs_so_far], ["Tenant", j.tenant ?? "—"]];
    this.facts.replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { fact: k.toLowerCase() } }, v)]));
    const fires = j.next_fires?.length ? j.next_fires : j.next_fire ? [j.next_fire] : [];
    this.next.replaceChildren(...(fires.length ? fires.map((t) => h("li", {}, `${when(t)} (${relative(t)})`)) : [h("li", { class: "muted" }, j.paused ? "paused: none" : "none")]));
    const runs = await get(`/runs${query({ job: this.name, limit: 10 })}`);
    this.runs.replaceChildren(runs.runs.length
      ? table(RUN_HEADERS.filter((x) => x !== "Job"), runRows(runs.runs, { showJob: false }))
      : empty("No runs yet."));
  },
  onEvent(e) {
    if (e.service === this.name) this.reload();
  },
  reload: debounce(() => job.load(), 200),
};

// -- runs -------------------------------------------------------------------------------------------
const SINCE = { "": "any time", "1h": "last hour", "24h": "last 24 hours", "7d": "last 7 days" };
const SINCE_S = { "1h": 3600, "24h": 86400, "7d": 604800 };

const runs = {
  title: () => "Runs",
  async render(main, _parts, params) {
    this.params = params;
    this.cursors = [];
    const select = (id, label, options, value) => h("select", { id, name: id, "aria-label": label },
      options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)));
    const jobNames = [...app.services.values()].filter(isJob).map((s) => s.name).sort();
    const form = h("form", { class: "filters", id: "run-filters" },
      select("job", "Job", [["", "All jobs"], ...jobNames.map((n) => [n, n])], params.get("job") || ""),
      select("state", "State", [["", "All states"], ...RUN_STATES.map((s) => [s, s.replace("_", " ")])], params.get("state") || ""),
      select("since", "Since", Object.entries(SINCE), params.get("since") || ""));
    form.addEventListener("change", () => {
      const fd = new FormData(form);
      location.hash = "#/runs" + query(Object.fromEntries(fd.entries()));
    });
    this.body = h("div");
    this.pager = h("div", { class: "pager" });
    main.append(h("div", { class: "head" }, h("h1", {}, "Runs"), form), section("History", this.body, this.pager));
    await this.load(null);
  },
  async load(cursor) {
    const p = this.params;
    const since = SINCE_S[p.get("since")] ? new Date(Date.now() - SINCE_S[p.get("since")] * 1000).toISOString() : undefined;
    const page = await get(`/runs${query({ job: p.get("job"), state: p.get("state"), since, limit: 25, cursor })}`);
    this.cursor = cursor;
    this.body.replaceChildren(page.runs.length ? table(RUN_HEADERS, runRows(page.runs), { id: "runs" }) : empty("No runs match."));
    const newer = h("button", { type: "button", class: "ghost", disabled: !this.cursors.length, onclick: () => this.load(this.cursors.pop() ?? null) }, "← Newer");
    const older = h("button", { type: "button", class: "ghost", disabled: !page.next_cursor, onclick: () => {
      this.cursors.push(cursor);
      this.load(page.next_cursor);
    } }, "Older →");
    this.pager.replaceChildren(newer, older);
  },
  onEvent: debounce((e) => {
    if (e.kind?.startsWith("run_") && runs.cursor === null) runs.load(null);
  }, 300),
};

const run = {
  nav: "runs",
  title: (parts) => `Run ${(parts[1] || "").slice(0, 8)}`,
  async render(main, [id]) {
    this.id = id;
    this.out = result();
    this.head = h("div", { class: "head" });
    this.facts = h("dl", { class: "facts" });
    this.actions = h("div", { class: "actions", id: "actions" });
    this.detail = h("div");
    main.append(this.head, h("div", { class: "grid" }, section("Run", this.facts, this.actions, this.out), section("Arguments", this.args = h("pre"))), this.detail);
    await this.load();
  },
  async load() {
    let r;
    try {
      r = await get(`/runs/${enc(this.id)}`);
    } catch (e) {
      this.head.replaceChildren(h("h1", {}, "Run"), empty(e.status === 404 ? "No such run (or it is not yours to see)." : e.message));
      return;
    }
    this.head.replaceChildren(h("h1", {}, "Run ", h("span", { class: "mono" }, r.run_id.slice(0, 8))), badge(r.state, "run"));
    const facts = [["Job", link(`#/job/${enc(r.service)}`, r.service)], ["State", r.state], ["Reason", r.reason ?? "—"],
      ["Origin", r.origin], ["Attempt", r.attempt], ["Scheduled for", when(r.nominal_time)], ["Created", when(r.created_at)],
      ["Started", when(r.started_at)], ["Finished", when(r.finished_at)], ["Duration", ms(r.duration_ms)],
      ["Node", r.node ?? "this supervisor"], ["Run id", h("span", { class: "mono" }, r.run_id)]];
    this.facts.replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { fact: k.toLowerCase() } }, v)]));
    this.args.textContent = JSON.stringify(r.args, null, 2);
    this.actions.replaceChildren();
    if (can("act")) {
      if (CANCELLABLE.has(r.state)) {
        this.actions.append(h("button", { type: "button", class: "danger", dataset: { action: "cancel" }, onclick: async () => {
          await act(this.out, "Cancel the run", () => post(`/runs/${r.run_id}/cancel`), `Cancel run ${r.run_id.slice(0, 8)} of ${r.service}?`);
          await this.load();
        } }, "Cancel"));
      }
      if (RETRYABLE.has(r.state)) {
        this.actions.append(h("button", { type: "button", dataset: { action: "retry" }, onclick: async () => {
          const got = await act(this.out, "Retry", () => post(`/runs/${r.run_id}/retry`));
          if (got?.run_id) this.out.append(" ", link(`#/run/${got.run_id}`, `new run ${got.run_id.slice(0, 8)}`));
        } }, "Retry"));
      }
    }
    const parts = [];
    if (r.result !== null && r.result !== undefined) parts.push(section("Result", h("pre", {}, JSON.stringify(r.result, null, 2))));
    if (r.error) parts.push(section("Traceback", h("pre", { class: "traceback" }, r.error)));
    this.detail.replaceChildren(...parts);
  },
  onEvent(e) {
    if (e.run_id === this.id) this.reload();
  },
  reload: debounce(() => run.load(), 150),
};

// -- failures first ---------------------------------------------------------------------------------
const failures = {
  title: () => "Failures",
  async render(main) {
    this.body = h("div");
    main.append(h("div", { class: "head" }, h("h1", {}, "Failures"), h("p", { class: "summary" }, "FATAL services, and the last 24 hours of runs that failed, timed out, were lost or skipped.")), this.body);
    await this.load();
  },
  async load() {
    const since = new Date(Date.now() - 86400 * 1000).toISOString();
    const pages = await Promise.all(["failed", "timed_out", "lost", "skipped"].map((state) => get(`/runs${query({ state, since, limit: 100 })}`)));
    const bad = pages.slice(0, 3).flatMap((p) => p.runs).sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    const skipped = pages[3].runs;
    const fatal = [...app.services.values()].filter((s) => s.state === "FATAL");
    this.body.replaceChildren(
      section(`FATAL services (${fatal.length})`, fatal.length
        ? table(["State", "Name", "Restarts", "Last error"], fatal.map((s) => h("tr", { dataset: { service: s.name } },
          h("td", {}, badge(s.state)), h("th", { scope: "row" }, link(`#/service/${enc(s.name)}`, s.name)),
          h("td", { class: "num" }, s.restarts), h("td", { class: "muted" }, (s.last_error || "").split("\n").filter(Boolean).at(-1) || "—"))))
        : empty("None: every service is up or stopped on purpose.")),
      section(`Failed, timed out and lost runs (${bad.length})`, bad.length ? table(RUN_HEADERS, runRows(bad), { id: "failed-runs" }) : empty("None in the last 24 hours.")),
      section(`Skipped and missed occurrences (${skipped.length})`, skipped.length ? table(RUN_HEADERS, runRows(skipped)) : empty("None in the last 24 hours.")),
    );
  },
  onEvent: debounce((e) => {
    if (["run_finished", "run_skipped", "fatal", "state"].includes(e.kind)) failures.load();
  }, 500),
};

// -- tasks ------------------------------------------------------------------------------------------
const tasks = {
  title: () => "Tasks",
  async render(main) {
    this.cursors = [];
    this.out = result();
    this.body = h("div");
    this.pager = h("div", { class: "pager" });
    main.append(h("div", { class: "head" }, h("h1", {}, "Tasks"), h("p", { class: "summary" }, "One-shot URL calls (POST /api/v1/tasks) and their responses.")), this.out, section("Tasks", this.body, this.pager));
    await this.load(null);
  },
  async load(cursor) {
    const page = await get(`/tasks${query({ limit: 25, cursor })}`);
    const rows = page.tasks.map((t) => h("tr", { dataset: { task: t.id } },
      h("td", {}, badge(t.state, "run")),
      h("td", { class: "mono" }, `${t.method} ${t.url}`),
      h("td", {}, when(t.at)),
      h("td", { class: "num" }, t.attempts),
      h("td", {}, t.result ? h("details", {}, h("summary", {}, `HTTP ${t.result.status ?? "?"}`), h("pre", {}, typeof t.result.body === "string" ? t.result.body : JSON.stringify(t.result, null, 2))) : t.error ? h("span", { class: "tone-text-bad" }, t.error) : "—"),
      h("td", {}, t.run ? link(`#/run/${t.run.run_id}`, t.run.run_id.slice(0, 8), { class: "mono" }) : ""),
      h("td", {}, can("act") && t.state === "scheduled" ? h("button", { type: "button", class: "ghost danger", onclick: async () => {
        await act(this.out, "Cancel the task", () => fetchDelete(`/tasks/${t.id}`), `Cancel the call to ${t.url}?`);
        await this.load(this.cursor);
      } }, "Cancel") : "")));
    this.cursor = cursor;
    this.body.replaceChildren(rows.length ? table(["State", "Call", "At", "Attempts", "Response", "Run", ""], rows, { id: "tasks" }) : empty("No tasks."));
    this.pager.replaceChildren(
      h("button", { type: "button", class: "ghost", disabled: !this.cursors.length, onclick: () => this.load(this.cursors.pop() ?? null) }, "← Newer"),
      h("button", { type: "button", class: "ghost", disabled: !page.next_cursor, onclick: () => {
        this.cursors.push(cursor);
        this.load(page.next_cursor);
      } }, "Older →"));
  },
  onEvent: debounce((e) => {
    if (e.kind?.startsWith("run_") && e.service?.startsWith("api-tasks") && tasks.cursor === null) tasks.load(null);
  }, 300),
};

const fetchDelete = (path) => api("DELETE", path);

export const RUN_VIEWS = { jobs, job, runs, run, failures, tasks };
