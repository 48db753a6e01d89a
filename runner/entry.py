"""The `cloud-engine` entry point. Client commands (`vm list`, `login`, ...)
go to client/ without importing the server's modules (runner/cli.py loads
the engine, the bus and the API: ~1.7 s, where the CLI's target is 150 ms
to its first request); everything else is runner/cli.py."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from cloud_engine.client import main as client

    if client.handles(args):
        return client.main(args)
    from cloud_engine.runner.cli import main as server

    return server(args)


if __name__ == "__main__":
    sys.exit(main())
