"""Where a webhook may point: never at link-local, cloud metadata or loopback addresses unless
explicitly allowed (a webhook is a request the server makes on an administrator's word; it
must not become a way to reach the metadata service of the machine it runs on).

The URL is checked when the subscription is added and again on every delivery: the name is
resolved and every address checked, and the connection goes to the addresses checked (the
resolver below is the one the HTTP client uses), so a name that later resolves elsewhere
(DNS rebinding) is caught. Private (RFC 1918, unique local) addresses are allowed: receivers
usually sit on the hospital's own network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp import ThreadedResolver
from aiohttp.abc import AbstractResolver, ResolveResult

from dicomweb_server.errors import BadRequestError

__all__ = [
    "MAX_URL_LENGTH",
    "CheckedResolver",
    "TargetRefusedError",
    "address_problem",
    "check_url",
    "host_problem",
    "resolve_and_check",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services: AWS, GCP and Azure (IPv4 and AWS's IPv6), AWS ECS task
# metadata, Alibaba Cloud.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog"})


class TargetRefusedError(OSError):
    """The webhook's address is one we refuse to connect to."""


def address_problem(address: IPAddress, allow_private: bool) -> str | None:
    """Why connecting to `address` is refused, or None when it is fine."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast:
        return f"{address} is not a host address"
    if allow_private:
        return None
    if address in _METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if address.is_link_local:
        return f"{address} is link-local"
    if address.is_loopback:
        return f"{address} is a loopback address"
    return None


def host_problem(host: str, allow_private: bool) -> str | None:
    """Why the URL host itself (a name or an address literal) is refused, or None."""
    name = host.strip("[]").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if not allow_private and name in _METADATA_NAMES:
            return f"{name} is a cloud metadata service"
        return None
    return address_problem(address, allow_private)


# Longer URLs are refused by many servers (414) and would be retried until dead-lettered.
MAX_URL_LENGTH = 2048


def check_url(url: str, allow_private: bool) -> str:
    """The host of an acceptable webhook URL; BadRequestError with the reason otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise BadRequestError(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequestError(f"webhook URL {url[:200]!r} must be http:// or https:// with a host")
    try:
        port = parts.port  # urlsplit checks the port only when asked for it
    except ValueError:
        port = 0
    if port == 0:
        raise BadRequestError(f"webhook URL {url[:200]!r} has no valid port (1 to 65535)")
    if parts.username is not None or parts.password is not None:
        raise BadRequestError(
            "webhook URL must not carry credentials (they would be stored and listed);"
            " receivers authenticate deliveries by their signature"
        )
    problem = host_problem(parts.hostname, allow_private)
    if problem is not None:
        raise BadRequestError(f"webhook URL refused: {problem} (--allow-private allows it)")
    return parts.hostname


async def resolve_and_check(host: str, allow_private: bool) -> list[str]:
    """Every address `host` resolves to, each checked; BadRequestError naming the first
    refused one or the resolution failure."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise BadRequestError(f"webhook host {host!r} does not resolve ({exc})") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    for text in addresses:
        problem = address_problem(ipaddress.ip_address(text.split("%")[0]), allow_private)
        if problem is not None:
            raise BadRequestError(
                f"webhook URL refused: {host} resolves to {problem} (--allow-private allows it)"
            )
    return addresses


class CheckedResolver(AbstractResolver):
    """The HTTP client's resolver: resolves as usual, then refuses the whole name if any of
    its addresses is refused, so a connection only ever goes to an address checked here."""

    def __init__(self, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        problem = host_problem(host, self._allow_private)
        if problem is not None:
            raise TargetRefusedError(f"refused: {problem}")
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(str(result["host"]).split("%")[0])
            problem = address_problem(address, self._allow_private)
            if problem is not None:
                raise TargetRefusedError(f"refused: {host} resolves to {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()
