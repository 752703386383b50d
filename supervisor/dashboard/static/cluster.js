// The cluster (GET /api/v1/cluster): nodes, the leader, placements; read again on every cluster event.
import { get } from "./api.js";
import { h } from "./format.js";
import { debounce, empty, section, table } from "./ui.js";

// The events the cluster agent publishes (service "cluster"); app.js adds them to the stream's kinds.
export const CLUSTER_KINDS = ["node_joined", "node_lost", "leader_changed", "lease_lost", "runs_rescued", "placement_taken"];

const ago = (s) => (s < 10 ? `${s.toFixed(1)} s ago` : `${Math.round(s)} s ago`);

const cluster = {
  title: () => "Cluster",
  async render(main) {
    this.summary = h("p", { class: "summary", id: "cluster-summary" });
    this.body = h("div");
    const refresh = h("button", { type: "button", class: "ghost", onclick: () => this.load() }, "Refresh");
    main.append(h("div", { class: "head" }, h("h1", {}, "Cluster"), this.summary, refresh), this.body);
    await this.load();
  },
  async load() {
    const got = await get("/cluster");
    if (!got.enabled) {
      this.summary.textContent = "";
      this.body.replaceChildren(empty("Cluster mode is off: this supervisor runs alone."));
      return;
    }
    const leader = got.leader?.node;
    this.summary.textContent = `This node: ${got.node} · leader: ${leader ? `${leader} (epoch ${got.leader.epoch})` : "none live"}`;
    const nodes = got.nodes.map((n) => h("tr", { dataset: { node: n.name, state: n.state } },
      h("th", { scope: "row" }, n.name, n.name === got.node ? h("span", { class: "muted" }, " (this node)") : "",
        n.name === leader ? h("span", { class: "badge tone-info leader" }, "leader") : ""),
      h("td", {}, h("span", { class: `badge tone-${n.alive ? "ok" : "bad"}`, "data-state": n.alive ? "alive" : "lost" },
        n.alive ? "alive" : n.state === "left" ? "left" : "lost")),
      h("td", { class: "num" }, ago(n.heartbeat_age_s)),
      h("td", { class: "num" }, n.runs_held),
      h("td", {}, n.singletons_held.length ? n.singletons_held.join(", ") : "—"),
      h("td", { class: "muted" }, n.host ? `${n.host}:${n.pid ?? "?"}` : "—")));
    const placements = got.placements.map((p) => h("tr", { dataset: { placement: `${p.name}#${p.slot}` } },
      h("th", { scope: "row" }, `${p.name}#${p.slot}`),
      h("td", {}, p.live ? p.holder : h("span", { class: "muted" }, `free (last ${p.holder})`)),
      h("td", { class: "num" }, p.epoch)));
    this.body.replaceChildren(
      section("Nodes", table(["Node", "State", "Heartbeat", "Runs held", "Singletons held", "Host"], nodes, { id: "cluster-nodes" })),
      section("Placements", placements.length
        ? table(["Copy", "Held by", "Epoch"], placements, { id: "cluster-placements" })
        : empty("No singleton services.")),
    );
  },
  onEvent: debounce((e) => {
    if (e.service === "cluster" && CLUSTER_KINDS.includes(e.kind)) cluster.load().catch(() => {});
  }, 200),
};

export const CLUSTER_VIEWS = { cluster };
