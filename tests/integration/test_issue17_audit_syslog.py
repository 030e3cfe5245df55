"""Audit forwarding (issue 17): a local UDP and a TCP syslog receiver get RFC 5424 frames
(octet-counted over TCP, RFC 6587) carrying DICOM audit messages valid against the rules of
the PS3.15 A.5.1 schema (element order and cardinality, required attributes, enumerations,
datatypes), with the expected event codes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from dicomfiles import ct_dataset, multipart_body, to_part10

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings
from dicomweb_server.services.audit_syslog import octet_counted, syslog_frame

BASE = "http://testserver/dicomweb"
_FRAME = re.compile(
    rb"<85>1 (?P<stamp>\S+) (?P<host>\S+) dicomweb-server (?P<pid>[0-9]+) IHE\+RFC-3881 - "
    rb"\xef\xbb\xbf(?P<msg><\?xml .*)\Z",
    re.DOTALL,
)


class _Receiver:
    """A syslog receiver on a loopback port: UDP datagrams, or a TCP octet-counted stream."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.port = 0
        self._closers: list[asyncio.AbstractServer | asyncio.BaseTransport] = []

    async def start_udp(self) -> None:
        receiver = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                receiver.frames.append(data)

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
        self.port = transport.get_extra_info("sockname")[1]
        self._closers.append(transport)

    async def start_tcp(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    length = await reader.readuntil(b" ")
                    assert length[:-1].isdigit() and not length.startswith(b"0"), length
                    self.frames.append(await reader.readexactly(int(length[:-1])))
            except asyncio.IncompleteReadError as end:
                assert end.partial == b"", "a frame was cut short"
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._closers.append(server)

    def close(self) -> None:
        for closer in self._closers:
            closer.close()


@pytest_asyncio.fixture(params=["udp", "tcp"])
async def receiver(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, _Receiver]]:
    found = _Receiver()
    await (found.start_udp() if request.param == "udp" else found.start_tcp())
    yield f"{request.param}://127.0.0.1:{found.port}", found
    found.close()


# -- the rules of the DICOM audit message schema (PS3.15 A.5.1), checked one by one ----------

_CODED = {"csd-code", "codeSystemName", "displayName", "originalText"}
_CODED_REQUIRED = {"csd-code", "codeSystemName", "originalText"}


def _attributes(element: ET.Element, allowed: set[str], required: set[str]) -> None:
    assert set(element.attrib) <= allowed, (element.tag, set(element.attrib) - allowed)
    assert required <= set(element.attrib), (element.tag, required - set(element.attrib))
    for value in element.attrib.values():
        assert value == " ".join(value.split()) or element.tag.endswith("Description"), value


def _coded(element: ET.Element) -> None:
    _attributes(element, _CODED, _CODED_REQUIRED)
    assert not list(element) and not (element.text or "").strip()


def _sequence(element: ET.Element, pattern: str) -> None:
    """The child element names must match `pattern`, a regular expression over `Name,` items."""
    names = "".join(f"{child.tag}," for child in element)
    assert re.fullmatch(pattern, names), (element.tag, names)


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise AssertionError(f"not base64: {text!r}") from None


def _check_message(root: ET.Element) -> None:
    assert root.tag == "AuditMessage" and not root.attrib
    _sequence(
        root,
        r"EventIdentification,(ActiveParticipant,)+AuditSourceIdentification,"
        r"(ParticipantObjectIdentification,)*",
    )
    event = root[0]
    _attributes(
        event,
        {"EventActionCode", "EventDateTime", "EventOutcomeIndicator"},
        {"EventDateTime", "EventOutcomeIndicator"},
    )
    assert event.get("EventActionCode", "C") in ("C", "R", "U", "D", "E")
    assert event.get("EventOutcomeIndicator") in ("0", "4", "8", "12")
    datetime.fromisoformat(event.attrib["EventDateTime"].replace("Z", "+00:00"))  # xsd:dateTime
    _sequence(event, r"EventID,(EventTypeCode,)*(EventOutcomeDescription,)?")
    for child in event:
        if child.tag != "EventOutcomeDescription":
            _coded(child)
    for participant in root.findall("ActiveParticipant"):
        _attributes(
            participant,
            {
                "UserID",
                "AlternativeUserID",
                "UserName",
                "UserIsRequestor",
                "NetworkAccessPointID",
                "NetworkAccessPointTypeCode",
            },
            {"UserID", "UserIsRequestor"},
        )
        assert participant.get("UserIsRequestor") in ("true", "false", "1", "0")
        assert participant.get("NetworkAccessPointTypeCode", "1") in ("1", "2", "3", "4", "5")
        _sequence(participant, r"(RoleIDCode,)*(MediaIdentifier,)?")
        for role in participant.findall("RoleIDCode"):
            _coded(role)
    source = root.find("AuditSourceIdentification")
    assert source is not None
    _attributes(source, {"AuditEnterpriseSiteID", "AuditSourceID"}, {"AuditSourceID"})
    _sequence(source, r"(AuditSourceTypeCode,)*")
    for code in source:
        assert code.get("csd-code")
        if set(code.attrib) != {"csd-code"}:  # other values need their code system
            _coded(code)
        else:
            assert code.attrib["csd-code"] in [str(n) for n in range(1, 10)]
    for item in root.findall("ParticipantObjectIdentification"):
        _attributes(
            item,
            {
                "ParticipantObjectID",
                "ParticipantObjectTypeCode",
                "ParticipantObjectTypeCodeRole",
                "ParticipantObjectDataLifeCycle",
                "ParticipantObjectSensitivity",
            },
            {"ParticipantObjectID"},
        )
        assert item.get("ParticipantObjectTypeCode", "1") in ("1", "2", "3", "4")
        assert 1 <= int(item.get("ParticipantObjectTypeCodeRole", "1")) <= 26
        _sequence(
            item,
            r"ParticipantObjectIDTypeCode,(ParticipantObjectName,|ParticipantObjectQuery,)"
            r"(ParticipantObjectDetail,)*(ParticipantObjectDescription,)*",
        )
        _coded(item[0])
        query = item.find("ParticipantObjectQuery")
        if query is not None:
            _base64(query.text or "")
        for detail in item.findall("ParticipantObjectDetail"):
            _attributes(detail, {"type", "value"}, {"type", "value"})
            _base64(detail.attrib["value"])


