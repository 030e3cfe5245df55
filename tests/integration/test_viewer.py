"""Issue 21: `dicomweb-server viewer install` (registry download with its integrity checked,
safe extraction, --from) and the viewer served at /viewer/ with its generated configuration.

A small synthetic @ohif/app package stands in for the real one (make e2e runs the real one in
Chromium); the registry is a loopback HTTP server."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from dicomweb_server.cli import main
from dicomweb_server.services.viewer import (
    ViewerInstallError,
    install_viewer,
    installed_viewer,
)

ROOT = "http://testserver"
INDEX = (
    b'<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
    b'<link rel="manifest" href="/manifest.json"><link href="/app.bundle.css" rel="stylesheet">'
    b'</head><body><script src="/app-config.js"></script>'
    b'<script src="/app.bundle.0123456789abcdef.js"></script></body></html>'
)
BUNDLE = b'(() => {\n__webpack_require__.p = "/";\n})();\nconsole.log("ohif");\n'
FILES = {
    "package/package.json": b'{"name": "@ohif/app", "version": "9.8.7"}',
    "package/README.md": b"outside dist/: not installed",
    "package/dist/index.html": INDEX,
    "package/dist/app-config.js": b"window.config = {}; // the build's own: ours replaces it",
    "package/dist/app.bundle.0123456789abcdef.js": BUNDLE,
    "package/dist/app.bundle.css": b"@font-face{src:url(/a34f9d1faa5f3315.woff2)}",
    "package/dist/a34f9d1faa5f3315.woff2": b"wOF2",
    "package/dist/0ddf166f7a343eda.wasm": b"\0asm",
    "package/dist/manifest.json": b'{"icons": [{"src": "/assets/icon.png"}], "start_url": "/"}',
    "package/dist/assets/icon.png": b"\x89PNG",
    "package/dist/customizations/theme.css": b"a{background:url('/assets/icon.png')}",
}


def _tarball(extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buffer.getvalue()


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
def registry() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A loopback npm registry: GET /@ohif%2fapp/<version> and the tarball it names."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url, files
    finally:
        server.shutdown()
        server.server_close()


def _publish(url: str, files: dict[str, bytes], tarball: bytes, integrity: str) -> None:
    manifest = {
        "name": "@ohif/app",
        "version": "9.8.7",
        "dist": {"tarball": f"{url}/app-9.8.7.tgz", "integrity": integrity},
    }
    files["/@ohif%2Fapp/9.8.7"] = json.dumps(manifest).encode()
    files["/@ohif/app/9.8.7"] = files["/@ohif%2Fapp/9.8.7"]
    files["/app-9.8.7.tgz"] = tarball


def test_issue21_install_downloads_checks_integrity_and_extracts_only_dist(
    registry: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    url, files = registry
    tarball = _tarball()
    _publish(url, files, tarball, _integrity(tarball))
    viewer = install_viewer(tmp_path / "viewer", version="9.8.7", registry=url)
    assert viewer.version == "9.8.7"
    dist = tmp_path / "viewer" / "dist"
    assert sorted(p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file()) == sorted(
        name.removeprefix("package/dist/") for name in FILES if name.startswith("package/dist/")
    )
    bundle = (dist / "app.bundle.0123456789abcdef.js").read_bytes()
    assert b'__webpack_require__.p = "/";' not in bundle and b"window.PUBLIC_URL" in bundle
    assert (dist / "app.bundle.css").read_bytes() == b"@font-face{src:url(a34f9d1faa5f3315.woff2)}"
    assert b"url('../assets/icon.png')" in (dist / "customizations" / "theme.css").read_bytes()
    assert json.loads((dist / "manifest.json").read_bytes()) == {
        "icons": [{"src": "./assets/icon.png"}],
        "start_url": "./",
    }
    about = json.loads((tmp_path / "viewer" / "viewer.json").read_text())
    assert about["integrity"] == _integrity(tarball)


def test_issue21_install_refuses_a_tarball_that_does_not_match_its_integrity(
    registry: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    url, files = registry
    _publish(url, files, _tarball(), _integrity(b"something else"))
    with pytest.raises(ViewerInstallError, match="does not match its registry integrity"):
        install_viewer(tmp_path / "viewer", version="9.8.7", registry=url)
    assert not (tmp_path / "viewer").exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone too


@pytest.mark.parametrize(
    "name", ["package/dist/../../../evil.js", "package/dist//etc/passwd", "package/dist/a\\..\\b"]
)
def test_issue21_install_refuses_names_that_leave_the_target(tmp_path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 1
    archive = tmp_path / "app.tgz"
    archive.write_bytes(_tarball([info]))
    with pytest.raises(ViewerInstallError, match="unsafe name"):
        install_viewer(tmp_path / "viewer", source=archive)
    assert not (tmp_path / "evil.js").exists()


def test_issue21_install_skips_links_and_keeps_the_old_viewer_until_the_new_one_is_whole(
    tmp_path: Path,
) -> None:
    link = tarfile.TarInfo("package/dist/passwd")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = tmp_path / "app.tgz"
    archive.write_bytes(_tarball([link]))
    install_viewer(tmp_path / "viewer", source=archive, integrity=_integrity(archive.read_bytes()))
    assert not (tmp_path / "viewer" / "dist" / "passwd").exists()
    with pytest.raises(ViewerInstallError, match="does not match integrity"):
        install_viewer(tmp_path / "viewer", source=archive, integrity=_integrity(b"other"))
    assert installed_viewer(tmp_path / "viewer") is not None  # the first install is intact


def test_issue21_viewer_install_from_an_unpacked_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "node_modules" / "@ohif" / "app"
    for name, data in FILES.items():
        path = package / name.removeprefix("package/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    monkeypatch.delenv("DICOMWEB_VIEWER_DIR", raising=False)
    assert (
        main(["viewer", "install", "--from", str(package), "--data-dir", str(tmp_path / "data")])
        == 0
    )
    assert "@ohif/app 9.8.7 installed" in capsys.readouterr().out
    assert (tmp_path / "data" / "viewer" / "dist" / "index.html").is_file()


@pytest.mark.parametrize("backend", ["embedded"])
async def test_issue21_viewer_not_installed_says_how_to_install(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{ROOT}/viewer/")
    assert response.status_code == 404
    assert "dicomweb-server viewer install" in response.text


@pytest.mark.parametrize("backend", ["embedded"])
async def test_issue21_viewer_is_served_with_its_config_spa_routes_and_cache_headers(
    app: Starlette, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    archive = tmp_path / "app.tgz"
    archive.write_bytes(_tarball())
    install_viewer(app.state.dicomweb.settings.viewer_path, source=archive)

    redirect = await client.get(f"{ROOT}/viewer", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "viewer/"

    index = await client.get(f"{ROOT}/viewer/")
    assert index.status_code == 200
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.headers["cache-control"] == "no-cache"
    assert 'window.PUBLIC_URL="/viewer/"' in index.text
    assert 'src="/viewer/app.bundle.0123456789abcdef.js"' in index.text
    assert 'href="/viewer/manifest.json"' in index.text

    config = await client.get(f"{ROOT}/viewer/app-config.js")
    assert config.headers["content-type"] == "text/javascript; charset=utf-8"
    for expected in (
        "routerBasename: '/viewer'",
        "window.location.origin + '/dicomweb'",
        "singlepart: 'bulkdata,video,pdf'",
        "thumbnailRendering: 'thumbnail'",
        "thumbnailRequestStrategy: 'fetch'",
        "imageRendering: 'wadors'",
    ):
        assert expected in config.text

    spa = await client.get(f"{ROOT}/viewer/viewer/dicomweb?StudyInstanceUIDs=1.2.3")
    assert spa.status_code == 200 and spa.text == index.text
    assert (await client.get(f"{ROOT}/viewer/missing.bundle.js")).status_code == 404
    assert (await client.get(f"{ROOT}/viewer/../index.html")).status_code in (200, 404)
    assert (await client.get(f"{ROOT}/viewer/%2e%2e/%2e%2e/etc/passwd")).status_code == 404

    bundle = await client.get(f"{ROOT}/viewer/app.bundle.0123456789abcdef.js")
    assert bundle.headers["content-type"] == "text/javascript; charset=utf-8"
    assert bundle.headers["cache-control"] == "public, max-age=31536000, immutable"
    wasm = await client.get(f"{ROOT}/viewer/0ddf166f7a343eda.wasm")
    assert wasm.headers["content-type"] == "application/wasm"
    assert wasm.headers["cache-control"] == "public, max-age=31536000, immutable"
    css = await client.get(f"{ROOT}/viewer/app.bundle.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert css.headers["cache-control"] == "no-cache"  # not content-hashed: revalidated
    again = await client.get(
        f"{ROOT}/viewer/app.bundle.css", headers={"If-None-Match": css.headers["etag"]}
    )
    assert again.status_code == 304

    landing = (await client.get(f"{ROOT}/", headers={"Accept": "application/json"})).json()
    assert landing["viewer"] == {
        "url": "http://testserver/viewer/",
        "package": "@ohif/app",
        "version": "9.8.7",
    }
    assert 'href="viewer/"' in (await client.get(f"{ROOT}/")).text


@pytest.mark.parametrize("backend", ["embedded"])
async def test_viewer_scripts_go_out_gzipped_from_twins_made_at_install(
    app: Starlette, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A zero-footprint viewer's first load is mostly JavaScript: `viewer install` writes a
    gzip twin of each compressible file it shrinks, and /viewer/ sends the twin to a browser
    that accepts gzip (its own ETag, Vary: Accept-Encoding), the file itself to anyone else."""
    big = b"".join(b"export const f%d = (x) => x * %d;\n" % (n, n) for n in range(2000))
    FILES["package/dist/big.bundle.0123456789abcdef.js"] = BUNDLE + big
    try:
        archive = tmp_path / "app.tgz"
        archive.write_bytes(_tarball())
    finally:
        del FILES["package/dist/big.bundle.0123456789abcdef.js"]
    folder = app.state.dicomweb.settings.viewer_path
    install_viewer(folder, source=archive)
    dist = folder / "dist"
    assert (dist / "big.bundle.0123456789abcdef.js.gz").is_file()
    assert not (dist / "index.html.gz").exists()  # rewritten per request
    assert not (dist / "app.bundle.css.gz").exists()  # under a kilobyte
    assert not (dist / "assets" / "icon.png.gz").exists()  # not text
    original = (dist / "big.bundle.0123456789abcdef.js").read_bytes()
    url = f"{ROOT}/viewer/big.bundle.0123456789abcdef.js"

    packed = await client.get(url, headers={"Accept-Encoding": "gzip"})
    assert packed.status_code == 200
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "Accept-Encoding"
    assert packed.headers["content-type"] == "text/javascript; charset=utf-8"
    assert int(packed.headers["content-length"]) < len(original) // 4
    assert packed.content == original  # httpx undoes the gzip
    plain = await client.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == original and plain.headers["vary"] == "Accept-Encoding"
    assert plain.headers["etag"] != packed.headers["etag"]
    for headers, etag in (
        ({"Accept-Encoding": "gzip"}, packed.headers["etag"]),
        ({"Accept-Encoding": "identity"}, plain.headers["etag"]),
    ):
        again = await client.get(url, headers={**headers, "If-None-Match": etag})
        assert again.status_code == 304, headers
    changed = await client.get(
        url, headers={"Accept-Encoding": "gzip", "If-None-Match": plain.headers["etag"]}
    )
    assert changed.status_code == 200 and changed.headers["content-encoding"] == "gzip"
