"""Index rows → DICOM JSON objects, shared by the SQLite and PostgreSQL indexes."""

from __future__ import annotations

from typing import Any

import orjson

from dicomweb_server.domain.attributes import Level

__all__ = ["merge_attributes", "search_row"]


def merge_attributes(stored: bytes | str, new: dict[str, Any]) -> bytes:
    """Keep what the first instance stored; fill attributes later instances add."""
    current: dict[str, Any] = orjson.loads(stored)
    added = {k: v for k, v in new.items() if k not in current}
    if not added:
        return stored if isinstance(stored, bytes) else stored.encode()
    current.update(added)
    return orjson.dumps(dict(sorted(current.items())))


def _values(vr: str, values: list[Any]) -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def search_row(level: Level, row: tuple[Any, ...] | Any) -> dict[str, Any]:
    """One search row (see index/sql.py's SELECT lists) as a DICOM JSON object."""
    result: dict[str, Any] = orjson.loads(row[0])
    modalities = [m for m in str(row[1]).split("\\") if m]
    sop_classes = [c for c in str(row[2]).split("\\") if c]
    result["00080061"] = _values("CS", modalities)
    result["00080062"] = _values("UI", sop_classes)
    result["00201206"] = {"vr": "IS", "Value": [int(row[3])]}
    result["00201208"] = {"vr": "IS", "Value": [int(row[4])]}
    if level is not Level.STUDY:
        result.update(orjson.loads(row[6]))
        result["00201209"] = {"vr": "IS", "Value": [int(row[7])]}
    if level is Level.INSTANCE:
        result.update(orjson.loads(row[9]))
    result["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    return result
