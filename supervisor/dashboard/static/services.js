// The overview and a service's page.
import { get, post, stream } from "./api.js";
import { act, app, can, refreshService } from "./app.js";
import { badge, bytes, chart, duration, h, percent, relative, sparkline, triggerWords, when } from "./format.js";
import { empty, enc, isJob, link, result, section, table, ticker, uptimeOf } from "./ui.js";

const SERVICE_STATES = ["RUNNING", "STARTING", "BACKOFF", "PAUSED", "STOPPING", "STOPPED", "EXITED", "FATAL"];

// -- overview -------------------------------------------------------------------------------------
function serviceRow(name) {
  const tr = h("tr", { dataset: { service: name } });
  fillServiceRow(tr, app.services.get(name));
  return tr;
}

function fillServiceRow(tr, s) {
  const samples = app.samples.get(s.name) || { cpu: [], rss: [] };
  tr.dataset.state = s.state;
  tr.replaceChildren(
    h("td", { class: "state" }, badge(s.state)),
    h("th", { scope: "row" }, link(`#/service/${enc(s.name)}`, s.name)),
    h("td", { class: "num pid" }, s.pid ?? "—"),
    h("td", { class: "num uptime" }, duration(uptimeOf(s))),
    h("td", { class: "num restarts" }, s.restarts ?? 0),
    h("td", { class: "metric cpu" }, h("div", {}, h("span", { class: "num" }, percent(s.pid ? s.cpu_percent : null)),
      sparkline(s.pid ? samples.cpu : [], { label: `CPU of ${s.name}` }))),
    h("td", { class: "metric rss" }, h("div", {}, h("span", { class: "num" }, bytes(s.pid ? s.rss_bytes : null)),
      sparkline(s.pid ? samples.rss : [], { label: `memory of ${s.name}` }))),
  );
}

function jobRow(s) {
  const sch = s.schedule;
  const last = sch.last_run;
  return h(
    "tr",
    { dataset: { job: s.name } },
    h("td", { class: "state" }, sch.paused ? badge("paused", "run") : badge(s.state)),
    h("th", { scope: "row" }, link(`#/job/${enc(s.name)}`, s.name)),
    h("td", {}, triggerWords(sch.trigger)),
    h("td", {}, sch.next_fire ? h("span", { title: when(sch.next_fire) }, relative(sch.next_fire)) : "—"),
    h("td", {}, last ? link(`#/run/${last.run_id}`, badge(last.state, "run")) : "—"),
    h("td", { class: "num" }, sch.running ?? 0),
  );
}

