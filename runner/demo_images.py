"""The demo templates' images and the loopback HTTP server `up` fetches them from.

Templates are fetched by the effector over http(s) like any other: `up`
copies the tiny-linux guest image (runner/guest_image.py: a Linux that
boots, takes its address by DHCP and serves its page on port 80) from its
cache into the data directory once, with the same system as a bootable
ISO (the demo ISO), and serves that directory on 127.0.0.1 while it runs.
The port goes into the templates' URLs at their registration, so a later
`up` serves on the same port when one still needs fetching.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog

from cloud_engine.runner import guest_image

log = structlog.get_logger("runner.demo_images")

IMAGE = guest_image.IMAGE
IMAGE_SIZE = guest_image.DISK_MIB * 1024 * 1024
ISO = guest_image.ISO  # the same system as a bootable ISO: the demo ISO


def ensure_image(root: Path) -> guest_image.GuestImage:
    """The demo images (the guest image and its ISO, copied once)."""
    return guest_image.copy_to(root)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("template_served", request=format % args)


class ImageServer:
    """Serves root on 127.0.0.1:port (0 picks one) from a daemon thread."""

    def __init__(self, root: Path, port: int = 0) -> None:
        handler = functools.partial(_Quiet, directory=str(root))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="demo-images", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
