"""The SSRF policy of the http action: URL shape, special-use addresses, allow-list entries, resolution."""

from __future__ import annotations

import ipaddress

import pytest

from supervise.protocol.url_policy import (
    AddressPolicy,
    AllowedAddress,
    UrlRefused,
    check_url,
    origin,
    parse_allow_list,
    special_use,
)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://user:tok@host/x", "only http:// and https://"),
        ("file:///etc/shadow", "only http:// and https://"),
        ("gopher://host/", "only http:// and https://"),
        ("//host/x", "no scheme"),
        ("https://user:secret@example.com/", "credentials in the URL"),
        ("https://token@example.com/", "credentials in the URL"),
        ("http:///path-only", "no host"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_check_url_refuses(url: str, problem: str) -> None:
    with pytest.raises(UrlRefused, match=problem):
        check_url(url)


def test_check_url_accepts_plain_http_and_https_and_gives_the_origin() -> None:
    assert origin(check_url("HTTPS://Example.COM/a?b=c")) == ("example.com", 443)
    assert origin(check_url("http://10.0.0.1:8080/")) == ("10.0.0.1", 8080)
    assert origin(check_url("http://[::1]/")) == ("::1", 80)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "unique-local"),
        ("100.100.100.200", "shared (100.64.0.0/10)"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_special_use_addresses(address: str, kind: str) -> None:
    assert special_use(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_not_special(address: str) -> None:
    assert special_use(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("text", "network", "port"),
    [
        ("127.0.0.1/32", "127.0.0.1/32", None),
        ("127.0.0.1", "127.0.0.1/32", None),
        ("10.1.2.3:8080", "10.1.2.3/32", 8080),
        ("10.0.0.0/8", "10.0.0.0/8", None),
        ("10.0.0.0/8:443", "10.0.0.0/8", 443),
        ("::1", "::1/128", None),
        ("[::1]:8080", "::1/128", 8080),
        ("fd00::/8", "fd00::/8", None),
    ],
)
def test_allow_list_entries(text: str, network: str, port: int | None) -> None:
    entry = AllowedAddress.parse(text)
    assert (str(entry.network), entry.port) == (network, port)


@pytest.mark.parametrize(
    "text", ["localhost", "localhost:80", "10.1.2.3:http", "10.1.2.3:70000", "[::1", "", "300.1.1.1"]
)
def test_bad_allow_list_entries_are_named(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("[", r"\[") if text else "IP address"):
        AllowedAddress.parse(text)


def test_parse_allow_list_wants_a_list_of_strings() -> None:
    assert len(parse_allow_list(["127.0.0.1", "[::1]:80"])) == 2
    with pytest.raises(ValueError, match="expected a list of strings"):
        parse_allow_list("127.0.0.1")


def test_the_policy_refuses_special_addresses_unless_listed_with_a_matching_port() -> None:
    policy = AddressPolicy(allow=parse_allow_list(["127.0.0.1:8080", "10.0.0.0/8"]))
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.refusal(loopback, 8080) is None
    assert policy.refusal(loopback, 8081) == "127.0.0.1 is a loopback address"
    assert policy.refusal(ipaddress.ip_address("10.9.9.9"), 1) is None
    assert policy.refusal(ipaddress.ip_address("169.254.169.254"), 80) == "169.254.169.254 is a link-local address"
    assert policy.refusal(ipaddress.ip_address("1.1.1.1"), 80) is None
    assert AddressPolicy(block_private=False).refusal(loopback, 1) is None


def test_resolve_checks_what_the_name_resolves_to() -> None:
    with pytest.raises(UrlRefused, match=r"localhost:8080 is refused: .*loopback.*allow_addresses"):
        AddressPolicy().resolve("localhost", 8080)
    allowed = AddressPolicy(allow=parse_allow_list(["127.0.0.1/32"])).resolve("localhost", 8080)
    assert [sockaddr for _, sockaddr in allowed] == [("127.0.0.1", 8080)]  # ::1 is not listed: not connected to
    with pytest.raises(UrlRefused, match="169.254.169.254 is a link-local address"):
        AddressPolicy().resolve("169.254.169.254", 80)
