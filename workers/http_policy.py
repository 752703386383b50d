"""What a run of the http action may change, read from the supervisor's `SUPERVISE_HTTP_POLICY`.

The supervisor passes the service's configured request and policy to its worker
as JSON: `configured` (url, method, headers, body, expect_status, timeout_s as
the config gives them), `allow_run_overrides`, `block_private_addresses` and
`allow_addresses` (the service's and `[supervisor]`'s). Any http client of the
package checks a run against it the same way; the address part is
`protocol.url_policy.AddressPolicy`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from supervise.protocol.url_policy import (
    POLICY_VARIABLE,
    AddressPolicy,
    parse_allow_list,
)

OVERRIDABLE: Final = ("url", "method", "headers", "body")


class OverrideRefused(ValueError):
    """A run argument changes a configured key that the service does not let runs change."""


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """The service's configured request and what a run may change of it."""

    configured: Mapping[str, Any] | None = None  # None: nothing is known to come from the config
    allow_run_overrides: frozenset[str] = frozenset()
    addresses: AddressPolicy = field(default_factory=AddressPolicy)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> HttpPolicy:
        """The policy the supervisor gave this worker; without one, every address is checked."""
        text = environ.get(POLICY_VARIABLE)
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            configured=data.get("configured"),
            allow_run_overrides=frozenset(data.get("allow_run_overrides", ())),
            addresses=AddressPolicy(
                block_private=bool(data.get("block_private_addresses", True)),
                allow=parse_allow_list(data.get("allow_addresses", [])),
            ),
        )

    def from_config(self, key: str, value: object) -> bool:
        """True when `value` is what the config says for `key` (so it may be expanded and trusted)."""
        return self.configured is not None and key in self.configured and self.configured[key] == value

    def check_overrides(self, given: Mapping[str, object]) -> None:
        """Refuse a run argument that changes a configured key not listed in `allow_run_overrides`.

        Raises:
            OverrideRefused: naming the key and what the service allows.
        """
        if self.configured is None:
            return
        for key, value in given.items():
            if key not in self.configured or self.from_config(key, value) or key in self.allow_run_overrides:
                continue
            allowed = ", ".join(sorted(self.allow_run_overrides)) or "none"
            hint = f' (allow_run_overrides = ["{key}"] allows it)' if key in OVERRIDABLE else ""
            raise OverrideRefused(
                f'run argument "{key}" may not change the configured value; this service allows '
                f"overrides of: {allowed}{hint}"
            )
