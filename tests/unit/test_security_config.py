"""CURVE settings: the [supervisor] keys and their cross-checks, key files, client arguments, read-only commands."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervise.protocol.client import AsyncClient, Client
from supervise.protocol.curve import KeyFileError, read_key_pair, read_public_key
from supervise.supervisor.config.loader import load_config, parse_config
from supervise.supervisor.core.errors import ConfigError
from supervise.supervisor.daemon.commands import COMMANDS
from supervise.supervisor.daemon.control import ControlServer
from supervise.supervisor.daemon.curve import create_key_pair, load_curve_server


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """keys/server.key_secret, keys/clients/{alice,bob}.key, keys/readonly/dash.key, keys/mine/*."""
    root = tmp_path / "keys"
    create_key_pair(root, "server")
    for name in ("alice", "bob", "dash"):
        create_key_pair(root / "mine", name)
    (root / "clients").mkdir()
    (root / "readonly").mkdir()
    for name, folder in (("alice", "clients"), ("bob", "clients"), ("dash", "readonly")):
        (root / folder / f"{name}.key").write_bytes((root / "mine" / f"{name}.key").read_bytes())
    return root


def problems(folder: Path, lines: str) -> list[str]:
    path = folder / "supervise.toml"
    path.write_text("[supervisor]\n" + lines)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [p.render(path.name) for p in caught.value.problems]


CURVE = 'control = "tcp://127.0.0.1:7100"\ncurve_server_key = "keys/server.key_secret"\n'


def test_tcp_with_a_server_key_and_client_keys_loads(tmp_path: Path, keys: Path) -> None:
    path = tmp_path / "supervise.toml"
    path.write_text(
        "[supervisor]\n"
        + CURVE
        + 'events = "tcp://127.0.0.1:7101"\ncurve_clients = "keys/clients"\ncurve_readonly_clients = "keys/readonly"\n'
    )

    sup = load_config(path).supervisor

    assert sup.control_endpoint == "tcp://127.0.0.1:7100"
    assert sup.events_endpoint == "tcp://127.0.0.1:7101"
    assert sup.workers_endpoint.startswith("ipc://")  # never tcp
    assert sup.curve_server_key == keys / "server.key_secret"
    assert (sup.curve_clients, sup.curve_readonly_clients, sup.insecure) == (keys / "clients", keys / "readonly", False)
    curve = load_curve_server(sup)
    assert curve is not None
    assert sorted(curve.clients.values()) == ["alice", "bob"]
    assert list(curve.readonly_user_ids().values()) == ["dash"]
    assert "secret" not in repr(curve) and curve.secret.decode() not in repr(curve)


def test_tcp_with_insecure_true_loads(tmp_path: Path) -> None:
    cfg = parse_config({"supervisor": {"control": "tcp://0.0.0.0:7100", "insecure": True}}, base_dir=tmp_path)

    assert cfg.supervisor.insecure is True
    assert load_curve_server(cfg.supervisor) is None


def test_an_ipc_supervisor_needs_no_keys(tmp_path: Path) -> None:
    sup = parse_config({}, base_dir=tmp_path).supervisor

    assert (sup.curve_server_key, sup.curve_clients, sup.insecure) == (None, None, False)


def test_tcp_events_without_keys_are_refused_too(tmp_path: Path) -> None:
    assert problems(tmp_path, 'events = "tcp://127.0.0.1:7101"\n') == [
        "supervise.toml:2:1: supervisor.events: tcp:// requires CURVE: set curve_server_key and curve_clients "
        "(see supervise keygen), or insecure = true to let anyone who can reach the port run any command"
    ]


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (
            CURVE,
            "supervisor.curve_server_key: needs curve_clients (or curve_readonly_clients): "
            "a directory of the public keys of the clients allowed in",
        ),
        (
            'control = "tcp://127.0.0.1:7100"\ncurve_clients = "keys/clients"\n',
            "supervisor.curve_clients: needs curve_server_key, the supervisor's own NAME.key_secret "
            "(see supervise keygen)",
        ),
        (
            CURVE + 'curve_clients = "keys/clients"\ninsecure = true\n',
            "supervisor.insecure: cannot be combined with curve_server_key, curve_clients: CURVE or insecure, not both",
        ),
        (
            CURVE + 'curve_clients = "keys/clients"\ncurve_readonly_clients = "keys/mine"\n',
            "supervisor.curve_readonly_clients: key alice, bob is also in curve_clients; "
            "a key has full access or read-only access, not both",
        ),
        (
            'control = "tcp://127.0.0.1"\ninsecure = true\n',
            'supervisor.control: expected "tcp://host:port" with a fixed port, like "tcp://127.0.0.1:7100", got "tcp://127.0.0.1"',
        ),
        (
            'control = "tcp://127.0.0.1:*"\ninsecure = true\n',
            'supervisor.control: expected "tcp://host:port" with a fixed port, like "tcp://127.0.0.1:7100", got "tcp://127.0.0.1:*"',
        ),
        (
            'control = "tcp://127.0.0.1:0"\ninsecure = true\n',
            'supervisor.control: expected "tcp://host:port" with a fixed port, like "tcp://127.0.0.1:7100", got "tcp://127.0.0.1:0"',
        ),
        ('insecure = "yes"\n', 'supervisor.insecure: expected true or false, got "yes"'),
    ],
)
def test_curve_settings_are_checked_across_keys(tmp_path: Path, keys: Path, lines: str, problem: str) -> None:
    found = problems(tmp_path, lines)

    assert len(found) == 1, found
    assert found[0].split(": ", 1)[1] == problem


def test_key_files_are_checked_when_the_config_loads(tmp_path: Path, keys: Path) -> None:
    (keys / "empty").mkdir()
    (keys / "broken").mkdir()
    (keys / "broken" / "x.key").write_text("not a key\n")

    public_as_secret = problems(tmp_path, 'curve_server_key = "keys/server.key"\ncurve_clients = "keys/clients"\n')
    missing = problems(tmp_path, 'curve_server_key = "keys/nope.key_secret"\ncurve_clients = "keys/clients"\n')
    empty = problems(tmp_path, CURVE + 'curve_clients = "keys/empty"\n')
    broken = problems(tmp_path, CURVE + 'curve_clients = "keys/broken"\n')
    (keys / "server.key_secret").chmod(0o640)
    readable = problems(tmp_path, CURVE + 'curve_clients = "keys/clients"\n')

    assert public_as_secret == [
        f"supervise.toml:2:1: supervisor.curve_server_key: {keys}/server.key holds no secret key "
        "(give the NAME.key_secret file, not the public NAME.key)"
    ]
    assert missing == [
        f"supervise.toml:2:1: supervisor.curve_server_key: CURVE key file {keys}/nope.key_secret does not exist"
    ]
    assert empty == [
        f"supervise.toml:4:1: supervisor.curve_clients: no public keys (*.key files) in {keys}/empty: "
        "no client could connect (copy each client's NAME.key there)"
    ]
    assert broken == [
        f"supervise.toml:4:1: supervisor.curve_clients: {keys}/broken/x.key is not a CURVE key file "
        "(no public-key line; create one with supervise keygen)"
    ]
    assert readable == [
        f"supervise.toml:3:1: supervisor.curve_server_key: {keys}/server.key_secret is accessible to group or others "
        f"(mode 640); a secret key must be private: chmod 600 {keys}/server.key_secret"
    ]


def test_a_key_file_with_a_mangled_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.key"
    path.write_text('curve\n    public-key = "tooshort"\n')

    with pytest.raises(KeyFileError, match="a CURVE key must be 40 Z85 characters"):
        read_public_key(path)


def test_create_key_pair_never_overwrites(tmp_path: Path) -> None:
    public, secret = create_key_pair(tmp_path / "k", "me")
    pair = read_key_pair(secret)

    with pytest.raises(FileExistsError):
        create_key_pair(tmp_path / "k", "me")
    assert read_key_pair(secret) == pair
    assert read_public_key(public) == pair[0]
    assert oct(os.stat(secret).st_mode & 0o777) == "0o600"


# -- clients -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_clients_take_both_keys_or_neither_and_only_for_tcp(keys: Path, cls: type[Client]) -> None:
    secret, server = keys / "mine" / "alice.key_secret", keys / "server.key"

    with pytest.raises(ValueError, match="go together"):
        cls("tcp://127.0.0.1:7100", curve_key=secret)
    with pytest.raises(ValueError, match="CURVE keys are for tcp:// endpoints"):
        cls("ipc:///tmp/x.sock", curve_key=secret, server_key=server)
    with pytest.raises(KeyFileError, match="holds no secret key"):
        cls("tcp://127.0.0.1:7100", curve_key=keys / "mine" / "alice.key", server_key=server)
    client = cls("tcp://127.0.0.1:7100", curve_key=secret, server_key=server)
    assert repr(client._keys).count("secret") == 0  # type: ignore[attr-defined]
    client.close()


# -- read-only keys ------------------------------------------------------------------


def test_read_only_keys_may_run_exactly_the_commands_that_change_nothing() -> None:
    server = ControlServer(None, None, readonly={"KEY": "dash"})  # type: ignore[arg-type]

    for name, command in COMMANDS.items():
        denied = server._denied("KEY", command)
        if command.changes_state:
            assert denied == f'command "{name}" needs a full-access key; key "dash" is read-only'
        else:
            assert denied is None, name
        assert server._denied("OTHER", command) is None  # a full-access key
        assert server._denied(None, command) is None
    # The list, and every other command that acts on services.
    for name in ("add", "remove", "update", "shutdown", "run", "cancel", "start", "stop", "restart", "reload", "scale"):
        assert COMMANDS[name].changes_state, name
    for name in ("ping", "help", "status", "metrics", "events", "logs", "runs", "next"):
        assert not COMMANDS[name].changes_state, name


def test_docs_security_lists_the_read_only_commands_of_the_dispatch_table() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()

    def listed(prefix: str) -> list[str]:
        line = next(line for line in text.splitlines() if line.startswith(prefix))
        return [name.strip(" `.") for name in line.removeprefix(prefix).split(",")]

    assert listed("Read-only commands:") == [n for n, c in COMMANDS.items() if not c.changes_state]
    assert listed("Commands that need a full-access key:") == [n for n, c in COMMANDS.items() if c.changes_state]


def test_a_hand_built_config_cannot_skip_the_tcp_check(tmp_path: Path) -> None:
    import asyncio
    from dataclasses import replace

    from supervise.supervisor.config.loader import SupervisorConfig
    from supervise.supervisor.daemon.supervisor import Supervisor

    cfg = parse_config({}, base_dir=tmp_path)
    sup = SupervisorConfig.for_state_dir(tmp_path / "state", control_endpoint="tcp://127.0.0.1:1")  # not validated

    async def start() -> None:
        await Supervisor(replace(cfg, supervisor=sup)).start()  # a failed start releases what it took

    with pytest.raises(ConfigError, match="tcp:// requires CURVE"):
        asyncio.run(start())
