"""Issue 20 as operations see it: `dicomweb-server webhook ...` commands, and a real
`dicomweb-server serve` (two workers) killed with SIGKILL in the middle of delivering, then
restarted: every event still arrives at least once, in order per study.

DICOMWEB_TEST_EVENTS_CRASH_INSTANCES sets how many instances the crash test stores (default
1000, so it stays well under a minute; the issue's figure, 10000, was run by hand).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from dicomfiles import ct_dataset, multipart_body, to_part10, uid
from webhook_receiver import Delivery, Receiver, receiving

from dicomweb_server.config import Settings

SECRET_VARIABLE = "DICOMWEB_TEST_HOOK_SECRET"
STUDY_SIZE = 50


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The process environment for `serve` and the CLI: the backends of `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    values = {
        "data_dir": str(settings.data_dir),
        "database_url": settings.database_url,
        "storage_url": settings.storage_url,
        "s3_endpoint_url": settings.s3_endpoint_url,
        **extra,
    }
    env.update({f"DICOMWEB_{k.upper()}": v for k, v in values.items() if v})
    env[SECRET_VARIABLE] = "crash-test-secret"
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server", "webhook", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_issue20_webhook_commands_add_list_replay_remove(settings: Settings) -> None:
    env = _environment(settings)
    unset = _cli(
        {k: v for k, v in env.items() if k != SECRET_VARIABLE},
        "add",
        "--url",
        "http://127.0.0.1:9/hook",
        "--secret-env",
        SECRET_VARIABLE,
        "--allow-private",
    )
    assert unset.returncode == 2 and "is not set" in unset.stderr
    refused = _cli(env, "add", "--url", "http://169.254.169.254/", "--secret-env", SECRET_VARIABLE)
    assert refused.returncode == 2 and "metadata" in refused.stderr
    added = _cli(
        env,
        "add",
        "--url",
        "http://127.0.0.1:9/hook",
        "--secret-env",
        SECRET_VARIABLE,
        "--events",
        "instance.created,study.stable",
        "--modality",
        "CT",
        "MR",
        "--site",
        "default",
        "--allow-private",
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("webhook 1: http://127.0.0.1:9/hook receives")
    listed = _cli(env, "list")
    assert listed.returncode == 0
    line = listed.stdout.splitlines()[0]
    for part in (
        "http://127.0.0.1:9/hook",
        "site=default",
        "events=instance.created,study.stable",
        "modalities=CT,MR",
        f"secret=${SECRET_VARIABLE}",
        "pending=0",
        "delivered=0",
        "dead=0",
    ):
        assert part in line
    assert "crash-test-secret" not in listed.stdout
    replayed = _cli(env, "replay", "1", "--since", "2h")
    assert replayed.returncode == 0 and "0 event(s)" in replayed.stdout
    assert _cli(env, "remove", "1").returncode == 0
    assert _cli(env, "remove", "1").returncode == 1


@contextmanager
def _serving(env: dict[str, str], url: str) -> Iterator[subprocess.Popen[bytes]]:
    """`serve` with two workers in a session of its own (so SIGKILL reaches every worker)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomweb_server", "serve", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 40
    try:
        while True:
            try:
                httpx.get(url + "/studies?limit=1", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def _kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the supervisor and both workers, at once
    process.wait(timeout=10)


def test_issue20_no_event_is_lost_when_the_server_is_killed_mid_delivery(
    settings: Settings,
) -> None:
    total = int(os.environ.get("DICOMWEB_TEST_EVENTS_CRASH_INSTANCES", "1000"))
    studies = [uid() for _ in range(max(total // STUDY_SIZE, 1))]
    port = _free_port()
    url = f"http://127.0.0.1:{port}/dicomweb"
    env = _environment(
        settings,
        port=str(port),
        base_url=url,
        events_poll_seconds="0.1",
        webhook_timeout="1",
        webhook_retry_seconds="0.1",
        study_stable_seconds="1",
    )
    flowing = threading.Event()  # closed: the receiver answers 503 (deliveries wait)

    def answer(delivery: Delivery, attempt: int) -> int | tuple[str, float]:
        return ("sleep", 0.003) if flowing.is_set() else 503

    with receiving(Receiver(answer)) as receiver:
        added = _cli(
            env, "add", "--url", receiver.url, "--secret-env", SECRET_VARIABLE, "--allow-private"
        )
        assert added.returncode == 0, added.stderr
        stored: dict[str, list[str]] = {}
        with _serving(env, url) as server:
            with httpx.Client(base_url=url, timeout=60) as client:
                for study in studies:
                    datasets = [
                        ct_dataset(study, rows=8, columns=8, instance_number=i + 1)
                        for i in range(STUDY_SIZE)
                    ]
                    body, content_type = multipart_body([to_part10(ds) for ds in datasets])
                    response = client.post(
                        "/studies", content=body, headers={"Content-Type": content_type}
                    )
                    assert response.status_code == 200
                    stored[study] = [str(ds.SOPInstanceUID) for ds in datasets]
            flowing.set()
            expected = len(studies) * (STUDY_SIZE + 1)  # each instance, and study.stable
            deadline = time.monotonic() + 60
            while len(set(receiver.ids())) < expected // 3:
                assert time.monotonic() < deadline, "deliveries did not start"
                time.sleep(0.01)
            _kill(server)
        before_restart = len(set(receiver.ids()))
        assert before_restart < expected  # killed in the middle of delivering
        with _serving(env, url):
            deadline = time.monotonic() + 120 + total / 50
            while len(set(receiver.ids())) < expected:
                assert time.monotonic() < deadline, (
                    f"{len(set(receiver.ids()))} of {expected} delivered"
                )
                time.sleep(0.1)
        with receiver.lock:
            accepted = [d.event for d in receiver.accepted]
    first: dict[str, dict[str, object]] = {}
    for event in accepted:
        first.setdefault(event["id"], event)
    created = [e for e in first.values() if e["type"] == "org.dicomweb.instance.created"]
    stable = [e for e in first.values() if e["type"] == "org.dicomweb.study.stable"]
    assert sorted(e["data"]["SopInstanceUid"] for e in created) == sorted(  # type: ignore[index]
        sop for sops in stored.values() for sop in sops
    )
    assert sorted(e["data"]["StudyInstanceUid"] for e in stable) == sorted(studies)  # type: ignore[index]
    assert {e["data"]["NumberOfStudyRelatedInstances"] for e in stable} == {STUDY_SIZE}  # type: ignore[index]
    # In order per study: first arrivals of each study's events have rising sequences.
    for study in studies:
        ids = [int(str(e["id"])) for e in first.values() if e["data"]["StudyInstanceUid"] == study]  # type: ignore[index]
        assert ids == sorted(ids)
    duplicates = len(accepted) - len(first)
    print(f"{expected} events, {before_restart} before SIGKILL, {duplicates} delivered twice")
