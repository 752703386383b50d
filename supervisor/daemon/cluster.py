"""Cluster mode, the node's side: membership, lease renewal, fencing, singletons (docs/cluster.md).

Every `renew_every` (with jitter) one heartbeat transaction renews the node
row, this node's run leases and singleton placements, and the maintenance
leadership (`ClusterStore.beat`). The heartbeat has a thread and a connection
of its own: it is sent on time, and a renewal that got through moves the
fencing deadline at once, however busy the event loop is. The rest of the round
(acting on lost leases, the leader's maintenance, placements, the workers'
`lease` messages) runs on the event loop after it. What it did not renew is gone:

- a run lease lost: the scheduler stops acting on the run (its process is
  killed, its later writes are refused by the epoch compare-and-set);
- a placement lost: the service's workers get SIGKILL.

Self-fencing: a renewal sent at monotonic time t proves the lease until at
least t + lease_ttl on the database clock, so the node may act until
t + lease_ttl - margin. A timer on the loop fences at that deadline, and the
orphan guard (a separate process) holds the same deadline for the singleton
workers, and each warm worker for the leased runs it executes (sent with each
run and moved by a `lease` message after each renewal; workers/lease.py), so a
supervisor frozen by SIGSTOP still loses its workers and runs in time.

Runs left for any node to claim are announced by NOTIFY (run_wake.py); polling
at every round stays the safety net.

The leader also marks nodes whose heartbeat expired `lost` and rescues runs
whose lease expired (`ClusterStore.rescue`). Free placements are taken here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from supervise.protocol.errors import ErrorCode, ProtocolError, SuperviseError
from supervise.supervisor.config.cluster import ClusterConfig, placement_copies
from supervise.supervisor.daemon.run_wake import RunWaker
from supervise.supervisor.store.base import StoreError
from supervise.supervisor.store.cluster import ClusterStore
from supervise.supervisor.store.cluster_tenants import ClusterHistory

log = logging.getLogger("supervise.cluster")

TOPIC = "cluster"  # the events' service field for node and lease events


class ClusterHost(Protocol):
    """What the agent needs from the supervisor."""

    def publish(self, service: str, kind: str, detail: dict[str, object]) -> None: ...

    def start_singleton(self, name: str) -> None:
        """This node holds a copy of `name`: start it."""
        ...

    def fence_singleton(self, name: str, reason: str) -> None:
        """This node no longer holds `name`: SIGKILL its workers now and keep it stopped."""
        ...

    def singleton_instances(self, name: str) -> list[str]:
        """The instance names of service `name` (for the guard's deadlines)."""
        ...

    def singleton_stopped(self, name: str) -> bool:
        """No worker of `name` is alive."""
        ...

    def runs_lost(self, run_ids: list[str], reason: str) -> None:
        """Stop acting on these runs now (their leases are gone)."""
        ...

    def runs_rescued(self, lost_run_ids: list[str]) -> None:
        """The leader marked these runs lost (their node's lease expired): apply on_lost."""
        ...

    def poll_runs(self, services: set[str] | None = None) -> None:
        """Look in the store for queued runs (of these services; None: of every one) another
        node left or the leader requeued."""
        ...

    def fence_deadline(self, names: list[str], deadline: float | None) -> None:
        """Tell the orphan guard the kill deadline of these instances."""
        ...

    def renew_runs(self, run_ids: set[str], until: float) -> None:
        """These runs' leases are trusted until `until` (monotonic): tell their warm workers."""
        ...

    execute: Callable[[str, dict[str, Any]], Awaitable[object]]
    """Run a control command another node relayed here; its result, or ProtocolError."""


@dataclass
class Placement:
    """A singleton (or any:N) service as this node sees it."""

    name: str
    copies: int
    slot: int | None = None  # the copy this node holds
    epoch: int = 0
    since: float = 0.0  # monotonic time it was taken


@dataclass
class Counters:
    nodes_joined: int = 0
    nodes_lost: int = 0
    leases_lost: int = 0
    runs_rescued: int = 0
    renew_failures: int = 0
    placements_taken: int = 0
    fenced: int = 0
    beats: int = 0
    seen: set[str] = field(default_factory=set)


class ClusterAgent:
    """One node's membership and leases; started and closed by the supervisor."""

    def __init__(
        self,
        config: ClusterConfig,
        store: ClusterStore,
        runs: ClusterHistory,
        host: ClusterHost,
        *,
        placements: dict[str, str],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.runs = runs
        self._host = host
        self._rng = rng or random.Random()  # nosec B311 # jitter, not a secret
        self._clock = clock
        self.placements = {
            name: Placement(name, copies)
            for name, placement in placements.items()
            if (copies := placement_copies(placement)) is not None
        }
        self.leader = False
        self.counters = Counters()
        self._deadline: float | None = None  # act on leases until this monotonic time
        self.runs.fence_grace_ms = config.fence_margin_ms // 2  # a warm worker's run is gone by then
        self.waker: RunWaker | None = None  # LISTEN/NOTIFY wake-ups for runs (run_wake.py)
        self._task: asyncio.Task[None] | None = None
        self._fence_timer: asyncio.TimerHandle | None = None
        self.closing = False
        self._members: set[str] = set()
        self._command_wake = asyncio.Event()
        self._listening = threading.Event()  # set: the LISTEN thread stops
        self._commands_task: asyncio.Task[None] | None = None
        # The renewal thread (`_renew_forever`) and what it leaves for the loop's round:
        self._renewer: threading.Thread | None = None
        self._renew_now = threading.Event()  # renew without waiting for the interval
        self._stop_renewing = threading.Event()
        self._rejoining = False  # the loop is joining again: no beat meanwhile
        self._beats = threading.Lock()  # guards the fields below, and the deadline against a placement taken
        self._gone_runs: set[tuple[str, int]] = set()  # run leases a beat did not renew
        self._gone_places: set[tuple[str, int, int]] = set()  # placements a beat did not renew
        self._failures: list[StoreError] = []  # renewals that failed since the last round
        self._renewed = False  # a renewal got through since the last round
        self._must_rejoin = False  # a beat found this node's row expired
        self._is_leader = False  # what the last beat said
        self._round = asyncio.Event()  # set from the thread: a beat is done, run the round

    @property
    def deadline(self) -> float | None:
        """The monotonic time this node acts on its leases until (warm workers enforce it too)."""
        return self._deadline

    @deadline.setter
    def deadline(self, value: float | None) -> None:
        self._deadline = value
        self.runs.fence_until = value

    # -- lifecycle ---------------------------------------------------------------------------

    async def join(self) -> None:
        """Join the cluster: NodeNameTaken if a live node has the name (the daemon exits 78)."""
        await asyncio.to_thread(self.store.open)
        await asyncio.to_thread(self.store.join)
        self.deadline = self._clock() + self._trust_s()

    async def start(self) -> None:
        """Start renewing (after `join`, once the services and the scheduler are up)."""
        log.info(
            "cluster: node %s joined (lease_ttl %d ms, renew every %d ms)",
            self.config.node,
            self.config.lease_ttl_ms,
            self.config.renew_every_ms,
        )
        self._host.publish(TOPIC, "node_joined", {"node": self.config.node, "self": True})
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._renew, loop)  # the first round before the services start
        await self._run_round()
        self._round.clear()
        self._task = asyncio.create_task(self._run(), name="supervise-cluster")
        self._renewer = threading.Thread(
            target=self._renew_forever, args=(loop,), name="supervise-cluster-renew", daemon=True
        )
        self._renewer.start()
        threading.Thread(
            target=self.store.listen,
            args=(lambda: loop.call_soon_threadsafe(self._command_wake.set), self._listening),
            name="supervise-cluster-listen",
            daemon=True,
        ).start()
        self._commands_task = asyncio.create_task(self._serve_commands(), name="supervise-cluster-commands")
        self.waker = RunWaker(
            self.store.dsn, schema=self.store.schema, node=self.config.node, on_wake=self._host.poll_runs, rng=self._rng
        )
        self.runs.on_claimable = self.waker.claimable
        self.waker.start()

    async def close(self) -> None:
        """Stop renewing and give every lease back (call once the workers are stopped)."""
        self.closing = True
        self._listening.set()
        if self.waker is not None:
            self.runs.on_claimable = None
            self.waker.stop()
            await asyncio.to_thread(self.waker.join)
        self._stop_renewing.set()
        self._renew_now.set()
        if self._renewer is not None:
            await asyncio.to_thread(self._renewer.join)
        for task in (self._task, self._commands_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._fence_timer is not None:
            self._fence_timer.cancel()
        try:
            await asyncio.to_thread(self.store.leave)
        except StoreError as e:
            log.warning("cluster: could not say goodbye (%s); the leases expire in %d ms", e, self.config.lease_ttl_ms)
        await asyncio.to_thread(self.store.close)

    def wake(self) -> None:
        """Renew now (a singleton stopped, a run was queued)."""
        self._renew_now.set()

    def _trust_s(self) -> float:
        return (self.config.lease_ttl_ms - self.config.fence_margin_ms) / 1000

    def _renew_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        """The renewal thread: a heartbeat every renew_every (±10 %), or at once when woken."""
        every = self.config.renew_every_ms / 1000
        while True:
            self._renew_now.wait(every * self._rng.uniform(0.9, 1.1))
            self._renew_now.clear()
            if self._stop_renewing.is_set():
                return
            try:
                self._renew(loop)
            except Exception:
                log.exception("cluster: renewal failed unexpectedly; trying again")

    def _renew(self, loop: asyncio.AbstractEventLoop) -> None:
        """One heartbeat (on the renewal thread, or the loop's first round): renew, move the
        fencing deadline if it got through, and leave what it found for the loop's round."""
        if self._rejoining:
            return
        sent = self._clock()  # before the snapshot: a lease taken after it lives past sent + lease_ttl
        with self._beats:
            held_runs = self.runs.held()
            held_places = [(p.name, p.slot, p.epoch) for p in list(self.placements.values()) if p.slot is not None]
        try:
            beat = self.store.beat(held_runs, held_places)
        except StoreError as e:
            with self._beats:
                self._failures.append(e)
            loop.call_soon_threadsafe(self._round.set)
            return
        with self._beats:
            self.counters.beats += 1
            self._renewed = True
            if not beat.alive:
                self._must_rejoin = True
            else:
                if self._clock() < (self.deadline or 0.0) or not held_runs and not held_places:
                    deadline = sent + self._trust_s()
                    for p in list(self.placements.values()):  # taken after the snapshot: not renewed by it
                        if p.slot is not None and (p.name, p.slot, p.epoch) not in held_places:
                            deadline = min(deadline, p.since + self._trust_s())
                    self.deadline = deadline
                self._gone_runs |= {(run_id, epoch) for run_id, epoch in held_runs if run_id not in beat.runs}
                self._gone_places |= {(n, slot, ep) for n, slot, ep in held_places if (n, slot) not in beat.placements}
                self._is_leader = beat.leader
        loop.call_soon_threadsafe(self._round.set)

    async def _run(self) -> None:
        while True:
            await self._round.wait()
            self._round.clear()
            try:
                await self._run_round()
            except Exception:
                log.exception("cluster: renewal round failed; trying again")

    # -- one round ---------------------------------------------------------------------------

    async def _run_round(self) -> None:
        """What the beats since the last round found, acted on (on the event loop)."""
        with self._beats:
            failures, self._failures = self._failures, []
            renewed, self._renewed = self._renewed, False
            rejoin, self._must_rejoin = self._must_rejoin, False
            gone_runs, self._gone_runs = self._gone_runs, set()
            gone_places, self._gone_places = self._gone_places, set()
            leader = self._is_leader
        for e in failures:
            self.counters.renew_failures += 1
            left = (self.deadline - self._clock()) if self.deadline is not None else 0.0
            log.warning("cluster: renewal failed (%s); fencing in %.1f s unless a renewal gets through", e, left)
        if rejoin:
            await self._rejoin()
            return
        if not renewed:
            self._arm_fence()
            return
        self._lost_leases(gone_runs, gone_places)
        self._arm_fence()
        self._fence_guard()
        if self.deadline is not None and self._clock() < self.deadline:
            self._host.renew_runs({run_id for run_id, _ in self.runs.held()}, self.deadline)
        if leader != self.leader:
            self.leader = leader
            log.info(
                "cluster: node %s %s the maintenance leader",
                self.config.node,
                "is now" if leader else "is no longer",
            )
            self._host.publish(TOPIC, "leader_changed", {"node": self.config.node, "leader": leader})
        if self.leader:
            await self._maintain()
        await self._watch_members()
        await self._take_placements()
        self._host.poll_runs()

    def _lost_leases(self, runs: set[tuple[str, int]], places: set[tuple[str, int, int]]) -> None:
        """Leases a beat did not renew, each still held at the epoch that beat sent (a run taken
        again since, under a new epoch, is not touched)."""
        gone_runs = {run_id for run_id, epoch in runs if self.runs.epoch_of(run_id) == epoch}
        if gone_runs:
            self._lose_runs(gone_runs, "its lease was taken over")
        for name, slot, epoch in places:
            p = self.placements[name]
            if p.slot == slot and p.epoch == epoch:
                self._lose_placement(p, "its lease was not renewed in time")

    def _lose_runs(self, run_ids: set[str], why: str) -> None:
        lost = self.runs.revoke(run_ids)
        if not lost:
            return
        self.counters.leases_lost += len(lost)
        log.warning("cluster: lost the lease of %d run(s) (%s); not acting on them any more", len(lost), why)
        self._host.publish(TOPIC, "lease_lost", {"node": self.config.node, "runs": sorted(lost), "reason": why})
        self._host.runs_lost(sorted(lost), f"lease lost: {why}")

    def _lose_placement(self, p: Placement, why: str) -> None:
        if p.slot is None:
            return
        log.warning("cluster: lost the placement of %s#%d (%s); SIGKILL to its workers", p.name, p.slot, why)
        self.counters.leases_lost += 1
        self.counters.fenced += 1
        self._host.publish(
            TOPIC, "lease_lost", {"node": self.config.node, "service": p.name, "slot": p.slot, "reason": why}
        )
        p.slot = None
        self._host.fence_singleton(p.name, why)
        self._host.fence_deadline(self._host.singleton_instances(p.name), None)

    async def _rejoin(self) -> None:
        """Our node row expired (frozen, or cut off, for longer than lease_ttl): every lease is
        gone. Drop them all, then join again as a new member."""
        log.error(
            "cluster: node %s was declared lost by the cluster; its leases are gone, joining again", self.config.node
        )
        self._fence_all("the node was declared lost")
        self._rejoining = True
        try:
            self.store.incarnation = f"{os.getpid()}-{os.urandom(4).hex()}"
            await asyncio.to_thread(self.store.join)
        except StoreError as e:
            log.error("cluster: could not join again (%s); retrying", e)
            with self._beats:
                self._must_rejoin = True
            return
        finally:
            self._rejoining = False
        self._host.publish(TOPIC, "node_joined", {"node": self.config.node, "self": True, "rejoined": True})
        self.deadline = self._clock() + self._trust_s()

    def _fence_all(self, why: str) -> None:
        self._lose_runs({run_id for run_id, _ in self.runs.held()}, why)
        for p in self.placements.values():
            self._lose_placement(p, why)

    def _arm_fence(self) -> None:
        """A timer at the deadline: if no renewal moved it by then, stop acting on every lease."""
        if self._fence_timer is not None:
            self._fence_timer.cancel()
            self._fence_timer = None
        if self.deadline is None or self.closing:
            return
        loop = asyncio.get_running_loop()
        self._fence_timer = loop.call_at(loop.time() + max(0.0, self.deadline - self._clock()), self._on_fence_deadline)

    def _on_fence_deadline(self) -> None:
        self._fence_timer = None
        if self.deadline is not None and self._clock() < self.deadline:
            self._arm_fence()  # the renewal thread moved it meanwhile
            return
        if self.deadline is not None and self._clock() >= self.deadline:
            held = self.runs.held() or any(p.slot is not None for p in self.placements.values())
            if held:
                log.error(
                    "cluster: no lease renewal got through for %d ms; fencing: this node stops acting on its leases",
                    self.config.lease_ttl_ms - self.config.fence_margin_ms,
                )
                self._fence_all("renewals failed for lease_ttl minus the safety margin")

    def _fence_guard(self) -> None:
        """Move the guard's kill deadline of every held singleton's workers."""
        for p in self.placements.values():
            if p.slot is not None:
                self._host.fence_deadline(self._host.singleton_instances(p.name), self.deadline)

    async def _maintain(self) -> None:
        await asyncio.to_thread(self.store.prune_commands)
        lost_nodes = await asyncio.to_thread(self.store.mark_lost_nodes)
        for name in lost_nodes:
            log.warning("cluster: node %s stopped heartbeating; marked lost", name)
        rescue = await asyncio.to_thread(self.store.rescue)
        if rescue.requeued and self.waker is not None:
            self.waker.claimable()  # for the other nodes; this one looks at the end of the round
        if rescue.requeued or rescue.lost:
            self.counters.runs_rescued += len(rescue.requeued) + len(rescue.lost)
            log.warning(
                "cluster: rescued runs of expired leases: %d queued again, %d lost",
                len(rescue.requeued),
                len(rescue.lost),
            )
            self._host.publish(
                TOPIC,
                "runs_rescued",
                {"requeued": len(rescue.requeued), "lost": [r["run_id"] for r in rescue.lost]},
            )
            self._host.runs_rescued([r["run_id"] for r in rescue.lost])

    async def _watch_members(self) -> None:
        """Events for nodes that joined or were lost since the last round, as this node saw them."""
        status = await asyncio.to_thread(self.store.members)
        live = {name for name, alive in status.items() if alive}
        if self.counters.beats > 1:
            for name in sorted(live - self._members - {self.config.node}):
                self.counters.nodes_joined += 1
                self._host.publish(TOPIC, "node_joined", {"node": name})
            for name in sorted(self._members - live):
                self.counters.nodes_lost += 1
                log.warning("cluster: node %s is gone", name)
                self._host.publish(TOPIC, "node_lost", {"node": name})
        self._members = live

    async def _take_placements(self) -> None:
        if self.closing or self.deadline is None or self._clock() >= self.deadline:
            return
        for p in self.placements.values():
            if p.slot is not None or not self._host.singleton_stopped(p.name):
                continue  # held; or still stopping after a fence (never two copies here)
            taken = await asyncio.to_thread(self.store.acquire, p.name, p.copies)
            if taken is None:
                continue
            with self._beats:
                p.slot, p.epoch = taken
                p.since = self._clock()
                self.deadline = min(self.deadline, p.since + self._trust_s())
            self.counters.placements_taken += 1
            self._host.fence_deadline(self._host.singleton_instances(p.name), self.deadline)
            log.info("cluster: took %s#%d (epoch %d); starting it", p.name, p.slot, p.epoch)
            self._host.publish(
                TOPIC,
                "placement_taken",
                {"node": self.config.node, "service": p.name, "slot": p.slot, "epoch": p.epoch},
            )
            self._host.start_singleton(p.name)

    # -- control from any node -----------------------------------------------------------------

    async def forward(self, node: str, command: str, args: dict[str, Any], timeout_s: float = 10.0) -> object:
        """Relay a control command to the node that holds what it names, and wait for its reply."""
        if node == self.config.node:
            raise ProtocolError(ErrorCode.CONFLICT, f"{command}: this node ({node}) holds it, but it is not here")
        command_id = await asyncio.to_thread(self.store.send, node, command, args)
        deadline = self._clock() + timeout_s
        delay = 0.01
        while self._clock() < deadline:
            await asyncio.sleep(delay)
            reply = await asyncio.to_thread(self.store.reply, command_id)
            if reply is not None:
                if reply.get("ok"):
                    return reply.get("result")
                code = reply.get("code", "internal")
                known = code if code in ErrorCode.__members__.values() else "internal"
                raise ProtocolError(ErrorCode(known), f"node {node}: {reply.get('message')}")
            delay = min(0.1, delay * 2)
        raise ProtocolError(
            ErrorCode.CONFLICT,
            f"{command} was sent to node {node}, which holds it, and got no reply within {timeout_s:.0f} s; "
            f"is it alive? ('supervise cluster status'); if it is gone, its leases are taken over "
            f"within lease_ttl ({self.config.lease_ttl_ms} ms)",
        )

    async def _serve_commands(self) -> None:
        """Answer the commands other nodes relay here: woken by NOTIFY, polled every renew_every."""
        while True:
            try:
                await asyncio.wait_for(self._command_wake.wait(), self.config.renew_every_ms / 1000)
            except TimeoutError:
                pass
            self._command_wake.clear()
            try:
                taken = await asyncio.to_thread(self.store.take_commands)
            except StoreError as e:
                log.debug("cluster: could not read relayed commands: %s", e)
                continue
            for row in taken:
                reply: dict[str, Any]
                try:
                    result = await self._host.execute(row["command"], dict(row["args"]))
                    reply = {"ok": True, "result": result}
                except SuperviseError as e:
                    code = e.code.value if isinstance(e, ProtocolError) else "internal"
                    reply = {"ok": False, "code": code, "message": str(e)}
                log.info("cluster: ran %s relayed from another node: %s", row["command"], reply)
                try:
                    await asyncio.to_thread(self.store.answer, int(row["id"]), reply)
                except StoreError as e:
                    log.warning("cluster: could not answer relayed command %s: %s", row["id"], e)

    # -- what the supervisor asks -------------------------------------------------------------

    def add_placement(self, name: str, placement: str) -> None:
        """Compete for a copy of singleton `name` (added at runtime, or by a reload): this node
        takes a free one at its next round, woken now, and starts it."""
        copies = placement_copies(placement)
        if copies is None or name in self.placements:
            return
        self.placements[name] = Placement(name, copies)
        self.wake()

    async def remove_placement(self, name: str, stop: Callable[[], Awaitable[object]]) -> None:
        """Stop competing for `name`: `stop` its copy here (a local stop, not relayed to a holder,
        once it is no longer a singleton here), then give the lease back so no node waits for it
        to expire. The guard's deadline stays on the copy until it has stopped."""
        p = self.placements.pop(name, None)
        await stop()
        if p is None or p.slot is None:
            return
        try:
            await asyncio.to_thread(self.store.release, p.name, p.slot, p.epoch)
        except StoreError as e:
            log.warning("cluster: could not give back %s#%d (%s); it expires within lease_ttl", p.name, p.slot, e)

    def holds(self, name: str) -> bool:
        """This node may run service `name` (it is not a singleton, or this node holds a copy)."""
        p = self.placements.get(name)
        return p is None or p.slot is not None

    def may_run(self, name: str) -> bool:
        """`holds`, and the lease is still trusted (the fencing deadline has not passed)."""
        p = self.placements.get(name)
        return p is None or (p.slot is not None and self.deadline is not None and self._clock() < self.deadline)

    async def holders_of(self, name: str) -> list[str]:
        """The nodes holding a live copy of singleton `name`."""
        return await asyncio.to_thread(self.store.holders, name)

    def holder_note(self, name: str) -> str:
        """Why this node does not run singleton `name` (for a refused start)."""
        return (
            f"{name} has placement {self.placements[name].copies} cop(y/ies) in the cluster and this node "
            "holds none; it runs on the node that holds its lease (see 'supervise cluster status')"
        )

    def summary(self) -> dict[str, object]:
        """For /metrics and status."""
        c = self.counters
        return {
            "node": self.config.node,
            "leader": self.leader,
            "members": len(self._members),
            "runs_held": len(self.runs.held()),
            "placements_held": sorted(f"{p.name}#{p.slot}" for p in self.placements.values() if p.slot is not None),
            "nodes_joined": c.nodes_joined,
            "nodes_lost": c.nodes_lost,
            "leases_lost": c.leases_lost,
            "runs_rescued": c.runs_rescued,
            "renew_failures": c.renew_failures,
            "fenced_writes": self.runs.fenced_writes,
        }
