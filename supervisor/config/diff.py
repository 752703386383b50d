"""What a reload changes: two configs compared service by service, in the TOML's key names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import TYPE_CHECKING

from supervise.supervisor.config.keys import SERVICE_KEYS, SUPERVISOR_KEYS

if TYPE_CHECKING:
    from supervise.supervisor.config.model import Config

__all__ = ["ConfigDiff", "diff_configs"]


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What a reload would change. Service names keep the new file's order (removed: the old's)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: Mapping[str, tuple[str, ...]]  # name -> changed key names, e.g. ("backoff", "env")
    unchanged: tuple[str, ...]
    supervisor: tuple[str, ...] = ()  # changed [supervisor] keys; these need a restart


_SERVICE_KEY_OF_FIELD = {spec.field: key for key, spec in SERVICE_KEYS.items()}
_SUPERVISOR_KEY_OF_FIELD = {spec.field: key for key, spec in SUPERVISOR_KEYS.items()}


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configs service by service, naming changed keys as the TOML does."""
    changed: dict[str, tuple[str, ...]] = {}
    unchanged = []
    for name, service in new.services.items():
        if name in old.services:
            keys = _changed_keys(old.services[name], service, _SERVICE_KEY_OF_FIELD)
            if keys:
                changed[name] = keys
            else:
                unchanged.append(name)
    return ConfigDiff(
        added=tuple(name for name in new.services if name not in old.services),
        removed=tuple(name for name in old.services if name not in new.services),
        changed=MappingProxyType(changed),
        unchanged=tuple(unchanged),
        supervisor=_changed_keys(old.supervisor, new.supervisor, _SUPERVISOR_KEY_OF_FIELD),
    )


def _changed_keys(old: object, new: object, key_of_field: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(
        key_of_field.get(f.name, f.name)
        for f in fields(old)  # type: ignore[arg-type]
        if f.compare and getattr(old, f.name) != getattr(new, f.name)  # not the source table, say
    )
