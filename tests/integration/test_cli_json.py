"""Every `supervise` command that prints data takes --json; its output parses, against a real daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from supervise.supervisor.cli.main import cli
from tests.conftest import REPO, Daemon, wait_for

DOC = REPO / "docs" / "cli.md"

# Commands that print nothing but the daemon's own log: they run it.
NO_DATA = {"run-service"}


def _walk(d: Daemon, tmp: Path) -> list[tuple[str, list[str]]]:
    """One invocation per command, in an order where each has something to show."""
    c = ["-c", str(d.config)]
    return [
        ("ping", ["ping", *c]),
        ("status", ["status", "web", *c]),
        ("check", ["check", str(d.config)]),
        ("list", ["list", *c]),
        ("export", ["export", "systemd", *c]),
        ("keygen", ["keygen", "client", "--dir", str(tmp / "keys")]),
        ("next", ["next", "nightly", "--count", "3", *c]),
        ("run", ["run", "job", "--args", '{"seconds": 60}', *c]),
        ("runs", ["runs", "job", *c]),
        ("skip", ["skip", "nightly", *c]),
        ("schedule", ["schedule", "job", "--at", "2099-01-01T00:00:00+00:00", *c]),
        (
            "backfill",
            ["backfill", "nightly", "--from", "2026-01-01T00:00:00+00:00", "--to", "2026-01-02T00:00:00+00:00", *c],
        ),
        ("pause", ["pause", "web", *c]),
        ("resume", ["resume", "web", *c]),
        ("stop", ["stop", "web", *c]),
        ("start", ["start", "web", *c]),
        ("restart", ["restart", "web", *c]),
        ("metrics", ["metrics", *c]),
        ("top", ["top", *c]),
        ("events", ["events", "--since", "0", "--no-follow", *c]),
        ("logs", ["logs", "web", "-n", "5", *c]),
        ("add", ["add", "extra", "--command", "sleep 1000", *c]),
        ("update", ["update", "extra", "--set", 'command="sleep 999"', *c]),
        ("scale", ["scale", "extra", "2", *c]),
        ("remove", ["remove", "extra", *c]),
        ("reload", ["reload", "--dry-run", *c]),
        ("notifications", ["notifications", *c]),
        ("token", ["token", "create", "ci", "--role", "viewer", *c]),
        ("token list", ["token", "list", *c]),
        ("token revoke", ["token", "revoke", "ci", *c]),
        ("audit", ["audit", *c]),
        ("tenant create", ["tenant", "create", "acme", "--max-runs-per-minute", "5", *c]),
        ("tenant quota", ["tenant", "quota", "acme", "--max-pending-tasks", "7", *c]),
        ("tenant list", ["tenant", "list", *c]),
        ("tenant export", ["tenant", "export", "acme", *c]),
        ("tenant delete", ["tenant", "delete", "acme", "--yes", *c]),
        ("cancel", ["cancel", "RUN_ID", *c]),  # the run id is filled in below
        ("shutdown", ["shutdown", *c]),
    ]


def _parse(name: str, output: str) -> Any:
    if name in ("events", "logs"):  # JSON Lines: one object per line
        return [json.loads(line) for line in output.splitlines()]
    return json.loads(output)


def test_every_command_that_prints_data_takes_json_and_prints_json(daemon_factory, short_dir: Path) -> None:
    d: Daemon = daemon_factory(
        {
            "web": {"target": "tests.children.targets:forever"},
            "job": {
                "target": "tests.children.jobs:slow",
                "manual": True,
                "env": {"RUNS_FILE": str(short_dir / "runs.txt")},
            },
            "nightly": {"command": ["true"], "cron": "0 2 * * *"},
        }
    )
    d.wait_running_pid("web")
    d.wait_running_pid("job")
    runner = CliRunner()
    walked: dict[str, Any] = {}
    for name, argv in _walk(d, short_dir):
        if name == "cancel":
            argv[1] = walked["run"]["run_id"]
        result = runner.invoke(cli, [*argv, "--json"])
        assert result.exit_code == 0, f"supervise {' '.join(argv)} --json: {result.output}"
        walked[name] = _parse(name, result.output)
    # `cluster status` needs a [cluster] config: its JSON is walked in tests/cluster/test_singletons.py
    commands = set(cli.commands) - NO_DATA - {"cluster"}
    assert {name.split()[0] for name in walked} == commands, f"walk every command: missing {commands - set(walked)}"
    # A few shapes, as docs/cli.md gives them.
    assert len(walked["next"]["next"]) == 3
    assert walked["status"]["services"][0]["name"] == "web"
    assert walked["check"] == {
        "config": str(d.config),
        "ok": True,
        "services": ["web", "job", "nightly"],
        "warnings": [],
    }
    assert [s["name"] for s in walked["list"]["services"]] == ["web", "job", "nightly"]
    assert set(walked["export"]["units"]) == {"web.service", "job.service", "nightly.service", "nightly.timer"}
    assert walked["stop"] == {"services": {"web": "STOPPED"}}
    assert walked["cancel"]["run_id"] == walked["run"]["run_id"]
    assert all(set(line) == {"service", "line"} for line in walked["logs"])
    assert walked["keygen"]["public"].endswith("client.key")
    assert walked["tenant create"] == {"created": "acme"} and walked["tenant list"][0]["name"] == "acme"
    assert walked["tenant quota"] == {"tenant": "acme", "max_pending_tasks": 7, "max_runs_per_minute": None}
    assert walked["tenant list"][0]["max_pending_tasks"] == 7
    assert walked["tenant export"]["tenant"] == "acme" and walked["tenant delete"]["deleted"] == "acme"
    wait_for(lambda: d.proc.poll() is not None, what="the daemon to exit after shutdown --json")


def test_check_json_lists_every_problem_and_exits_1(short_dir: Path) -> None:
    config = short_dir / "bad.toml"
    config.write_text('[services.web]\ncommand = "sh"\nstop_timeout = "soon"\n')
    result = CliRunner().invoke(cli, ["check", str(config), "--json"])
    assert result.exit_code == 1
    found = json.loads(result.output)
    assert found["ok"] is False
    assert found["problems"][0]["key"] == "services.web.stop_timeout" and found["problems"][0]["line"] == 3


def test_start_json_is_refused_for_the_daemon_itself(short_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["start", str(short_dir / "supervise.toml"), "--json"])
    assert result.exit_code == 2 and "--json is for starting services" in result.output


def test_the_cli_doc_gives_the_json_output_of_every_command() -> None:
    text = DOC.read_text()
    documented = set(re.findall(r"^\| `supervise ([a-z-]+)", text, flags=re.MULTILINE))
    assert documented >= set(cli.commands) - NO_DATA
