"""bus.broker_store as Tansu's object store client uses it: the S3 calls and
their conditions, through its own process, on each backend (one contract,
as the eventsourcing library's recorder test cases: a class per backend)."""

from __future__ import annotations

import contextlib
import http.client
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_engine.infra.database import DatabaseTarget

Reply = tuple[int, dict[str, str], bytes]


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def __call__(self, method: str, path: str, body: bytes = b"", **headers: str) -> Reply:
        names = {k.replace("_", "-"): v for k, v in headers.items()}
        self.conn.request(method, path, body=body, headers=names)
        reply = self.conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()


@contextlib.contextmanager
def _running(*where: str) -> Iterator[Client]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_engine.bus.broker_store", *where],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        client = Client(int(process.stdout.readline()))
        yield client
        client.conn.close()
    finally:
        process.terminate()
        assert process.wait(10) == 0  # a clean stop


def _keys(xml: bytes, tag: str = "Key") -> list[str]:
    return re.findall(rf"<{tag}>([^<]*)</{tag}>", xml.decode())


class StoreContract:
    """What every backend must do; a subclass gives the `store` fixture."""

    def test_conditional_puts_are_tansus_optimistic_concurrency(self, store: Client) -> None:
        created, headers, _ = store("PUT", "/b/meta.json", b"v1", if_none_match="*")
        assert created == 200
        first = headers["etag"]
        # Create again: already there.
        assert store("PUT", "/b/meta.json", b"other", if_none_match="*")[0] == 412
        # Update from the version read: once; the same stale version again fails.
        status, headers, _ = store("PUT", "/b/meta.json", b"v2", if_match=first)
        assert status == 200
        second = headers["etag"]
        assert second != first
        assert store("PUT", "/b/meta.json", b"v3", if_match=first)[0] == 412
        assert store("PUT", "/b/missing.json", b"x", if_match=first)[0] == 404
        assert store("GET", "/b/meta.json")[2] == b"v2"
        # Unconditional: overwrite.
        assert store("PUT", "/b/meta.json", b"v4")[0] == 200
        assert store("GET", "/b/meta.json")[2] == b"v4"

    def test_get_head_conditions_and_ranges(self, store: Client) -> None:
        _, headers, _ = store("PUT", "/b/batch", b"0123456789", content_type="application/x")
        etag = headers["etag"]
        status, headers, body = store("GET", "/b/batch")
        assert (status, body, headers["etag"]) == (200, b"0123456789", etag)
        assert headers["content-type"] == "application/x"
        assert "last-modified" in headers
        assert store("GET", "/b/batch", if_none_match=etag)[0] == 304
        assert store("GET", "/b/batch", if_match='"other"')[0] == 412
        status, headers, body = store("GET", "/b/batch", range="bytes=2-4")
        assert (status, body, headers["content-range"]) == (206, b"234", "bytes 2-4/10")
        assert store("GET", "/b/batch", range="bytes=-3")[2] == b"789"
        status, headers, body = store("HEAD", "/b/batch")
        assert (status, body, headers["content-length"]) == (200, b"", "10")
        assert store("GET", "/b/nothing")[0] == 404
        assert store("DELETE", "/b/batch")[0] == 204
        assert store("GET", "/b/batch")[0] == 404

    def test_list_by_prefix_and_delimiter_then_bulk_delete_and_copy(self, store: Client) -> None:
        keys = [
            "c/topics/t/partitions/0/records/00000000000000000000.batch",
            "c/topics/t/partitions/0/records/00000000000000000010.batch",
            "c/topics/t/partitions/0/watermark.json",
            "c/topics/t/partitions/1/records/00000000000000000000.batch",
            "c/topics/t&u/meta.json",
            "c/topics/t0/x",  # after the prefix "c/topics/t/" in byte order, not in it
        ]
        for key in keys:
            store("PUT", f"/b/{key}", b"x")
        status, _, xml = store("GET", "/b?list-type=2&prefix=c/topics/t/partitions/0/records/")
        assert status == 200
        assert _keys(xml) == keys[:2]
        _, _, xml = store("GET", "/b?list-type=2&prefix=c/topics/")
        # In byte order ("&" before "/"), escaped.
        assert _keys(xml) == [k.replace("&", "&amp;") for k in sorted(keys)]
        _, _, xml = store("GET", "/b?list-type=2&prefix=c/topics/t/&delimiter=/")
        assert _keys(xml, "Prefix")[1:] == ["c/topics/t/partitions/"]
        _, _, xml = store("GET", f"/b?list-type=2&prefix=c/&start-after={keys[1]}")
        assert _keys(xml)[0] == keys[2]

        status, _, _ = store("PUT", "/b/copy", x_amz_copy_source=f"/b/{keys[0]}")
        assert status == 200 and store("GET", "/b/copy")[2] == b"x"

        delete = "".join(f"<Object><Key>{k}</Key></Object>" for k in keys[:2])
        status, _, xml = store("POST", "/b?delete", f"<Delete>{delete}</Delete>".encode())
        assert status == 200 and _keys(xml) == keys[:2]
        _, _, xml = store("GET", "/b?list-type=2&prefix=c/topics/t/partitions/0/records/")
        assert _keys(xml) == []

    def test_listing_times_follow_the_writes(self, store: Client) -> None:
        """Tansu answers ListOffsets Latest with the batch listed with the
        newest LastModified: batches written one after another must list
        with increasing times, however close together."""
        prefix = "c/topics/t/partitions/0000000000/records/"
        for offset in range(20):
            store("PUT", f"/b/{prefix}{offset:020}.batch", b"x", if_none_match="*")
        _, _, xml = store("GET", f"/b?list-type=2&prefix={prefix}")
        times = _keys(xml, "LastModified")
        assert len(times) == 20
        assert times == sorted(times)
        assert len(set(times)) == 20


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[Client]:
        with _running("--memory") as client:
            yield client


@pytest.mark.postgres
class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store(self, broker_database: DatabaseTarget) -> Iterator[Client]:
        with _running("--database-url", broker_database.url()) as client:
            yield client
