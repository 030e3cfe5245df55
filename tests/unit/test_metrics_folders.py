"""serve/metrics.py: a killed server's metrics folder is removed by the next server to start,
never a running server's, nor a folder it cannot tell the owner of."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dicomweb_server.serve.metrics import ENV, multiprocess_metrics

# A run that holds its folder until told to stop (stdin closes), or that dies inside it.
_RUN = """
import os, sys
from dicomweb_server.serve.metrics import multiprocess_metrics
with multiprocess_metrics(2) as path:
    open(os.path.join(path, "counter_1.db"), "wb").close()
    print(path, flush=True)
    if sys.argv[1] == "killed":
        os._exit(9)
    sys.stdin.read()
"""


def _run(temp: Path, how: str) -> tuple[subprocess.Popen[str], Path]:
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"TMPDIR": str(temp)}
    process = subprocess.Popen(
        [sys.executable, "-c", _RUN, how],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_killed_servers_metrics_folder_is_removed_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    running, running_folder = _run(tmp_path, "running")
    killed, killed_folder = _run(tmp_path, "killed")  # its start leaves the running one be
    with killed:
        assert killed.wait(timeout=30) == 9
    legacy = tmp_path / "dicomweb-metrics-abc123"  # an older version's: no owner file
    legacy.mkdir()
    (legacy / "counter_1.db").write_bytes(b"")
    assert killed_folder.is_dir() and running_folder.is_dir()
    try:
        with multiprocess_metrics(2) as path:
            assert path is not None and Path(path).parent == tmp_path
            assert not killed_folder.exists()  # its server is gone
            assert running_folder.is_dir()  # its server still holds the lock
            assert (running_folder / "counter_1.db").exists()
            assert legacy.is_dir()
            assert os.environ[ENV] == path
        assert not Path(path).exists()
    finally:
        with running:  # closing its stdin stops it
            pass
    assert running.returncode == 0
    assert not running_folder.exists()  # removed by its own run when it stopped