const overview = {
  title: () => "Overview",
  render(main) {
    const services = [...app.services.values()];
    const up = services.filter((s) => ["RUNNING", "SCHEDULED"].includes(s.state)).length;
    const fatal = services.filter((s) => s.state === "FATAL").length;
    const filterName = h("input", { type: "search", id: "filter-name", placeholder: "Filter by name", "aria-label": "Filter by name" });
    const filterState = h("select", { id: "filter-state", "aria-label": "Filter by state" },
      h("option", { value: "" }, "All states"), SERVICE_STATES.map((x) => h("option", { value: x }, x)));
    this.summary = h("p", { class: "summary" });
    this.services = h("tbody");
    this.jobs = h("tbody");
    const apply = () => {
      const needle = filterName.value.trim().toLowerCase();
      for (const tr of main.querySelectorAll("tr[data-service], tr[data-job]")) {
        const name = tr.dataset.service || tr.dataset.job;
        const state = app.services.get(name)?.state;
        tr.hidden = (needle && !name.includes(needle)) || (filterState.value && state !== filterState.value);
      }
    };
    this.apply = apply;
    filterName.addEventListener("input", apply);
    filterState.addEventListener("change", apply);
    main.append(
      h("div", { class: "head" }, h("h1", {}, "Overview"), this.summary, h("div", { class: "filters" }, filterName, filterState)),
      section("Services", table(["State", "Name", "PID", "Uptime", "Restarts", "CPU", "Memory"], [], { id: "services" })),
      section("Jobs", table(["State", "Name", "Trigger", "Next", "Last run", "Running"], [], { id: "jobs" })),
    );
    main.querySelector("#services tbody").replaceWith(this.services);
    main.querySelector("#jobs tbody").replaceWith(this.jobs);
    this.services.append(...services.filter((s) => !isJob(s)).map((s) => serviceRow(s.name)));
    this.jobs.append(...services.filter(isJob).map(jobRow));
    if (!this.services.children.length) this.services.append(h("tr", {}, h("td", { colspan: 7 }, empty("No services."))));
    if (!this.jobs.children.length) this.jobs.append(h("tr", {}, h("td", { colspan: 6 }, empty("No jobs."))));
    this.writeSummary(up, services.length, fatal);
    this.stop = ticker(() => {
      for (const tr of this.services.querySelectorAll("tr[data-service]")) {
        const s = app.services.get(tr.dataset.service);
        if (s) tr.querySelector(".uptime").textContent = duration(uptimeOf(s));
      }
    });
  },
  writeSummary(up, total, fatal) {
    this.summary.replaceChildren(`${up} of ${total} up`, fatal ? h("span", { class: "tone-text-bad" }, ` · ${fatal} FATAL`) : "");
  },
  onService(name) {
    if (name === null) return route();
    const s = app.services.get(name);
    const tr = this.services.querySelector(`tr[data-service="${CSS.escape(name)}"]`);
    const jr = this.jobs.querySelector(`tr[data-job="${CSS.escape(name)}"]`);
    if (!s) {
      tr?.remove();
      jr?.remove();
    } else if (isJob(s)) {
      const fresh = jobRow(s);
      if (jr) jr.replaceWith(fresh);
      else this.jobs.append(fresh);
    } else if (tr) fillServiceRow(tr, s);
    else this.services.append(serviceRow(name));
    const all = [...app.services.values()];
    this.writeSummary(all.filter((x) => ["RUNNING", "SCHEDULED"].includes(x.state)).length, all.length,
      all.filter((x) => x.state === "FATAL").length);
    this.apply();
  },
  onSample() {
    for (const tr of this.services.querySelectorAll("tr[data-service]")) {
      const s = app.services.get(tr.dataset.service);
      if (s) fillServiceRow(tr, s);
    }
  },
  leave() {
    this.stop?.();
  },
};

function route() {
  window.dispatchEvent(new HashChangeEvent("hashchange"));
}

// -- one service ----------------------------------------------------------------------------------
function parseSse(text) {
  const out = [];
  for (const block of text.split("\n\n")) {
    const data = block.split("\n").find((l) => l.startsWith("data: "));
    if (data) out.push(JSON.parse(data.slice(6)));
  }
  return out;
}

function eventLine(e) {
  const detail = Object.entries(e)
    .filter(([k]) => !["v", "seq", "ts", "service", "kind", "message"].includes(k))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" ");
  return h("li", {}, h("time", {}, new Date(e.ts * 1000).toLocaleTimeString()), " ", h("strong", {}, e.kind), " ",
    h("span", { class: "muted" }, (e.message || detail).slice(0, 300)));
}

