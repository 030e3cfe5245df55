"""Session services for integration tests: PostgreSQL and S3, started here unless env names them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import services


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A superuser URL: $DICOMWEB_TEST_DATABASE_URL, else a fresh embedded PostgreSQL."""
    url = services.postgres_url_from_env()
    if url is not None:
        yield url
        return
    with services.embedded_postgres() as url:
        yield url


@pytest.fixture
def pg_database_url(postgres_url: str) -> Iterator[str]:
    """The URL of an empty database of this test's own, dropped afterwards."""
    url = services.create_database(postgres_url)
    yield url
    services.drop_database(postgres_url, url)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[services.S3Endpoint]:
    """$DICOMWEB_TEST_S3_ENDPOINT_URL with AWS_* keys, else a fresh SeaweedFS S3 gateway."""
    endpoint = services.s3_endpoint_from_env()
    if endpoint is not None:
        yield endpoint
        return
    with services.seaweedfs_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: services.S3Endpoint) -> Iterator[str]:
    """The name of an empty bucket of this test's own, emptied and deleted afterwards."""
    name = services.create_bucket(s3_endpoint)
    yield name
    services.delete_bucket(s3_endpoint, name)
