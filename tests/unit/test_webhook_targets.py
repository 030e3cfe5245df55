"""services/webhook_targets.py (issue 20): which webhook addresses are refused, and why."""

from __future__ import annotations

import ipaddress

import pytest

from dicomweb_server.errors import BadRequestError
from dicomweb_server.services.webhook_targets import address_problem, check_url, host_problem


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:169.254.169.254", "metadata"),  # IPv4-mapped
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "not a host"),
        ("224.0.0.1", "not a host"),
    ],
)
def test_issue20_refused_addresses(address: str, reason: str) -> None:
    problem = address_problem(ipaddress.ip_address(address), allow_private=False)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.10", "fd12::1", "93.184.216.34"])
def test_issue20_private_and_public_networks_are_allowed(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), allow_private=False) is None


def test_issue20_allow_private_lifts_all_but_non_host_addresses() -> None:
    for address in ("169.254.169.254", "fe80::1", "127.0.0.1"):
        assert address_problem(ipaddress.ip_address(address), allow_private=True) is None
    assert address_problem(ipaddress.ip_address("0.0.0.0"), allow_private=True) is not None


def test_issue20_hosts_and_urls() -> None:
    assert host_problem("metadata.google.internal.", False) is not None
    assert host_problem("METADATA.GOOGLE.INTERNAL", True) is None
    assert host_problem("[fe80::1]", False) is not None
    assert host_problem("example.org", False) is None
    assert check_url("https://ai.example.org/hook", False) == "ai.example.org"
    for url in (
        "file:///etc/passwd",
        "http:///x",
        "https://a:b@example.org/",
        "http://169.254.169.254/",
        # A port out of range was taken, then every delivery failed before it was tried.
        "http://10.255.255.1:99999/hook",
        "http://10.0.0.1:abc/x",
        "http://10.0.0.1:0/x",
        "https://ai.example.org/" + "x" * 2048,
    ):
        with pytest.raises(BadRequestError):
            check_url(url, False)