const service = {
  nav: "overview",
  title: (parts) => parts[1] || "Service",
  render(main, [name]) {
    this.name = name;
    const s = app.services.get(name);
    if (!s) {
      main.append(h("h1", {}, name), empty("No such service (or it is not yours to see)."));
      return;
    }
    this.out = result();
    this.head = h("div", { class: "head" });
    this.facts = h("dl", { class: "facts" });
    this.charts = h("div", { class: "charts" });
    this.events = h("ol", { class: "events", id: "events" });
    this.log = h("pre", { class: "log", id: "log", tabindex: 0, "aria-label": `output of ${name}` });
    this.config = h("pre", { class: "config" });
    const actions = h("div", { class: "actions", id: "actions" });
    if (can("act")) {
      const button = (label, action, confirmText) =>
        h("button", {
          type: "button", class: confirmText ? "danger" : "", dataset: { action },
          onclick: async () => {
            await act(this.out, `${label} ${name}`, () => post(`/services/${enc(name)}/${action}`), confirmText);
            await refreshService(name);
          },
        }, label);
      actions.append(
        button("Start", "start"),
        button("Stop", "stop", `Stop ${name}? Its workers are signalled and it stays down until started.`),
        button("Restart", "restart", `Restart ${name}? Its worker is stopped and a new one spawned.`),
        button("Pause", "pause"),
        button("Resume", "resume"),
      );
    }
    if (can("manage")) {
      const count = h("input", { type: "number", min: 1, max: 1000, value: 1, id: "scale-count", "aria-label": "processes" });
      actions.append(h("span", { class: "scale" }, count, h("button", {
        type: "button", class: "danger", dataset: { action: "scale" },
        onclick: () => act(this.out, `Scale ${name} to ${count.value}`,
          () => post(`/services/${enc(name)}/scale`, { processes: Number(count.value) }),
          `Run ${count.value} processes of ${name}? Extra workers are stopped.`),
      }, "Scale")));
    }
    main.append(
      this.head,
      h("div", { class: "grid" }, section("Now", this.facts, actions, this.out), section("CPU and memory", this.charts)),
      h("div", { class: "grid" }, section("Recent events", this.events), section("Output", this.log)),
      section("Configuration", h("p", { class: "muted" }, "As the daemon holds it (values of env and headers hidden)."), this.config),
    );
    this.fill();
    this.stop = ticker(() => this.fillFacts());
    get(`/services/${enc(name)}/config`).then((c) => (this.config.textContent = JSON.stringify(c.table, null, 2))).catch(() => {});
    fetch(`/api/v1/events?service=${enc(name)}&since=0&follow=false`, { credentials: "same-origin" })
      .then((r) => r.text())
      .then((text) => {
        for (const e of parseSse(text).slice(-50).reverse()) this.events.append(eventLine(e));
      });
    this.closeLog = stream(`/services/${enc(name)}/logs/stream?lines=200`, {
      lines: (lines) => {
        const stick = this.log.scrollTop + this.log.clientHeight >= this.log.scrollHeight - 8;
        this.log.append(lines.map((l) => l + "\n").join(""));
        while (this.log.childNodes.length > 1000) this.log.firstChild.remove();
        if (stick) this.log.scrollTop = this.log.scrollHeight;
      },
    });
  },
  fill() {
    const s = app.services.get(this.name);
    if (!s) return;
    this.head.replaceChildren(h("h1", {}, this.name), badge(s.state),
      isJob(s) ? link(`#/job/${enc(this.name)}`, "its schedule →") : "");
    this.fillFacts();
    const samples = app.samples.get(this.name) || { cpu: [], rss: [] };
    this.charts.replaceChildren(
      chart(samples.cpu, { title: "CPU", format: percent }),
      chart(samples.rss, { title: "Memory", format: bytes }),
    );
  },
  fillFacts() {
    const s = app.services.get(this.name);
    if (!s) return;
    const exit = s.last_exit ? `${s.last_exit.cause}${s.last_exit.code !== null ? ` (code ${s.last_exit.code})` : ""}${s.last_exit.signal ? ` (signal ${s.last_exit.signal})` : ""}` : "—";
    const facts = [
      ["State", s.state], ["PID", s.pid ?? "—"], ["Uptime", duration(uptimeOf(s))], ["Restarts", s.restarts ?? 0],
      ["CPU", percent(s.pid ? s.cpu_percent : null)], ["Memory", bytes(s.pid ? s.rss_bytes : null)],
      ["Last exit", exit], ["Tenant", s.tenant ?? "—"],
    ];
    if (s.last_error) facts.push(["Last error", s.last_error.split("\n").filter(Boolean).at(-1)]);
    this.facts.replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { fact: k.toLowerCase().replace(" ", "-") } }, v)]));
  },
  onService(name) {
    if (name === this.name || name === null) this.fill();
  },
  onSample() {
    this.fill();
  },
  onEvent(e) {
    if (e.service !== this.name || !this.events) return;
    this.events.prepend(eventLine(e));
    while (this.events.children.length > 50) this.events.lastChild.remove();
  },
  leave() {
    this.stop?.();
    this.closeLog?.();
  },
};

export const SERVICE_VIEWS = { overview, service };
