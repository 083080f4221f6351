"""One S3 configuration: the writer and the reader of the store are built from the same settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import StoreError
from core.read import filesystem_for, read_exchanges
from core.s3 import S3Settings
from core.store import open_store
from tests.s3_region import RegionGate
from tests.s3_server import S3Server
from tests.stored import at, put_part, record

REGION = "eu-west-3"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"region": "us-east-1"}),
        ({"AWS_DEFAULT_REGION": "eu-west-1"}, {"region": "eu-west-1"}),
        ({"AWS_REGION": "eu-north-1", "AWS_DEFAULT_REGION": "x"}, {"region": "eu-north-1"}),
        (
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"},
            {"scheme": "http", "endpoint_override": "127.0.0.1:9000"},
        ),
        (
            {"AWS_ENDPOINT_URL": "http://other:1", "AWS_ENDPOINT_URL_S3": "https://s3.example"},
            {"scheme": "https", "endpoint_override": "s3.example"},
        ),
        (
            {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"},
            {"access_key": "k", "secret_key": "s", "session_token": "t"},
        ),
    ],
)
def test_settings_from_aws_environment(env: dict[str, str], expected: dict[str, str]) -> None:
    """Region, endpoint and keys come from the standard AWS variables, S3's endpoint first."""
    options = S3Settings.from_env({"AWS_CONFIG_FILE": "/nonexistent", **env}).arrow_options()
    assert {k: options[k] for k in expected} == expected
    if "AWS_ENDPOINT_URL" not in env:
        assert "endpoint_override" not in options
    if "AWS_ACCESS_KEY_ID" not in env:
        assert "access_key" not in options  # the SDK's own chain finds them


def test_region_and_endpoint_from_the_profile(tmp_path: Path) -> None:
    """A region and an endpoint set only in the AWS profile reach both clients alike."""
    config = tmp_path / "config"
    config.write_text(
        "[default]\nregion = ap-south-1\n"
        f"[profile work]\nregion = {REGION}\nendpoint_url = http://127.0.0.1:9000\n"
    )
    work = S3Settings.from_env({"AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "work"})
    assert work.client_options()["region_name"] == work.arrow_options()["region"] == REGION
    assert work.client_options()["endpoint_url"] == "http://127.0.0.1:9000"
    assert work.arrow_options()["endpoint_override"] == "127.0.0.1:9000"
    assert S3Settings.from_env({"AWS_CONFIG_FILE": str(config)}).region == "ap-south-1"
    assert S3Settings.from_env({"AWS_CONFIG_FILE": str(config), "AWS_REGION": "x"}).region == "x"


def test_filesystem_roots(tmp_path: Path) -> None:
    """A store URI maps to the dataset root: the directory, or ``bucket/prefix``."""
    assert filesystem_for(f"file://{tmp_path}")[1] == str(tmp_path)
    assert filesystem_for("s3://bkt/a/b/", {})[1] == "bkt/a/b"
    assert filesystem_for("s3://bkt", {})[1] == "bkt"


@pytest.fixture
def regional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RegionGate]:
    """An S3 server whose bucket lives in eu-west-3, named only by the AWS profile in use."""
    server = S3Server().start()
    server.client().create_bucket(
        Bucket="regional", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    gate = RegionGate(upstream=server.endpoint, region=REGION).start()
    config = tmp_path / "aws-config"
    config.write_text(f"[profile eu]\nregion = {REGION}\n")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", gate.endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "eu")
    yield gate
    gate.stop()
    server.stop()


async def test_store_in_a_profile_region_is_written_and_read_back(
    regional: RegionGate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A store whose region is set only in the AWS profile: parts written through aiobotocore
    read back through pyarrow, and a reader signing for another region is refused."""
    uri = "s3://regional/logs"
    records = [record(f"r{i}", at("2026-12-01 10:00")) for i in range(3)]
    async with open_store(uri) as store:
        key = await put_part(store, "seg1", records, tmp_path)
        assert [o.key for o in await store.list_objects("")] == [key]
    rows = read_exchanges(uri, columns=["request_id", "task"]).to_pylist()
    assert sorted(r["request_id"] for r in rows) == ["r0", "r1", "r2"]
    assert regional.refused == 0

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(StoreError):
        read_exchanges(uri)
    assert regional.refused > 0
