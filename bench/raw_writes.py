"""`python -m bench.raw_writes FOLDER`: the files of FOLDER written straight into the store.

The ceiling of bulk import and STOW-RS (bench/import_vs_stow.py): each file is read and put
into the configured blob store (a folder: temporary file, fsync, rename; S3: one PUT) through
the same `BlobStore` the server uses, `--parallel` at once, with no DICOM work and no index.
Settings come from the environment and `--data-dir`, as for `dicomweb-server import`; prints
the seconds from the first read to the last write, start-up not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from dicomweb_server.cli.backends import opened_backends
from dicomweb_server.config import Settings


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _write_all(settings: Settings, paths: list[Path], prefix: str, parallel: int) -> float:
    async with opened_backends(settings) as backends:
        slots = asyncio.Semaphore(parallel)

        async def one(number: int, path: Path) -> None:
            async with slots:
                data = await asyncio.to_thread(path.read_bytes)
                await backends.blobs.put(f"{prefix}/{number:06d}", _chunks(data))

        started = time.perf_counter()
        await asyncio.gather(*(one(number, path) for number, path in enumerate(paths)))
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_writes", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--parallel", type=int, default=8, help="writes in flight")
    parser.add_argument("--prefix", default="default/raw-writes", help="key prefix")
    args = parser.parse_args(argv)
    settings = Settings.from_env(data_dir=args.data_dir)
    paths = sorted(path for path in args.folder.iterdir() if path.is_file())
    seconds = asyncio.run(_write_all(settings, paths, args.prefix, args.parallel))
    print(f"{seconds:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
