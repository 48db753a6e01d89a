"""bench/chaos_load.py's client survives what a killed API does to it: an
answer cut short (http.client's IncompleteRead, which is no OSError) is
sent again with the same Idempotency-Key, and a 500 is recorded as a
violation, not taken for an answer. A ten-minute chaos run lost a client
to the first: its thread ended and the run went on with one client."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from chaos_load import Client  # a bench module: bench/ on the path

BODY = b'{"operation_id": "op", "resource_id": "vm"}'


class Api:
    """A loopback HTTP server answering each connection's one request with
    the next of its scripted answers; it remembers the requests' keys."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.keys: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        for answer in self.answers:
            conn, _ = self.sock.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                headers = dict(
                    line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
                )
                while len(body) < int(headers.get("Content-Length", "0")):
                    body += conn.recv(65536)
                self.keys.append(headers.get("Idempotency-Key", ""))
                conn.sendall(answer)


def answer(status: str, body: bytes, *, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def client(url: str) -> Client:
    fabric = SimpleNamespace(zone="z", template="t")
    return Client(1, url, "token", fabric, ["h"], seed=1)


@pytest.fixture
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chaos_load.time.sleep", lambda _s: None)


def test_an_answer_cut_short_is_asked_again_with_the_same_key(no_pause: None) -> None:
    api = Api([answer("202 Accepted", BODY[:5], length=len(BODY)), answer("202 Accepted", BODY)])
    c = client(api.url)
    status, reply = c.call("POST", "/v1/vms", {"name": "x"})
    assert (status, reply["operation_id"]) == (202, "op")
    assert len(api.keys) == 2 and api.keys[0] == api.keys[1] != ""
    assert c.errors == []


def test_an_error_answer_cut_short_is_asked_again_with_the_same_key(no_pause: None) -> None:
    problem = b'{"title": "busy"}'
    api = Api(
        [answer("409 Conflict", problem[:3], length=len(problem)), answer("202 Accepted", BODY)]
    )
    c = client(api.url)
    status, _ = c.call("POST", "/v1/vms", {"name": "x"})
    assert status == 202
    assert len(api.keys) == 2 and api.keys[0] == api.keys[1] != ""
    assert c.errors == []


def test_a_500_is_a_violation_and_the_command_is_sent_again(no_pause: None) -> None:
    api = Api([answer("500 Internal Server Error", b"boom"), answer("202 Accepted", BODY)])
    c = client(api.url)
    status, _ = c.call("POST", "/v1/vms", {"name": "x"})
    assert status == 202
    assert len(c.errors) == 1 and "answered 500" in c.errors[0]


def test_a_client_that_fails_records_it_and_goes_on(no_pause: None) -> None:
    c = client("http://127.0.0.1:9")
    steps = iter([RuntimeError("surprise")])

    def step() -> None:
        try:
            raise next(steps)
        except StopIteration:
            c.stop.set()

    c.step = step  # type: ignore[method-assign]
    c.run()
    assert c.errors == ["client 1 failed: RuntimeError('surprise')"]
