"""`supervise` commands that observe: metrics, top, events, logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from supervise.supervisor.cli.base import (
    _call,
    _curve_keys,
    _obj,
    _show,
    cli,
    client_options,
    json_option,
)


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@client_options
def metrics(name: str | None, as_json: bool, config: str | None, endpoint: str | None, timeout: float | None) -> None:
    """CPU, memory, restarts, exits by cause, runs and custom metrics of every service (or one)."""
    from supervise.supervisor.cli.top import metrics_table

    _show("metrics", name, as_json, _obj(config, endpoint, timeout), metrics_table)


@cli.command()
@click.option(
    "--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True, help="seconds between redraws"
)
@click.option("--once", is_flag=True, help="print one frame and exit")
@client_options
@json_option
def top(
    interval: float, once: bool, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool
) -> None:
    """A live view of every service: state, pid, CPU, memory, restarts. q or Ctrl-C quits.

    With --json: one frame's figures (the metrics reply), then exit.
    """
    from supervise.supervisor.cli.top import run_top

    obj = _obj(config, endpoint, timeout if timeout is not None else 5.0)
    if as_json:
        click.echo(json.dumps(_call(obj, "metrics"), indent=2, default=str))
        return
    run_top(lambda: _call(obj, "metrics"), interval_s=interval, once=once)


def _print_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(event, default=str))
        return
    from datetime import datetime

    when = datetime.fromtimestamp(float(event.get("ts", 0))).strftime("%H:%M:%S.%f")[:-3]
    skip = {"v", "seq", "ts", "service", "kind", "message"}
    detail = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    text = f"{when} #{event.get('seq')} {event.get('service')} {event.get('kind')} {detail}".rstrip()
    if event.get("message") and event.get("kind") != "error":
        text += f"  ({event['message']})"
    click.echo(text)


@cli.command()
@click.option("--service", help="only this service's events")
@click.option("--since", type=click.IntRange(min=0), help="first replay the kept events after this sequence number")
@click.option("--follow/--no-follow", default=True, show_default=True, help="keep printing new events")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@client_options
def events(
    service: str | None,
    since: int | None,
    follow: bool,
    as_json: bool,
    config: str | None,
    endpoint: str | None,
    timeout: float | None,
) -> None:
    """Print the supervisor's events (state changes, exits, restarts, ...) as they happen.

    \b
    supervise events -c CONFIG                      follow from now
    supervise events --since 0 --no-follow --json   what the replay ring holds
    """
    import zmq

    from supervise.protocol.codec import unpack
    from supervise.protocol.limits import REPLY_LIMITS

    obj = _obj(config, endpoint, timeout)
    info = _call(obj, "ping")
    filters: dict[str, object] = {"service": service} if service else {}
    last = int(info.get("event_seq", 0)) if since is None else since

    def replay() -> None:
        nonlocal last
        while True:
            result = _call(obj, "events", since=last, **filters)
            if result.get("missed"):
                click.echo(f"({result['missed']} events after #{last} are no longer kept)", err=True)
            for event in result["events"]:
                _print_event(event, as_json)
                last = max(last, int(event["seq"]))
            if not result.get("more"):
                last = max(last, int(result["last_seq"]))
                return

    if not follow:
        replay()
        return
    zctx = zmq.Context()
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, f"{service}.".encode() if service else b"")
    keys = _curve_keys(obj) if str(info["events"]).startswith("tcp://") else {}
    if keys:
        from supervise.protocol.curve import apply_client_keys, load_client_keys

        apply_client_keys(sub, load_client_keys(keys["curve_key"], keys["server_key"]))
    sub.connect(str(info["events"]))
    try:
        # A SUB socket's subscription takes effect a little after connect (ZeroMQ's slow
        # joiner), and PUB drops at its high-water mark: whenever the stream is quiet for
        # a moment, ask the replay ring for anything after the last seq printed.
        replay()
        while True:
            if not sub.poll(500):
                replay()
                continue
            _topic, body = sub.recv_multipart()
            event = unpack(body, REPLY_LIMITS, what="event")
            assert isinstance(event, dict)
            seq = int(event.get("seq", 0))
            if seq <= last:
                continue
            if seq > last + 1 and not service:
                replay()  # the PUB socket dropped some (its HWM): fetch them from the ring
                if seq <= last:
                    continue
            _print_event(event, as_json)
            last = seq
    except KeyboardInterrupt:
        pass
    finally:
        sub.close(linger=0)
        zctx.term()


@cli.command()
@click.argument("name")
@click.option(
    "-n", "--lines", type=click.IntRange(0, 10_000), default=100, show_default=True, help="how many last lines"
)
@click.option("-f", "--follow", is_flag=True, help="keep printing what the service writes (across rotation)")
@client_options
@click.option("--json", "as_json", is_flag=True, help='one JSON object per line: {"service": NAME, "line": TEXT}')
def logs(
    name: str, lines: int, follow: bool, config: str | None, endpoint: str | None, timeout: float | None, as_json: bool
) -> None:
    """Show a service's captured stdout/stderr; -f follows it."""
    import time

    result = _call(_obj(config, endpoint, timeout), "logs", name=name, lines=lines)
    for line in result["lines"]:
        click.echo(json.dumps({"service": name, "line": line}) if as_json else line)
    if not follow:
        return
    from supervise.supervisor.daemon.logtail import Follower

    follower = Follower(Path(result["path"]), offset=result["offset"], inode=result["inode"])
    out = sys.stdout.buffer
    partial = b""
    try:
        while True:
            data = follower.read()
            if data and as_json:
                *complete, partial = (partial + data).split(b"\n")
                for raw in complete:
                    click.echo(json.dumps({"service": name, "line": raw.decode(errors="replace")}))
            elif data:
                out.write(data)
                out.flush()
            else:
                time.sleep(0.2)  # following a file: there is nothing to wait on but the clock
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        follower.close()
