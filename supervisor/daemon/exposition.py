"""The Prometheus view of the supervisor's metrics, through `prometheus_client`.

`SupervisorCollector` turns one `metrics` snapshot (the same dict the control
command returns) into metric families at scrape time: nothing is kept twice
and nothing is written by hand. Every per-service family has the `service`
label. docs/observability.md lists every name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from supervise.supervisor.core.state import ServiceState

Snapshot = Mapping[str, Any]
_QUANTILES = (("0.5", "p50_s"), ("0.95", "p95_s"), ("0.99", "p99_s"))


class SupervisorCollector(Collector):
    """Collects a fresh snapshot at every scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield from _supervisor_families(snap["supervisor"])
        yield from _service_families(snap["services"])


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its content type, in the format the scraper asked for."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def open_registry(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(snapshot))
    return registry


def _cluster_families(c: Mapping[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "supervise_cluster_leader", "1 while this node is the maintenance leader.", value=int(bool(c.get("leader")))
    )
    yield GaugeMetricFamily(
        "supervise_cluster_nodes", "Live nodes this node saw at its last heartbeat.", value=c.get("members", 0)
    )
    yield GaugeMetricFamily("supervise_cluster_runs_held", "Run leases this node holds.", value=c.get("runs_held", 0))
    yield GaugeMetricFamily(
        "supervise_cluster_placements_held",
        "Singleton copies this node holds.",
        value=len(c.get("placements_held") or ()),
    )
    for name, help_text in (
        ("nodes_joined", "Other nodes seen joining."),
        ("nodes_lost", "Other nodes seen lost (heartbeat expired)."),
        ("leases_lost", "Run and placement leases this node lost (taken over, or fenced)."),
        ("runs_rescued", "Runs of expired leases rescued by this node as leader."),
        ("renew_failures", "Heartbeats that failed (database unreachable)."),
        ("fenced_writes", "Writes about runs refused because their lease was gone."),
    ):
        yield CounterMetricFamily(f"supervise_cluster_{name}", help_text, value=c.get(name, 0))


def _supervisor_families(sup: Mapping[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "supervise_info", "The supervisor: always 1, with its version and pid.", labels=["version", "pid"]
    )
    info.add_metric([str(sup.get("version", "")), str(sup.get("pid", ""))], 1)
    yield info
    yield GaugeMetricFamily(
        "supervise_healthy",
        "1 when every critical service is healthy (see /health).",
        value=int(bool(sup.get("healthy"))),
    )
    yield GaugeMetricFamily(
        "supervise_uptime_seconds", "Seconds since the supervisor started.", value=float(sup.get("uptime", 0.0))
    )
    process = sup.get("process") or {}
    yield GaugeMetricFamily(
        "supervise_cpu_percent", "The supervisor's own CPU use (100 = one core).", value=process.get("cpu_percent", 0.0)
    )
    yield CounterMetricFamily(
        "supervise_cpu_seconds", "The supervisor's own CPU time.", value=process.get("cpu_seconds", 0.0)
    )
    yield GaugeMetricFamily(
        "supervise_memory_rss_bytes", "The supervisor's own resident memory.", value=process.get("rss_bytes", 0)
    )
    yield GaugeMetricFamily("supervise_threads", "The supervisor's own threads.", value=process.get("threads", 0))
    yield GaugeMetricFamily(
        "supervise_open_fds", "The supervisor's own open file descriptors.", value=process.get("fds", 0)
    )
    events = sup.get("events") or {}
    yield CounterMetricFamily(
        "supervise_events", "Events emitted (the last sequence number).", value=events.get("seq", 0)
    )
    yield CounterMetricFamily(
        "supervise_events_dropped", "Events the PUB socket refused to queue.", value=events.get("dropped", 0)
    )
    yield CounterMetricFamily(
        "supervise_bad_worker_messages",
        "Worker messages dropped: undecodable, unknown sender or wrong token.",
        value=sup.get("bad_worker_messages", 0),
    )
    cluster = sup.get("cluster")
    if cluster is not None:  # docs/cluster.md
        yield from _cluster_families(cluster)
    notifications = sup.get("notifications")
    if notifications is not None:  # docs/notifications.md
        yield CounterMetricFamily(
            "supervise_notifications_sent", "Notifications delivered.", value=notifications.get("sent", 0)
        )
        yield CounterMetricFamily(
            "supervise_notifications_failed",
            "Notification delivery attempts that failed.",
            value=notifications.get("failed", 0),
        )
        yield CounterMetricFamily(
            "supervise_notifications_given_up",
            "Notifications that used up their attempts.",
            value=notifications.get("given_up", 0),
        )


def _service_families(services: list[Mapping[str, Any]]) -> Iterator[Metric]:
    S = ["service"]
    up = GaugeMetricFamily("supervise_service_up", "1 when the service is RUNNING (or PAUSED), else 0.", labels=S)
    healthy = GaugeMetricFamily(
        "supervise_service_healthy", "1 when the service counts as healthy for /health.", labels=S
    )
    state = GaugeMetricFamily(
        "supervise_service_state", "1 for the service's current state, 0 for the others.", labels=["service", "state"]
    )
    critical = GaugeMetricFamily("supervise_service_critical", "1 for a critical service.", labels=S)
    uptime = GaugeMetricFamily(
        "supervise_service_uptime_seconds", "Seconds since the current worker became RUNNING.", labels=S
    )
    heartbeat = GaugeMetricFamily(
        "supervise_service_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.", labels=S
    )
    restarts = CounterMetricFamily(
        "supervise_service_restarts", "Automatic restarts (the status RESTARTS column).", labels=S
    )
    window = GaugeMetricFamily(
        "supervise_service_restarts_in_window", "Automatic restarts within restart_window.", labels=S
    )
    spawns = CounterMetricFamily("supervise_service_spawns", "Worker processes spawned.", labels=S)
    exits = CounterMetricFamily("supervise_service_exits", "Worker exits by cause.", labels=["service", "cause"])
    codes = CounterMetricFamily(
        "supervise_service_exit_codes", "Worker exits by exit code.", labels=["service", "code"]
    )
    signals = CounterMetricFamily(
        "supervise_service_exit_signals", "Worker exits by the signal that ended them.", labels=["service", "signal"]
    )
    cpu = GaugeMetricFamily(
        "supervise_service_cpu_percent", "CPU use of the worker and its descendants (100 = one core).", labels=S
    )
    cpu_s = CounterMetricFamily(
        "supervise_service_cpu_seconds", "CPU time of the service's workers, over all incarnations.", labels=S
    )
    rss = GaugeMetricFamily(
        "supervise_service_memory_rss_bytes", "Resident memory of the worker and its descendants.", labels=S
    )
    limit = GaugeMetricFamily(
        "supervise_service_max_memory_bytes", "The service's max_memory (only services that set it).", labels=S
    )
    threads = GaugeMetricFamily("supervise_service_threads", "Threads of the worker and its descendants.", labels=S)
    fds = GaugeMetricFamily(
        "supervise_service_open_fds", "Open file descriptors of the worker and its descendants.", labels=S
    )
    children = GaugeMetricFamily("supervise_service_children", "Descendant processes of the worker.", labels=S)
    runs = CounterMetricFamily(
        "supervise_service_runs", "Finished runs by outcome (scheduled services).", labels=["service", "outcome"]
    )
    durations = Metric(
        "supervise_service_run_duration_seconds",
        "Run durations: quantiles over the last runs, count and sum over all.",
        "summary",
    )
    custom_c = CounterMetricFamily(
        "supervise_service_custom_counter",
        "A worker's own counters (ctx.count), over all incarnations.",
        labels=["service", "name"],
    )
    custom_g = GaugeMetricFamily(
        "supervise_service_custom_gauge", "A worker's own gauges (ctx.gauge), last value.", labels=["service", "name"]
    )
    queued = GaugeMetricFamily(
        "supervise_runs_queued", "Runs waiting in the service's queue for a free slot.", labels=S
    )
    in_flight = GaugeMetricFamily(
        "supervise_runs_in_flight", "Runs started and not finished (at most concurrency).", labels=S
    )
    lateness = HistogramMetricFamily(
        "supervise_fire_lateness_seconds", "How long after its time each run started.", labels=S
    )
    for svc in services:
        name = str(svc["name"])
        labels = [name]
        up.add_metric(labels, int(svc["state"] in ("RUNNING", "PAUSED")))
        healthy.add_metric(labels, int(bool(svc.get("healthy"))))
        for member in ServiceState:
            state.add_metric([name, str(member)], int(svc["state"] == member))
        critical.add_metric(labels, int(bool(svc.get("critical"))))
        uptime.add_metric(labels, svc.get("uptime") or 0.0)
        if svc.get("heartbeat_age") is not None:
            heartbeat.add_metric(labels, svc["heartbeat_age"])
        restarts.add_metric(labels, svc.get("restarts", 0))
        window.add_metric(labels, svc.get("restarts_in_window", 0))
        spawns.add_metric(labels, svc.get("spawns", 0))
        for cause, n in (svc.get("exits") or {}).items():
            exits.add_metric([name, cause], n)
        for code, n in (svc.get("exit_codes") or {}).items():
            codes.add_metric([name, code], n)
        for sig, n in (svc.get("exit_signals") or {}).items():
            signals.add_metric([name, sig], n)
        process = svc.get("process") or {}
        cpu.add_metric(labels, process.get("cpu_percent", 0.0))
        cpu_s.add_metric(labels, svc.get("cpu_seconds_total", 0.0))
        rss.add_metric(labels, process.get("rss_bytes", 0))
        if svc.get("max_memory_bytes") is not None:
            limit.add_metric(labels, svc["max_memory_bytes"])
        threads.add_metric(labels, process.get("threads", 0))
        fds.add_metric(labels, process.get("fds", 0))
        children.add_metric(labels, process.get("children", 0))
        for outcome, n in (svc.get("runs") or {}).items():
            runs.add_metric([name, outcome], n)
        run_duration = svc.get("run_duration") or {}
        if run_duration.get("count"):
            for q, key in _QUANTILES:
                if run_duration.get(key) is not None:
                    durations.add_sample(durations.name, {"service": name, "quantile": q}, run_duration[key])
            durations.add_sample(durations.name + "_count", {"service": name}, run_duration["count"])
            durations.add_sample(durations.name + "_sum", {"service": name}, run_duration["sum_s"])
        for metric, value in (svc.get("counters") or {}).items():
            custom_c.add_metric([name, metric], value)
        for metric, value in (svc.get("gauges") or {}).items():
            custom_g.add_metric([name, metric], value)
        if "runs_queued" in svc:
            queued.add_metric(labels, svc["runs_queued"])
            in_flight.add_metric(labels, svc["runs_in_flight"])
        late = svc.get("fire_lateness")
        if late:
            lateness.add_metric(labels, [(b, float(n)) for b, n in late["buckets"]], late["sum_s"])
    yield from (up, healthy, state, critical, uptime, heartbeat, restarts, window, spawns, exits, codes, signals)
    yield from (cpu, cpu_s, rss, limit, threads, fds, children, runs, durations, custom_c, custom_g)
    yield from (queued, in_flight, lateness)
