"""The environment a worker starts with: an allow-list of the supervisor's, or all of it.

Policy (docs/config.md, key `inherit_env`): a worker gets the variables named in
`ALLOWED` (and the `LC_*` family) from the supervisor's environment, then, for a
service with `user`, that user's `HOME`, `USER`, `LOGNAME` and `SHELL`, then the
service's own `env`. Everything else the supervisor was started with (tokens,
database URLs, cloud credentials) stays out. With `inherit_env = true` the
worker starts from the supervisor's whole environment instead.

The default follows `user`: a worker of the supervisor's own user could read the
supervisor's environment from /proc anyway, so it inherits it; a worker of
another user does not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from supervise.protocol.url_policy import POLICY_VARIABLE
from supervise.supervisor.daemon.account import Account

if TYPE_CHECKING:
    from supervise.supervisor.config.loader import ServiceConfig, SupervisorConfig

ALLOWED: Final = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "PYTHONPATH",
        "VIRTUAL_ENV",
    }
)
"""Variables a worker takes from the supervisor's environment when it does not inherit it all."""
ALLOWED_PREFIXES: Final = ("LC_",)


def inherits(inherit_env: bool | None, user: str | None) -> bool:
    """Whether a worker starts from the supervisor's whole environment (`inherit_env` unset: no `user`)."""
    return inherit_env if inherit_env is not None else user is None


def allowed(name: str) -> bool:
    return name in ALLOWED or name.startswith(ALLOWED_PREFIXES)


def base_environment(
    environ: Mapping[str, str],
    *,
    inherit_env: bool | None,
    user: str | None,
    service_env: Mapping[str, str],
) -> dict[str, str]:
    """The worker's environment before the supervisor adds its own `SUPERVISE_*` variables.

    Raises:
        KeyError: `user` is not in the password database (any more).
    """
    if inherits(inherit_env, user):
        env = dict(environ)
    else:
        env = {name: value for name, value in environ.items() if allowed(name)}
    if user is not None:
        env.update(Account.lookup(user).environment())
    env.update(service_env)
    return env


class EnvironCopy:
    """`os.environ` as a plain dict, made again only when `os.environ` changed.

    Reading `os.environ` decodes every name and value (~30 µs with 40 variables): once per
    spawn, a fifth of what spawning a worker costs the supervisor. Whether it changed is
    told by comparing its bytes with the copy's (C speed), so a program embedding the
    supervisor that sets a variable sees its workers get it, as before.
    """

    def __init__(self) -> None:
        self._raw: dict[bytes, bytes] | None = None
        self._decoded: dict[str, str] = {}

    def current(self) -> Mapping[str, str]:
        raw = getattr(os.environ, "_data", None)  # the encoded variables, where CPython keeps them
        if not isinstance(raw, dict):
            return dict(os.environ)
        if raw != self._raw:
            self._raw = dict(raw)
            self._decoded = {os.fsdecode(name): os.fsdecode(value) for name, value in self._raw.items()}
        return self._decoded


def worker_environment(cfg: ServiceConfig, sup: SupervisorConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """`base_environment` for a service, plus an http action's request and policy."""
    env = base_environment(environ, inherit_env=cfg.inherit_env, user=cfg.user, service_env=cfg.env)
    if cfg.schedule is not None and cfg.schedule.http is not None:
        env[POLICY_VARIABLE] = http_policy_json(cfg, sup)
    return env


_CALL_ARGS: Final = ("url", "method", "headers", "body", "expect_status", "timeout_s")


def http_policy_json(cfg: ServiceConfig, sup: SupervisorConfig) -> str:
    """What the http action worker checks a run against: the configured request, overrides, addresses."""
    assert cfg.schedule is not None and cfg.schedule.http is not None
    policy = cfg.schedule.http
    configured = {key: cfg.schedule.args[key] for key in _CALL_ARGS if key in cfg.schedule.args}
    return json.dumps(
        {
            "configured": configured,
            "allow_run_overrides": list(policy.allow_run_overrides),
            "block_private_addresses": policy.block_private_addresses,
            "allow_addresses": [*policy.allow_addresses, *sup.allow_addresses],
        }
    )