def _frame_message(frame: bytes) -> ET.Element:
    match = _FRAME.match(frame)
    assert match is not None, frame[:120]
    datetime.fromisoformat(match["stamp"].decode().replace("Z", "+00:00"))
    root = ET.fromstring(match["msg"])
    _check_message(root)
    return root


async def test_issue17_audit_syslog_frames_carry_valid_dicom_audit_messages(
    tmp_path: Path, receiver: tuple[str, _Receiver]
) -> None:
    url, received = receiver
    settings = Settings(data_dir=tmp_path / "data", base_url=BASE, audit_syslog_url=url)
    ds = ct_dataset(patient_id="P17-SYS")
    ds.IssuerOfPatientID = "HOSP"
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            body, content_type = multipart_body([to_part10(ds)])
            stored = await client.post(
                f"{BASE}/studies", content=body, headers={"Content-Type": content_type}
            )
            assert stored.status_code == 200
            found = await client.get(f"{BASE}/studies", params={"PatientID": "P17-SYS"})
            assert found.status_code == 200
            metadata = await client.get(f"{BASE}/studies/{ds.StudyInstanceUID}/metadata")
            assert metadata.status_code == 200
    # The lifespan's end wrote the roll-up and sent what was buffered
    for _ in range(50):
        if len(received.frames) >= 5:
            break
        await asyncio.sleep(0.05)
    messages = [_frame_message(frame) for frame in received.frames]
    by_event = {}
    for message in messages:
        event = message[0]
        kinds = [c.get("csd-code") for c in event.findall("EventTypeCode")]
        by_event[(event[0].get("csd-code"), event.get("EventActionCode"), *kinds)] = message
    assert set(by_event) == {
        ("110100", "E", "110120"),  # application start
        ("110104", "C", "RAD-108"),  # STOW
        ("110112", "E", "RAD-129"),  # QIDO
        ("110103", "R", "RAD-107"),  # the metadata read, rolled up
        ("110100", "E", "110121"),  # application stop
    }
    stow = by_event[("110104", "C", "RAD-108")]
    objects = {
        o.get("ParticipantObjectTypeCodeRole"): o
        for o in stow.findall(".//ParticipantObjectIdentification")
    }
    assert objects["1"].get("ParticipantObjectID") == "P17-SYS^^^HOSP"
    assert objects["3"].get("ParticipantObjectID") == ds.StudyInstanceUID
    requestor = stow.find("ActiveParticipant[@UserIsRequestor='true']")
    assert requestor is not None and requestor.get("UserID") == "anonymous"
    query = by_event[("110112", "E", "RAD-129")].find(".//ParticipantObjectQuery")
    assert query is not None and _base64(query.text or "") == b"PatientID"  # no value
    view = by_event[("110103", "R", "RAD-107")]
    details = {
        d.get("type"): _base64(d.get("value", ""))
        for d in view.findall(".//ParticipantObjectDetail")
    }
    assert details["metadata"] == b"1"


def test_issue17_audit_syslog_framing() -> None:
    frame = syslog_frame(b"<?xml version='1.0'?><a/>", hostname="h st", procid="", at=0.5)
    assert frame == (
        b"<85>1 1970-01-01T00:00:00.500000Z hst dicomweb-server - IHE+RFC-3881 - "
        b"\xef\xbb\xbf<?xml version='1.0'?><a/>"
    )
    assert octet_counted(b"abc") == b"3 abc"
