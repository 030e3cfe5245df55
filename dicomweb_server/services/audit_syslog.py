"""Forwarding audit records to an IHE ATNA audit repository over syslog (issue 17).

Each record becomes a DICOM audit message (PS3.15 A.5, domain/audit_message.py) in an RFC 5424
frame: `<85>1 TIMESTAMP HOSTNAME dicomweb-server PROCID IHE+RFC-3881 - BOM<xml>` (facility 10
security/authorization, severity 5 notice, and the MSGID IHE ITI-20 gives DICOM-schema
messages). Over UDP each frame is one datagram (RFC 5426); over TCP and TLS (RFC 5425) frames
are octet-counted, `LENGTH SP FRAME` (RFC 6587 3.4.1).

The audit writer hands written records to `submit`, which never waits: a task of its own sends
them, keeps at most `queue_limit` unsent messages (the oldest are dropped, counted and logged),
and reconnects with a growing pause after a failure, so a slow or absent repository costs the
server nothing but that buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlparse

from dicomweb_server.domain.audit import AuditRecord
from dicomweb_server.domain.audit_message import audit_message_xml

__all__ = ["SyslogForwarder", "SyslogTarget", "octet_counted", "parse_syslog_url", "syslog_frame"]

log = logging.getLogger("dicomweb_server.audit.syslog")

_PRI = 10 * 8 + 5  # facility 10 (security/authorization), severity 5 (notice)
_APP_NAME = "dicomweb-server"
_MSGID = "IHE+RFC-3881"
_BOM = b"\xef\xbb\xbf"
_DEFAULT_PORTS = {"udp": 514, "tcp": 601, "tls": 6514}
_CONNECT_TIMEOUT = 5.0
_SEND_TIMEOUT = 10.0
_MAX_BACKOFF = 60.0
_CLOSE_TIMEOUT = 5.0  # seconds spent at shutdown sending what is buffered


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    """Where to send: transport (udp, tcp, tls), host and port."""

    transport: str
    host: str
    port: int


def parse_syslog_url(url: str) -> SyslogTarget:
    """`udp://host:514`, `tcp://host:601` or `tls://host:6514` (ports default as shown)."""
    parsed = urlparse(url)
    transport = parsed.scheme.lower()
    if transport not in _DEFAULT_PORTS or not parsed.hostname:
        raise ValueError(
            f"audit syslog URL {url!r} must be udp://host[:port], tcp://host[:port]"
            " or tls://host[:port]"
        )
    return SyslogTarget(transport, parsed.hostname, parsed.port or _DEFAULT_PORTS[transport])


def _header_field(text: str, limit: int) -> str:
    """RFC 5424 header fields are printable US-ASCII without spaces, `-` when empty."""
    cleaned = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def syslog_frame(message: bytes, *, hostname: str, procid: str, at: float) -> bytes:
    """An RFC 5424 syslog message carrying `message` (UTF-8, so it starts with the BOM)."""
    moment = datetime.fromtimestamp(at, UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}Z"
    header = (
        f"<{_PRI}>1 {stamp} {_header_field(hostname, 255)} {_APP_NAME}"
        f" {_header_field(procid, 128)} {_MSGID} -"
    )
    return header.encode("ascii") + b" " + _BOM + message


def octet_counted(frame: bytes) -> bytes:
    """RFC 6587 3.4.1 (and RFC 5425) framing for stream transports."""
    return b"%d %s" % (len(frame), frame)


class SyslogForwarder:
    """Sends audit records to one syslog receiver, from a task of its own (AuditForwarder)."""

    def __init__(
        self,
        target: SyslogTarget,
        *,
        source: str,
        queue_limit: int = 10_000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._target = target
        self._source = source
        self._limit = queue_limit
        self._ssl = ssl_context
        if target.transport == "tls" and ssl_context is None:
            self._ssl = ssl.create_default_context()
        self._hostname = socket.getfqdn()
        self._procid = str(os.getpid())
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self.sent = 0
        self.dropped = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        source: str,
        queue_limit: int = 10_000,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
    ) -> SyslogForwarder:
        """The forwarder DICOMWEB_AUDIT_SYSLOG_URL names; for tls://, the CA file to trust
        (default: the system's) and the client certificate ATNA's mutual TLS asks for."""
        target = parse_syslog_url(url)
        context = None
        if target.transport == "tls":
            context = ssl.create_default_context(cafile=ca_file or None)
            if cert_file:
                context.load_cert_chain(cert_file, key_file or None)
        return cls(target, source=source, queue_limit=queue_limit, ssl_context=context)

    def submit(self, records: Sequence[AuditRecord]) -> None:
        """Queue a message per record; never waits."""
        for record in records:
            xml = audit_message_xml(record, self._source, self._hostname)
            self._queue.append(
                syslog_frame(xml, hostname=self._hostname, procid=self._procid, at=time.time())
            )
        overflow = len(self._queue) - self._limit
        if overflow > 0:
            for _ in range(overflow):
                self._queue.popleft()
            self.dropped += overflow
            log.warning(
                "audit syslog buffer full: %d messages dropped (%d in all)", overflow, self.dropped
            )
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="audit-syslog")

    async def close(self) -> None:
        """Send what is buffered (for a few seconds at most), then disconnect."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        try:
            await asyncio.wait_for(task, _CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("audit syslog: %d messages unsent at shutdown", len(self._queue))
        await self._disconnect()

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            try:
                await self._send_queued()
                backoff = 1.0
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                await self._disconnect()
                if self._closing:
                    return
                log.warning(
                    "audit syslog to %s://%s:%d failed (%s); retrying in %gs",
                    self._target.transport,
                    self._target.host,
                    self._target.port,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _send_queued(self) -> None:
        if self._target.transport == "udp":
            transport = await self._datagram()
            while self._queue:
                transport.sendto(self._queue[0])
                self._queue.popleft()
                self.sent += 1
            return
        writer = await self._stream()
        while self._queue:
            frame = self._queue[0]
            writer.write(octet_counted(frame))
            await asyncio.wait_for(writer.drain(), _SEND_TIMEOUT)
            self._queue.popleft()  # handed to the kernel: at most this one is lost on a reset
            self.sent += 1

    async def _datagram(self) -> asyncio.DatagramTransport:
        if self._udp is None or self._udp.is_closing():
            loop = asyncio.get_running_loop()
            self._udp, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(self._target.host, self._target.port)
            )
        return self._udp

    async def _stream(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self._target.host,
                self._target.port,
                ssl=self._ssl if self._target.transport == "tls" else None,
            ),
            _CONNECT_TIMEOUT,
        )
        self._writer = writer
        return writer

    async def _disconnect(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
