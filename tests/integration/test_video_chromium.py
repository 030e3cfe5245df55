"""The MP4 we remux plays in a real browser: headless Chromium, driven over the DevTools
protocol, loads it in a <video> element until it can show frames (readyState >= 2), and reports
its duration and picture size. Skipped where Debian's `chromium` is not installed."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import websockets
from dicomfiles import to_part10
from video_samples import H264, encode, video_instance

from dicomweb_server.codecs.video import (
    FragmentReader,
    encapsulated_fragments,
    remux_to_mp4,
    sniff_container,
)
from dicomweb_server.domain.documents import video_timing
from dicomweb_server.domain.part10 import ParseLimits, parse_part10

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH")

# Resolves once the video can show its current frame, then once more after seeking, so the
# decoder (not only the demuxer) has run; a load error or a 10 s wait resolves it too.
_PROBE = """
new Promise(resolve => {
  const v = document.createElement('video');
  const report = extra => resolve(JSON.stringify(Object.assign({
    readyState: v.readyState, duration: v.duration, width: v.videoWidth,
    height: v.videoHeight, error: v.error && v.error.code}, extra)));
  v.muted = true;
  v.preload = 'auto';
  v.addEventListener('loadeddata', () => { v.currentTime = 0.5; });
  v.addEventListener('seeked', () => report({seeked: v.currentTime}));
  v.addEventListener('error', () => report({}));
  setTimeout(() => report({timeout: true}), 10000);
  v.src = 'video.mp4';
})
"""


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[str]:
    """A headless Chromium with its DevTools endpoint; yields the page's websocket URL."""
    profile = tmp_path / "profile"
    assert CHROMIUM is not None
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--allow-file-access-from-files",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().count("\n") >= 1:
                break
            if process.poll() is not None:
                pytest.fail("chromium exited before opening its DevTools port")
            time.sleep(0.1)
        port = port_file.read_text().split("\n")[0]
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def _evaluate(port: str, url: str, expression: str) -> Any:
    """Open `url` in a new page and evaluate `expression` there, awaiting its promise."""
    import urllib.request

    def new_page() -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?{url}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            target: dict[str, str] = json.load(response)
        return target["webSocketDebuggerUrl"]

    socket_url = await asyncio.to_thread(new_page)
    async with websockets.connect(socket_url, max_size=None) as page:
        await asyncio.sleep(0.5)  # the blank page that loads the video's folder
        message = {
            "id": 1,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "awaitPromise": True, "returnByValue": True},
        }
        await page.send(json.dumps(message))
        while True:
            reply = json.loads(await asyncio.wait_for(page.recv(), 30))
            if reply.get("id") == 1:
                return json.loads(reply["result"]["result"]["value"])


async def test_remuxed_h264_plays_in_chromium(chromium: str, tmp_path: Path) -> None:
    stream = encode("h264", "es", frames=24, width=64, height=48, rate=Fraction(25))
    data = to_part10(video_instance(stream, H264, frames=24, frame_time=40.0))
    record = parse_part10(io.BytesIO(data), len(data), ParseLimits())
    assert record.pixel is not None
    fp = io.BytesIO(data)
    reader = FragmentReader(fp, encapsulated_fragments(fp, record.pixel.value_offset, len(data)))
    container = sniff_container(reader.read(512))
    reader.seek(0)
    rate = video_timing(json.loads(record.metadata)).frame_rate
    remux_to_mp4(reader, str(tmp_path / "video.mp4"), H264, container, rate)
    (tmp_path / "page.html").write_text("<!doctype html><title>video</title>")

    seen = await _evaluate(chromium, (tmp_path / "page.html").as_uri(), _PROBE)

    assert seen.get("error") is None and not seen.get("timeout"), seen
    assert seen["readyState"] >= 2
    assert seen["duration"] == pytest.approx(0.96, abs=0.05)
    assert (seen["width"], seen["height"]) == (64, 48)
    assert seen["seeked"] == pytest.approx(0.5, abs=0.05)
