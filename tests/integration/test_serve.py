"""`dicomweb-server serve` as operations see it (issue 14): a failed start exits non-zero with
one line, every worker logs, settings are checked and explained, and when the uvicorn patches
cannot be used the server runs on stock uvicorn."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from dicomfiles import ct_dataset, multipart_body, parse_multipart, to_part10
from live import reach_every_worker

ALL_INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    env.update({f"DICOMWEB_{name.upper()}": value for name, value in settings.items()})
    return env


@contextmanager
def _running(command: list[str], env: dict[str, str], url: str) -> Iterator[subprocess.Popen[str]]:
    """A server process until the block ends; its combined output is read after it stops."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 40
    try:
        while True:
            try:
                httpx.get(url + "/studies", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"server did not start: {process.communicate()[0]}"
                    ) from None
                time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=30)  # reaps it and closes its pipe


def _round_trip(url: str) -> None:
    """Store a study, find it, read it back byte for byte (the preamble is zeroed)."""
    ds = ct_dataset()
    data = to_part10(ds)
    body, content_type = multipart_body([data])
    stored = httpx.post(url + "/studies", content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    found = httpx.get(url + "/studies", params={"PatientID": ds.PatientID}).json()
    assert found[0]["0020000D"]["Value"] == [ds.StudyInstanceUID]
    response = httpx.get(f"{url}/studies/{ds.StudyInstanceUID}", headers={"Accept": ALL_INSTANCES})
    ((_, returned),) = parse_multipart(response.content, response.headers["content-type"])
    assert returned == b"\0" * 128 + data[128:]


def test_issue14_failed_start_with_default_workers_exits_non_zero_with_one_line(
    tmp_path: Path,
) -> None:
    port = _free_port()
    result = subprocess.run(
        [sys.executable, "-m", "dicomweb_server", "serve", "--port", str(port)],
        env=_env(
            data_dir=str(tmp_path),
            database_url=f"postgresql://nobody@127.0.0.1:{_free_port()}/nothing",
            backend_timeout="3",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dicomweb-server: cannot start: ")
    assert "unavailable" in lines[0] or "connect" in lines[0]


def test_issue14_unknown_database_scheme_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomweb_server", "serve", "--port", str(_free_port())],
        env=_env(data_dir=str(tmp_path), database_url="mysql://db/x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "dicomweb-server: cannot start: DICOMWEB_DATABASE_URL scheme 'mysql' is not supported"
        " (use postgresql://... or sqlite:///path)"
    ]


def test_issue14_bad_log_level_and_boolean_are_one_clear_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dicomweb_server", "migrate", "--data-dir", str(tmp_path)]
    level = subprocess.run(
        command, env=_env(log_level="loud"), capture_output=True, text=True, timeout=60
    )
    assert level.returncode == 2
    assert level.stderr.strip() == (
        "dicomweb-server: DICOMWEB_LOG_LEVEL must be one of 'critical', 'error', 'warning',"
        " 'info', 'debug' or 'trace', got 'loud'"
    )
    flag = subprocess.run(
        command, env=_env(frame_cache="maybe"), capture_output=True, text=True, timeout=60
    )
    assert flag.returncode == 2
    assert "DICOMWEB_FRAME_CACHE must be true or false" in flag.stderr
    fine = subprocess.run(
        command,
        env=_env(frame_cache="false", compress_json="TRUE", log_level="WARNING"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fine.returncode == 0, fine.stderr


def test_issue14_misspelled_variable_is_named_with_the_closest_setting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomweb_server", "migrate", "--data-dir", str(tmp_path)],
        env=_env(databse_url="sqlite:///x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert (
        "dicomweb-server: warning: DICOMWEB_DATABSE_URL is not a setting and is ignored;"
        " did you mean DICOMWEB_DATABASE_URL?"
    ) in result.stderr


def test_issue14_every_worker_logs_its_access_lines(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/dicomweb"
    command = [sys.executable, "-m", "dicomweb_server", "serve", "--port", str(port)]
    with _running(command, _env(data_dir=str(tmp_path), workers="2"), url) as process:
        reach_every_worker(url + "/studies")
        clients = [httpx.Client() for _ in range(6)]  # kept-alive connections, spread out
        for _ in range(5):
            for client in clients:
                assert client.get(url + "/studies?PatientID=nobody").status_code == 200
        for client in clients:
            client.close()
        process.terminate()
        output, _ = process.communicate(timeout=30)
    access = [line for line in output.splitlines() if "dicomweb_server.access" in line]
    assert len(access) >= 30, output
    assert all("PatientID" not in line for line in access)  # no query strings: patient data
    pids = {line.split("[", 1)[1].split("]", 1)[0] for line in access}
    assert len(pids) == 2, output  # connections went to both workers, and both logged
    assert "Traceback" not in output


def test_issue14_runs_on_stock_uvicorn_when_a_patch_cannot_be_checked(tmp_path: Path) -> None:
    """compat.py reports a private attribute missing: one warning, stock uvicorn, all works."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/dicomweb"
    script = textwrap.dedent(
        f"""
        import sys
        from dicomweb_server.serve import compat
        compat.zerocopy_problem = lambda: "uvicorn's cycle no longer has 'self.flow'"
        compat.balance_problem = lambda: "uvicorn's Server.startup no longer takes sockets"
        from dicomweb_server.cli import main
        sys.exit(main(["serve", "--port", "{port}", "--workers", "1"]))
        """
    )
    command = [sys.executable, "-c", script]
    with _running(command, _env(data_dir=str(tmp_path)), url) as process:
        _round_trip(url)
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert (
        "serving on stock uvicorn request handling: uvicorn's cycle no longer has 'self.flow'"
        in output
    )
    assert "Traceback" not in output


def test_issue14_readme_first_python_example_runs_after_install(tmp_path: Path) -> None:
    """The README's first Python block, with only the runtime dependencies, against `serve`."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    port = _free_port()
    url = f"http://127.0.0.1:{port}/dicomweb"
    example = tmp_path / "example"
    example.mkdir()
    ct = ct_dataset()
    ct.save_as(example / "ct.dcm", enforce_file_format=True)
    code = block.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{port}")
    command = [sys.executable, "-m", "dicomweb_server", "serve", "--port", str(port)]
    with _running(command, _env(data_dir=str(tmp_path / "data"), workers="1"), url):
        result = subprocess.run(
            [sys.executable, "-I", "-c", _without_test_packages() + code],
            cwd=example,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert ct.StudyInstanceUID in result.stdout


def _without_test_packages() -> str:
    """A prelude that makes the test extras (dicomweb-client, httpx, ...) unimportable."""
    blocked = ["dicomweb_client", "httpx", "requests", "pytest"]
    return textwrap.dedent(
        f"""
        import sys
        class _Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError(f"{{name}} is a test extra, not installed by make run")
        sys.meta_path.insert(0, _Blocked())
        """
    )


def test_issue14_uvicorn_is_the_one_the_run_asked_for() -> None:
    """`make lowest` lays the lowest allowed uvicorn over the venv's: make sure it is used,
    and that it is inside the range pyproject.toml declares."""
    import re
    import tomllib

    import uvicorn

    version = tuple(int(part) for part in uvicorn.__version__.split(".")[:3])
    expected = os.environ.get("DICOMWEB_TEST_UVICORN")
    if expected is not None:
        assert uvicorn.__version__ == expected
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    (spec,) = [d for d in project["project"]["dependencies"] if d.startswith("uvicorn")]
    low = tuple(int(p) for p in re.search(r">=([\d.]+)", spec).group(1).split("."))  # type: ignore[union-attr]
    high = tuple(int(p) for p in re.search(r"<([\d.]+)", spec).group(1).split("."))  # type: ignore[union-attr]
    assert low <= version < high, (uvicorn.__version__, spec)
    if expected is not None:
        assert version == low + (0,) * (3 - len(low)), "make lowest must test the lowest allowed"
