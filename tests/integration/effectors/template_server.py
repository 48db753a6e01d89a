"""A loopback HTTP server for template images, and small qcow2 helpers."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

MiB = 1024 * 1024


def qemu_io(path: Path, fmt: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, str(path)], capture_output=True, text=True
    )


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


class Served(msgspec.Struct):
    root: Path
    base_url: str
    requests: list[str]


@contextmanager
def serve(root: Path) -> Iterator[Served]:
    """Serves root over HTTP on 127.0.0.1, recording each GET's path."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(root, f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()


def make_template_image(root: Path, name: str) -> tuple[Path, str]:
    """A 4 MiB qcow2 whose first 64 KiB hold the byte 0x5a; its sha256."""
    path = root / name
    qemu_img("create", "-f", "qcow2", str(path), str(4 * MiB))
    assert qemu_io(path, "qcow2", "write -P 0x5a 0 64k").returncode == 0
    return path, hashlib.sha256(path.read_bytes()).hexdigest()
