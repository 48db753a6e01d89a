"""`--wait`: follow an operation until it finishes, showing its steps.

On a terminal the steps are a live display (rich, imported only here: it
costs ~100 ms to import, which `vm list` does not pay); otherwise one line
per change on stderr, so a script's stdout stays the final document.
"""

from __future__ import annotations

import sys
import time

from cloud_engine.client.http import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FINISHED = ("succeeded", "failed", "compensated")
POLL_S = 0.25


def _steps(op: dict[str, Any]) -> list[dict[str, Any]]:
    steps = op.get("attributes", {}).get("steps") or []
    return [s for s in steps if isinstance(s, dict)]


def _line(op: dict[str, Any]) -> str:
    marks = {"done": "✓", "failed": "✗", "pending": "·"}
    steps = " ".join(f"{marks.get(s.get('status', ''), '?')}{s.get('name')}" for s in _steps(op))
    kind = op.get("attributes", {}).get("kind", "")
    return f"operation {op['id']} {kind}: {op['state']}  {steps}"


def _newer(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Never go back: a read can come from a read model a moment behind the
    log after one answered from the log itself."""
    if old and int(old.get("version") or 0) > int(new.get("version") or 0):
        return old
    return new


def wait(client: Client, operation_id: str, *, live: bool | None = None) -> dict[str, Any]:
    """Polls GET /v1/operations/{id} until it is finished; returns it."""
    live = sys.stderr.isatty() if live is None else live
    if live:
        return _wait_live(client, operation_id)
    last = ""
    op: dict[str, Any] = {}
    while True:
        op = _newer(op, client.request("GET", f"/v1/operations/{operation_id}").body)
        line = _line(op)
        if line != last:
            print(line, file=sys.stderr, flush=True)
            last = line
        if op["state"] in FINISHED:
            return op
        time.sleep(POLL_S)


def _wait_live(client: Client, operation_id: str) -> dict[str, Any]:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    started = time.monotonic()

    def render(op: dict[str, Any]) -> Table:
        attributes = op.get("attributes", {})
        title = f"{attributes.get('kind', 'operation')} {op['id']}: {op['state']}"
        grid = Table(title=title, title_justify="left", show_header=True, box=None)
        grid.add_column("step")
        grid.add_column("status")
        grid.add_column("finished at")
        current = attributes.get("current_step")
        for step in _steps(op):
            status = step.get("status", "")
            style = {"done": "green", "failed": "red"}.get(status, "")
            if status == "pending" and step.get("name") == current and op["state"] not in FINISHED:
                status, style = "running", "yellow"
            grid.add_row(
                str(step.get("name")),
                f"[{style}]{status}[/]" if style else status,
                str(step.get("finished_at") or ""),
            )
        if attributes.get("error"):
            grid.add_row("error", f"[red]{attributes['error']}[/]", "")
        grid.caption = f"{time.monotonic() - started:.1f} s"
        return grid

    console = Console(stderr=True)
    op: dict[str, Any] = client.request("GET", f"/v1/operations/{operation_id}").body
    with Live(render(op), console=console, refresh_per_second=8, transient=False) as display:
        while op["state"] not in FINISHED:
            time.sleep(POLL_S)
            op = _newer(op, client.request("GET", f"/v1/operations/{operation_id}").body)
            display.update(render(op))
    return op
