"""Which URLs an outgoing http call may reach: the SSRF policy of the http action.

Shared by everything that makes a request on a service's behalf (the worker's
http action, and any other http client of the package), so it has no I/O but
DNS resolution, and that only in `AddressPolicy.resolve`.

- `check_url`: http:// or https:// only, a host, and no credentials in the URL
  (`https://user:pass@host/` would send them to whoever the host turns out to be).
- `AddressPolicy`: an address that is loopback, private, link-local, unique-local,
  shared (100.64.0.0/10), multicast, reserved or unspecified is refused unless an
  `allow_addresses` entry lists it. The check is made on the addresses the name
  resolves to, and the caller connects to exactly those addresses, so a name that
  resolves differently a moment later (DNS rebinding) gains nothing.

docs/security.md, "The http action", states what is and is not covered.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES: Final = ("http", "https")
POLICY_VARIABLE: Final = "SUPERVISE_HTTP_POLICY"
"""The environment variable in which the supervisor gives an http action worker its request and policy (JSON)."""
_SHARED_ADDRESS_SPACE: Final = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT; some clouds' metadata


class UrlRefused(ValueError):
    """A URL, or an address it resolves to, is outside the policy; the message says why and what to change."""


def check_url(url: str) -> urllib.parse.SplitResult:
    """Parse `url` and refuse anything but a plain http(s) URL to a host.

    Raises:
        UrlRefused: another scheme, no host, credentials in the URL, or a bad port.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UrlRefused(f"not a valid URL: {e}") from None
    if parts.scheme.lower() not in SCHEMES:
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise UrlRefused(f"only http:// and https:// URLs are allowed, got {shown}")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("credentials in the URL (user:password@) are refused; send them in a header instead")
    if not parts.hostname:
        raise UrlRefused("the URL has no host")
    del port
    return parts


def origin(parts: urllib.parse.SplitResult) -> tuple[str, int]:
    """(host, port) of a checked URL, the port filled in from the scheme."""
    assert parts.hostname is not None
    default = 443 if parts.scheme.lower() == "https" else 80
    return parts.hostname.lower(), parts.port or default


@dataclass(frozen=True, slots=True)
class AllowedAddress:
    """One `allow_addresses` entry: a network (a single address is a /32 or /128), and a port or any."""

    network: IPNetwork
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> AllowedAddress:
        """Read `"127.0.0.1"`, `"10.0.0.0/8"`, `"10.1.2.3:8080"`, `"::1"`, `"[fd00::/8]:443"`.

        Raises:
            ValueError: naming the entry and the accepted forms.
        """
        example = '"127.0.0.1/32", "10.1.2.3:8080", "[::1]:8080" or "fd00::/8"'
        address, port_text = text.strip(), None
        bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d{1,5}))?", address)
        if bracketed is not None:
            address, port_text = bracketed[1], bracketed[2]
        elif address.count(":") == 1:  # IPv4 (or network) with a port; bare IPv6 has two or more
            address, _, port_text = address.partition(":")
            if not port_text.isdigit():
                raise ValueError(f"{text!r}: expected a port number after the colon, like {example}")
        try:
            network = ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise ValueError(
                f"{text!r} is not an IP address or network (host names are not accepted); use {example}"
            ) from None
        port = int(port_text) if port_text is not None else None
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: port must be 1-65535")
        return cls(network, port)

    def matches(self, address: IPAddress, port: int) -> bool:
        return address.version == self.network.version and address in self.network and self.port in (None, port)

    def __str__(self) -> str:
        net = str(self.network) if self.network.num_addresses > 1 else str(self.network.network_address)
        if self.port is None:
            return net
        return f"[{net}]:{self.port}" if self.network.version == 6 else f"{net}:{self.port}"


def parse_allow_list(entries: object) -> tuple[AllowedAddress, ...]:
    """An `allow_addresses` value (a list of strings) as entries; ValueError names the bad one."""
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, str) for e in entries):
        raise ValueError(f'expected a list of strings like ["127.0.0.1/32", "10.1.2.3:8080"], got {entries!r}')
    return tuple(AllowedAddress.parse(e) for e in entries)


def special_use(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address ("loopback", "private", ...), or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return special_use(embedded)
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("shared (100.64.0.0/10)", isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE),
        ("unique-local", isinstance(address, ipaddress.IPv6Address) and address in ipaddress.IPv6Network("fc00::/7")),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    )
    return next((name for name, hit in checks if hit), None)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Where a request that the policy applies to may connect."""

    block_private: bool = True
    allow: tuple[AllowedAddress, ...] = ()

    def refusal(self, address: IPAddress, port: int) -> str | None:
        """Why connecting to `address`:`port` is refused, or None when it is allowed."""
        if not self.block_private or any(entry.matches(address, port) for entry in self.allow):
            return None
        kind = special_use(address)
        if kind is None:
            return None
        return f"{address} is a {kind} address"

    def resolve(self, host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
        """The allowed `(family, sockaddr)`s of `host`, resolved once; connect to these and nothing else.

        Raises:
            UrlRefused: every address `host` resolves to is refused.
            OSError: the name does not resolve.
        """
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        allowed, refused = self.split(((info[0], str(info[4][0])) for info in infos), port)
        if not allowed:
            raise refusal_error(host, port, refused)
        return [(family, (address, port)) for family, address in allowed]

    def split(
        self, found: Iterable[tuple[socket.AddressFamily, str]], port: int
    ) -> tuple[list[tuple[socket.AddressFamily, str]], list[str]]:
        """Resolved addresses into the allowed ones and the reasons the others are refused."""
        allowed: list[tuple[socket.AddressFamily, str]] = []
        refused: list[str] = []
        for family, text in dict.fromkeys(found):
            address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
            reason = self.refusal(address, port)
            if reason is None:
                allowed.append((family, text))
            else:
                refused.append(reason)
        return allowed, refused


def refusal_error(host: str, port: int, reasons: Sequence[str]) -> UrlRefused:
    """The error for `host`:`port` whose every address was refused, saying how to allow it."""
    return UrlRefused(
        f"{host}:{port} is refused: {'; '.join(dict.fromkeys(reasons))} (block_private_addresses; "
        f'list it in allow_addresses, e.g. "{_example(reasons, port)}", to allow it)'
    )


def _example(reasons: Sequence[str], port: int) -> str:
    address = reasons[0].split(" ", 1)[0] if reasons else "127.0.0.1"
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
