"""serve/logs.py: what reaches the log, and what does not."""

from __future__ import annotations

import subprocess
import sys

_UNDECODABLE = """
import logging
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_fragmented_frames
from dicomweb_server.serve.logs import configure_logging

configure_logging("info")
ds = dcmread(get_testdata_file("JPEG2000.dcm"))
frame = bytearray(b"".join(next(generate_fragmented_frames(ds.PixelData))))
frame[120:] = bytes(len(frame) - 120)  # the code stream cut after its header: no plugin reads it
ds.PixelData = encapsulate([bytes(frame)])
try:
    ds.pixel_array
except Exception as exc:
    print("refused:", type(exc).__name__)
logging.getLogger("pydicom.pixels.decoders.base").warning("a plugin warning still shows")
"""


def test_an_undecodable_frame_logs_no_plugin_tracebacks() -> None:
    """pydicom logs each failing codec plugin with its traceback at ERROR before raising one
    error naming them all: for an image that cannot be decoded (a 406 we answer) that was a
    traceback per plugin in the server's log."""
    ran = subprocess.run(
        [sys.executable, "-c", _UNDECODABLE], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert "refused: RuntimeError" in ran.stdout
    assert "Traceback" not in ran.stderr, ran.stderr
    assert "a plugin warning still shows" in ran.stderr
