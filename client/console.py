"""`cloud-engine console <vm id>`: a VM's serial console in this terminal.

Speaks only to the API (GET /v1/vms/{id}/console, a WebSocket, with the
profile's URL and token, as every client command). The terminal is put in
raw mode, so keys (Ctrl-C too) go to the guest; Ctrl-] ends the session, as
with `virsh console`. Without a terminal (a pipe), stdin is sent as it
comes and the session ends at its end (after --linger seconds of output).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Iterator, Sequence

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from cloud_engine.client import config

ESCAPE = b"\x1d"  # Ctrl-]


def main(argv: Sequence[str], prog: str = "cloud-engine console") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="a VM's serial console")
    parser.add_argument("vm_id")
    parser.add_argument("--profile")
    parser.add_argument(
        "--linger", type=float, default=2.0, help="without a terminal: seconds to keep showing"
        " output after stdin ends (default %(default)s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        profile = config.resolve(args.profile)
    except config.ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    url = profile.url.replace("http", "ws", 1) + f"/v1/vms/{args.vm_id}/console"
    headers = {"Authorization": f"Bearer {profile.token}"} if profile.token else {}
    try:
        with connect(url, additional_headers=headers, open_timeout=30) as ws:
            return _session(ws, args.linger)
    except InvalidStatus as e:
        print(f"{prog}: the API refused: HTTP {e.response.status_code}", file=sys.stderr)
    except (OSError, TimeoutError) as e:
        print(f"{prog}: {url}: {e}", file=sys.stderr)
    return 1


def _session(ws: ClientConnection, linger: float) -> int:
    closed: list[str] = []

    def show() -> None:
        try:
            for message in ws:
                data = message.encode() if isinstance(message, str) else message
                os.write(sys.stdout.fileno(), data)
        except ConnectionClosed:
            pass
        rcvd = ws.close_code
        if rcvd not in (None, 1000):
            closed.append(f"{rcvd} {ws.close_reason}")

    reader = threading.Thread(target=show, daemon=True)
    reader.start()
    stdin = sys.stdin.fileno()
    with _raw(stdin) as terminal:
        while reader.is_alive():
            ready, _, _ = select.select([stdin], [], [], 0.2)
            if not ready:
                continue
            data = os.read(stdin, 4096)
            if not data or (terminal and ESCAPE in data):
                break
            with contextlib.suppress(ConnectionClosed):
                ws.send(data)
        if not terminal and reader.is_alive():
            reader.join(linger)
    ws.close()
    reader.join(2)
    if closed:
        print(f"\r\nconsole closed: {closed[0]}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[bool]:
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    print("connected; Ctrl-] ends the session\r", file=sys.stderr)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
