"""`create_app` is a plain ASGI app (issue 14): under a second ASGI server (hypercorn) the core
STOW, QIDO and WADO answers are the same as under uvicorn, byte for byte (multipart bodies
compared part by part: their boundaries are random)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10, uid
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from live import serving

from dicomweb_server.app import create_app
from dicomweb_server.config import Settings

ROOT = "http://dicomweb.test/dicomweb"  # both servers name the same root in their answers
INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _hypercorn(settings: Settings) -> Iterator[str]:
    """The app on hypercorn in a thread; yields its base URL."""
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{settings.port}"]
    config.loglevel = "WARNING"
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        await hypercorn_serve(create_app(settings), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}/dicomweb"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/studies", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("hypercorn did not start") from None
            time.sleep(0.05)
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()


def _exchange(url: str, files: list[bytes], study: str, series: str) -> list[object]:
    """The same requests against a server; its answers in a comparable form."""
    body, content_type = multipart_body(files)
    with httpx.Client(base_url=url, timeout=60) as client:
        stow = client.post("/studies", content=body, headers={"Content-Type": content_type})
        answers: list[object] = [stow.status_code, stow.content]
        for path in (
            "/studies?PatientID=PAT-1&includefield=all",
            f"/studies/{study}/series",
            f"/studies/{study}/series/{series}/instances?limit=2&offset=1",
            f"/studies/{study}/metadata",
        ):
            response = client.get(path, headers={"Accept-Encoding": "identity"})
            answers += [
                path,
                response.status_code,
                response.headers["content-type"],
                response.content,
            ]
        for accept in (INSTANCES, EXPLICIT):
            response = client.get(f"/studies/{study}", headers={"Accept": accept})
            answers += [
                accept,
                response.status_code,
                response.headers["content-type"].split(";")[0],
                parse_multipart(response.content, response.headers["content-type"]),
            ]
        frames = client.get(
            f"/studies/{study}/series/{series}/instances/{_sop(files[0])}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        answers += [
            frames.status_code,
            parse_multipart(frames.content, frames.headers["content-type"]),
        ]
        missing = client.get(f"/studies/{uid()}")
        answers += [missing.status_code, missing.json()["reason"][:20]]
    return answers


def _sop(data: bytes) -> str:
    from io import BytesIO

    from pydicom import dcmread

    return str(dcmread(BytesIO(data)).SOPInstanceUID)


def test_issue14_hypercorn_answers_like_uvicorn(tmp_path: Path) -> None:
    study, series = uid(), uid()
    files = [
        to_part10(
            ct_dataset(
                study, series, rows=64, columns=64, instance_number=n, seed=n, patient_id="PAT-1"
            )
        )
        for n in range(4)
    ]
    answers = []
    for name, server in (("uvicorn", None), ("hypercorn", _hypercorn)):
        settings = Settings(data_dir=tmp_path / name, port=_free_port(), base_url=ROOT)
        if server is None:
            with serving(settings):
                answers.append(
                    _exchange(f"http://127.0.0.1:{settings.port}/dicomweb", files, study, series)
                )
        else:
            with server(settings) as url:
                answers.append(_exchange(url, files, study, series))
    uvicorn_answers, hypercorn_answers = answers
    assert uvicorn_answers[0] == 200
    assert len(uvicorn_answers) == len(hypercorn_answers)
    for ours, theirs in zip(uvicorn_answers, hypercorn_answers, strict=True):
        assert ours == theirs
