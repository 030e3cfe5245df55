"""The OHIF Viewer, installed next to the data: its published build, ready to serve at /viewer/.

`install_viewer` takes npm's `@ohif/app` package (its prebuilt `dist/`): downloaded from the
npm registry with its `dist.integrity` (SHA-512) checked, or from a tarball or unpacked
package already on disk. Only `package/dist/` is extracted, regular files only, never outside
the target (no absolute names, no `..`, no links, no devices), within a size budget.

The published build expects to be served at `/`. Two rewrites let it be served under any
path instead: webpack's public path (`__webpack_require__.p = "/"`) becomes the page's own
`window.PUBLIC_URL` (the script's folder in a web worker), and root-relative `url(/...)` in
stylesheets and icon paths in the web app manifest become relative. index.html's links and
PUBLIC_URL are set per request by the web layer, which knows the public path (web/viewer.py).

Text and WebAssembly files of at least a kilobyte get a gzip twin (`name.gz`, level 9) when it
is smaller, so the web layer can send a browser about a quarter of the JavaScript without
compressing on every request (web/viewer.py).

The folder holds `dist/` (served) and `viewer.json` (package, version, integrity, source).
A new install is staged beside it and swapped in by renames: a server reading the old one
never sees half a viewer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote

__all__ = [
    "DEFAULT_VERSION",
    "PACKAGE",
    "PRECOMPRESSED",
    "InstalledViewer",
    "ViewerInstallError",
    "install_viewer",
    "installed_viewer",
]

PACKAGE = "@ohif/app"
# The version `make e2e` drives in a browser (e2e/package.json); `--version` picks another.
DEFAULT_VERSION = "3.13.2"
REGISTRY = "https://registry.npmjs.org"
_DIST = "package/dist/"
_MAX_BYTES = 2 << 30  # unpacked dist/ (3.13 is about 200 MB)
_MAX_FILES = 20_000
_CHUNK = 1 << 20
_TIMEOUT = 60.0
# webpack's runtime public path in the published bundles, and what it becomes
_PUBLIC_PATH = b'__webpack_require__.p = "/";'
_RUNTIME_PUBLIC_PATH = (
    b'__webpack_require__.p = (typeof window !== "undefined" && window.PUBLIC_URL)'
    b' || (typeof self !== "undefined" && self.location'
    b' ? self.location.href.replace(/[?#].*$/, "").replace(/[^/]*$/, "") : "/");'
)
_CSS_ROOT_URL = re.compile(rb"url\(\s*(['\"]?)/(?!/)")
_MANIFEST_ROOT_URL = re.compile(rb'("(?:src|start_url|scope)"\s*:\s*")/(?!/)')


class ViewerInstallError(Exception):
    """The viewer cannot be installed; the message is one line saying why."""


@dataclass(frozen=True, slots=True)
class InstalledViewer:
    """An installed viewer: where its files are and what it is."""

    dist: Path
    version: str
    source: str


def installed_viewer(folder: Path) -> InstalledViewer | None:
    """The viewer installed in `folder`, or None."""
    dist = folder / "dist"
    if not (dist / "index.html").is_file():
        return None
    try:
        about = json.loads((folder / "viewer.json").read_text())
    except (OSError, ValueError):
        about = {}
    return InstalledViewer(dist, str(about.get("version", "")), str(about.get("source", "")))


def _manifest(version: str, registry: str) -> dict[str, Any]:
    url = f"{registry}/{quote(PACKAGE, safe='@')}/{quote(version)}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            manifest: dict[str, Any] = json.load(response)
    except OSError as exc:
        raise ViewerInstallError(f"cannot read {url}: {exc}") from None
    except ValueError:
        raise ViewerInstallError(f"{url} did not answer JSON") from None
    dist = manifest.get("dist")
    if not isinstance(dist, dict) or not dist.get("tarball") or not dist.get("integrity"):
        raise ViewerInstallError(f"{url} names no tarball with an integrity hash")
    return manifest


def _sha512_integrity(integrity: str) -> bytes:
    """The SHA-512 digest a Subresource Integrity string names (npm's dist.integrity)."""
    for item in integrity.split():
        algorithm, _, value = item.partition("-")
        if algorithm == "sha512":
            return base64.b64decode(value)
    raise ViewerInstallError(f"integrity {integrity!r} has no sha512 hash to check against")


def _download(url: str, into: IO[bytes], integrity: str, progress: Callable[[int], None]) -> None:
    expected = _sha512_integrity(integrity)
    digest = hashlib.sha512()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as response:
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > _MAX_BYTES:
                    raise ViewerInstallError(f"{url} is larger than {_MAX_BYTES} bytes")
                digest.update(chunk)
                into.write(chunk)
                progress(received)
    except OSError as exc:
        raise ViewerInstallError(f"cannot download {url}: {exc}") from None
    if digest.digest() != expected:
        raise ViewerInstallError(f"{url} does not match its registry integrity {integrity}")


def _check_integrity(path: Path, integrity: str) -> None:
    expected = _sha512_integrity(integrity)
    digest = hashlib.sha512()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    if digest.digest() != expected:
        raise ViewerInstallError(f"{path} does not match integrity {integrity}")


def _safe_relative(name: str) -> PurePosixPath | None:
    """`name` as a path inside the target, or None for anything that could leave it."""
    path = PurePosixPath(name)
    if path.is_absolute() or "\\" in name or any(part in ("..", "") for part in path.parts):
        return None
    return path


def _extract_dist(archive: Path, dist: Path) -> str:
    """Regular files under package/dist/ into `dist`; the package's version (package.json)."""
    written = 0
    total = 0
    version = ""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name == "package/package.json" and member.isfile() and member.size < _CHUNK:
                    about = tar.extractfile(member)
                    assert about is not None
                    with about:
                        version = str(json.loads(about.read()).get("version", ""))
                    continue
                if not name.startswith(_DIST) or not member.isfile():
                    continue  # outside dist/, or a directory, link, device or FIFO
                relative = _safe_relative(name[len(_DIST) :])
                if relative is None:
                    raise ViewerInstallError(f"the package holds an unsafe name {member.name!r}")
                total += member.size
                written += 1
                if total > _MAX_BYTES or written > _MAX_FILES:
                    raise ViewerInstallError("the package's dist/ is larger than allowed")
                target = dist.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ViewerInstallError(f"cannot unpack {archive}: {exc}") from None
    return version


def _copy_dist(source: Path, dist: Path) -> None:
    """Regular files of an unpacked dist/ (or of a package folder holding one) into `dist`."""
    if (source / "dist" / "index.html").is_file():
        source = source / "dist"
    if not (source / "index.html").is_file():
        raise ViewerInstallError(f"{source} holds no OHIF build (no index.html or dist/index.html)")
    for folder, _, files in os.walk(source):
        for name in files:
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file():
                continue
            target = dist / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def _package_version(source: Path) -> str:
    for candidate in (source / "package.json", source.parent / "package.json"):
        try:
            about = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if about.get("name") == PACKAGE:
            return str(about.get("version", ""))
    return ""


def _relocatable(dist: Path) -> None:
    """Make the build work under any path: runtime public path, relative stylesheet URLs."""
    rewrote = 0
    for path in dist.rglob("*.js"):
        data = path.read_bytes()
        if _PUBLIC_PATH in data:
            path.write_bytes(data.replace(_PUBLIC_PATH, _RUNTIME_PUBLIC_PATH))
            rewrote += 1
    if not rewrote:
        raise ViewerInstallError(
            "this OHIF build sets no webpack public path the installer knows, so it cannot be"
            " served under /viewer/ (try the default --version)"
        )
    for path in dist.rglob("*.css"):
        up = b"../" * (len(path.relative_to(dist).parts) - 1)
        data = path.read_bytes()
        fixed = _CSS_ROOT_URL.sub(rb"url(\1" + up, data)
        if fixed != data:
            path.write_bytes(fixed)
    for path in (*dist.rglob("manifest.json"), *dist.rglob("*.webmanifest")):
        up = b"../" * (len(path.relative_to(dist).parts) - 1)
        data = path.read_bytes()
        fixed = _MANIFEST_ROOT_URL.sub(rb"\1" + (up or b"./"), data)
        if fixed != data:
            path.write_bytes(fixed)


# What gets a gzip twin: JavaScript, stylesheets, JSON, SVG and WebAssembly (source maps
# are fetched only by developer tools: not worth the install time).
PRECOMPRESSED = frozenset({".js", ".mjs", ".css", ".json", ".svg", ".wasm", ".txt", ".xml"})
_PRECOMPRESS_MIN = 1024  # bytes: smaller files gain nothing
_PRECOMPRESS_GAIN = 0.9  # a twin is kept only when at most this fraction of the original


def _precompress(dist: Path, progress: Callable[[int], None]) -> None:
    """Write `name.gz` beside each compressible file it shrinks (index.html is rewritten per
    request and left out), streamed `_CHUNK` at a time; the bytes compressed so far go to
    `progress`."""
    done = 0
    for path in sorted(dist.rglob("*")):
        if path.suffix.lower() not in PRECOMPRESSED or not path.is_file():
            continue
        size = path.stat().st_size
        if size < _PRECOMPRESS_MIN:
            continue
        twin = path.with_name(path.name + ".gz")
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing, no name, mtime 0
        with path.open("rb") as source, twin.open("wb") as out:
            while chunk := source.read(_CHUNK):
                out.write(packer.compress(chunk))
                done += len(chunk)
                progress(done)
            out.write(packer.flush())
        if twin.stat().st_size > size * _PRECOMPRESS_GAIN:
            twin.unlink()


def _activate(staging: Path, folder: Path) -> None:
    """Swap the staged install in by renames (the old one, if any, is removed after)."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}-old-{os.getpid()}-{time.monotonic_ns()}")
        folder.rename(old)
    staging.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def install_viewer(
    folder: Path,
    *,
    version: str = DEFAULT_VERSION,
    source: Path | None = None,
    integrity: str | None = None,
    registry: str = REGISTRY,
    progress: Callable[[int], None] = lambda received: None,
    compressing: Callable[[int], None] = lambda done: None,
) -> InstalledViewer:
    """Install @ohif/app's dist/ into `folder` (replacing what is there) and describe it.

    `source`: an @ohif/app tarball (.tgz; checked against `integrity` when given) or a
    folder (the unpacked package, or its dist/) to install from instead of the registry.
    `progress` hears the bytes downloaded, `compressing` the bytes given gzip twins so far.
    """
    folder = folder.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-new-", dir=folder.parent))
    try:
        dist = staging / "dist"
        dist.mkdir()
        if source is None:
            manifest = _manifest(version, registry)
            version = str(manifest.get("version", version))
            integrity = str(manifest["dist"]["integrity"])
            origin = str(manifest["dist"]["tarball"])
            with tempfile.NamedTemporaryFile(suffix=".tgz", dir=staging) as archive:
                _download(origin, archive, integrity, progress)
                archive.flush()
                _extract_dist(Path(archive.name), dist)
        elif source.is_dir():
            origin = str(source.absolute())
            version = _package_version(source) or version
            _copy_dist(source, dist)
        else:
            origin = str(source.absolute())
            if integrity:
                _check_integrity(source, integrity)
            version = _extract_dist(source, dist) or version
        if not (dist / "index.html").is_file():
            raise ViewerInstallError(f"{origin} holds no dist/index.html")
        _relocatable(dist)
        _precompress(dist, compressing)
        about = {"package": PACKAGE, "version": version, "source": origin}
        if integrity:
            about["integrity"] = integrity
        (staging / "viewer.json").write_text(json.dumps(about, indent=2) + "\n")
        staging.chmod(0o755)
        _activate(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    found = installed_viewer(folder)
    assert found is not None
    return found
