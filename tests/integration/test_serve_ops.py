"""`dicomweb-server serve` run as a service (issue 21): metrics add up over workers, logs can
be JSON, and SIGTERM lets a STOW in flight finish and be stored before the server exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from dicomfiles import ct_dataset, multipart_body, to_part10
from live import reach_every_worker
from prometheus_client.parser import text_string_to_metric_families


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DICOMWEB_", "OTEL_", "PROMETHEUS_"))
    }
    env.update({f"DICOMWEB_{name.upper()}": value for name, value in settings.items()})
    env["TMPDIR"] = str(tmp_path / "tmp")  # where serve makes its metrics directory
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


@contextmanager
def _serving(
    tmp_path: Path, port: int, log: Path, workers: str = "2", **settings: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`dicomweb-server serve` with two workers until the block ends; output goes to `log`."""
    command = [sys.executable, "-m", "dicomweb_server", "serve", "--port", str(port)]
    env = _env(tmp_path, data_dir=str(tmp_path / "data"), workers=workers, **settings)
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()}")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=60)


def _count(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_issue21_metrics_are_the_servers_not_one_workers(tmp_path: Path) -> None:
    port = _free_port()
    root = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with _serving(tmp_path, port, log) as process:
        probes = reach_every_worker(root + "/dicomweb/studies?limit=1")
        clients = [httpx.Client() for _ in range(6)]  # kept-alive connections, spread out
        for _ in range(5):
            for client in clients:
                assert client.get(root + "/dicomweb/studies?limit=1").status_code == 200
        for client in clients:
            client.close()
        scrapes = [httpx.get(root + "/metrics").text for _ in range(4)]
        (metrics_dir,) = (tmp_path / "tmp").glob("dicomweb-metrics-*")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    output = log.read_text()
    pids = {
        line.split("[", 1)[1].split("]", 1)[0] for line in output.splitlines() if ".access " in line
    }
    assert len(pids) == 2, output  # both workers served searches...
    for text in scrapes:  # ...and whichever worker answers the scrape counts all of them
        count = _count(
            text, "dicomweb_request_duration_seconds_count", transaction="search", status="2xx"
        )
        assert count == 30 + probes, text
        assert _count(text, "dicomweb_build_info") == 1
    assert not metrics_dir.exists()  # a fresh directory per run, removed at exit


def test_issue21_json_logs_are_one_object_per_line_for_ours_and_uvicorns(tmp_path: Path) -> None:
    port = _free_port()
    root = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with _serving(tmp_path, port, log, log_format="json") as process:
        assert httpx.get(root + "/dicomweb/studies?PatientID=SECRET-PHI").status_code == 200
        assert httpx.get(root + "/healthz").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = []
    for line in lines:  # the CLI's own banner on stdout too
        entries.append(json.loads(line))
    assert any(e["message"].startswith("dicomweb-server: serving") for e in entries)
    assert "SECRET-PHI" not in log.read_text()  # never a query string
    for entry in entries:
        assert {"time", "level", "logger", "message", "pid"} <= set(entry), entry
        assert entry["time"].endswith("Z")
    uvicorn = [e for e in entries if e["logger"].startswith("uvicorn")]
    assert any("Started server process" in e["message"] for e in uvicorn), entries
    access = [e for e in entries if e["logger"] == "dicomweb_server.access"]
    search = next(e for e in access if e["path"] == "/dicomweb/studies")
    assert search["method"] == "GET"
    assert search["status"] == 200
    assert search["site"] == "default"
    assert isinstance(search["duration_ms"], float)
    assert len(search["request_id"]) == 16
    assert search["request_id"] in search["message"]


def _http_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ")[1]), body


def test_issue21_sigterm_lets_a_stow_in_flight_finish_and_be_stored(tmp_path: Path) -> None:
    port = _free_port()
    root = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    ds = ct_dataset(rows=256, columns=256)
    body, content_type = multipart_body([to_part10(ds)])
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with _serving(tmp_path, port, log, shutdown_grace_seconds="30") as process:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(head + body[:1000])
            time.sleep(0.5)  # the request is being read by a worker
            process.send_signal(signal.SIGTERM)
            time.sleep(1.5)
            # Stopped accepting: a new connection is refused while the STOW goes on
            refused = False
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not refused:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    time.sleep(0.2)
                except OSError:
                    refused = True
            assert refused, log.read_text()
            assert process.poll() is None  # still waiting for the STOW
            for start in range(1000, len(body), 32768):  # the rest, slowly
                sock.sendall(body[start : start + 32768])
                time.sleep(0.05)
            status, answer = _http_response(sock)
        assert status == 200, answer
        assert process.wait(timeout=60) == 0, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output, output

    with _serving(tmp_path, port, log) as process:  # restarted: the instance is there
        instance = (
            f"{root}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/metadata"
        )
        assert httpx.get(instance).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_issue21_sigterm_with_one_worker_exits_0(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "server.log"
    with _serving(tmp_path, port, log, workers="1") as process:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()


def test_issue21_a_request_cut_off_by_the_grace_period_is_one_warning(tmp_path: Path) -> None:
    """A STOW whose body stops coming outlives DICOMWEB_SHUTDOWN_GRACE_SECONDS: it is cut off
    with one warning line naming the setting, no traceback, and the server still exits 0."""
    port = _free_port()
    log = tmp_path / "server.log"
    body, content_type = multipart_body([to_part10(ct_dataset(rows=64, columns=64))])
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with (
        _serving(tmp_path, port, log, workers="1", shutdown_grace_seconds="1") as process,
        socket.create_connection(("127.0.0.1", port), timeout=60) as sock,
    ):
        sock.sendall(head + body[:1000])
        time.sleep(0.5)  # the request is being read
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output
    cut = [line for line in output.splitlines() if "DICOMWEB_SHUTDOWN_GRACE_SECONDS" in line]
    assert len(cut) == 1 and " WARNING " in cut[0], output
