"""Start-up of the client CLI: from starting `cloud-engine vm list` to the
first byte of its request arriving at the API (target: <= 150 ms).

A loopback socket stands in for the API (it answers an empty page), so only
the CLI's own start-up is timed: the interpreter, its imports, reading the
profile, building the request. Each command is run --repeat times, one at a
time, as a person's shell runs it (the installed `cloud-engine` script):

- baseline `python -c pass`: the interpreter alone, start to exit;
- baseline `python` connecting and sending one byte: the least any Python
  client can take to its first byte;
- `cloud-engine vm list`: the CLI, start to first byte;
- `python -m cloud_engine.runner.cli vm list`: the same command through the
  server's module, which imports the engine, bus and API first (what the
  entry point avoids).

    python bench/cli.py [--repeat 20]

Also the CPU time (user+sys) of each whole run, which a loaded machine
does not inflate as it does wall-clock time.

Last line: cli_cpu_ms=<median> python_pass_cpu_ms=<median>
cli_first_byte_ms=<median> python_pass_ms=<median>
python_first_byte_ms=<median> server_module_first_byte_ms=<median>
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PAGE = b'{"items": [], "next_cursor": null}'
REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(PAGE)).encode() + b"\r\n\r\n" + PAGE
)


class FirstByte:
    """A listening socket that notes when the first byte of each connection
    arrives and answers an empty page."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.arrived: list[float] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            with conn:
                first = conn.recv(1)
                self.arrived.append(time.perf_counter())
                if not first:
                    continue
                conn.settimeout(2)
                data = first
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if data.startswith(b"GET"):
                        conn.sendall(REPLY)
                except OSError:
                    pass


CPU: dict[str, list[float]] = {}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def first_byte_ms(server: FirstByte, argv: list[str], env: dict[str, str], name: str = "") -> float:
    before = len(server.arrived)
    cpu = _cpu_s()
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60)
    if done.returncode != 0 or len(server.arrived) != before + 1:
        raise SystemExit(f"{argv}: rc={done.returncode} {done.stderr.decode()[-500:]}")
    CPU.setdefault(name, []).append((_cpu_s() - cpu) * 1000)
    return (server.arrived[before] - start) * 1000


def exit_ms(argv: list[str], env: dict[str, str], name: str = "") -> float:
    cpu = _cpu_s()
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, timeout=60)
    CPU.setdefault(name, []).append((_cpu_s() - cpu) * 1000)
    return (time.perf_counter() - start) * 1000


def summary(name: str, values: list[float]) -> float:
    values = sorted(values)
    median = statistics.median(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    print(f"{name:44} median {median:7.1f} ms  p90 {p90:7.1f} ms  min {values[0]:7.1f} ms")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    server = FirstByte()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_ENGINE_")}
    env.update(
        CLOUD_ENGINE_URL=f"http://127.0.0.1:{server.port}",
        CLOUD_ENGINE_TOKEN="ce_bench",
        CLOUD_ENGINE_CONFIG=str(Path(tempfile.mkdtemp()) / "none.toml"),
    )
    python = sys.executable
    connect = (
        "import socket; s = socket.create_connection(('127.0.0.1', "
        f"{server.port})); s.sendall(b'x'); s.close()"
    )
    cli = [str(BIN / "cloud-engine"), "vm", "list"]
    server_module = [python, "-m", "cloud_engine.runner.cli", "vm", "list"]
    runs: dict[str, list[float]] = {"pass": [], "connect": [], "cli": [], "server": []}
    for argv in (cli, server_module):  # warm the .pyc caches
        first_byte_ms(server, argv, env, "warm")
    for i in range(args.repeat):
        runs["pass"].append(exit_ms([python, "-c", "pass"], env, "pass"))
        runs["connect"].append(first_byte_ms(server, [python, "-c", connect], env, "connect"))
        runs["cli"].append(first_byte_ms(server, cli, env, "cli"))
        if i < max(3, args.repeat // 4):  # slow; a few runs say enough
            runs["server"].append(first_byte_ms(server, server_module, env, "server"))
    print(f"{args.repeat} runs each, one at a time, on {os.cpu_count()} cores")
    pass_ms = summary("baseline: python -c pass (to exit)", runs["pass"])
    connect_ms = summary("baseline: python, connect + send (first byte)", runs["connect"])
    cli_ms = summary("cloud-engine vm list (first byte)", runs["cli"])
    server_ms = summary("python -m ...runner.cli vm list (first byte)", runs["server"])
    # CPU time of each whole run (to exit), which a loaded machine does not
    # inflate the way it does wall-clock time.
    cpu = {k: statistics.median(v) for k, v in CPU.items() if v}
    print(f"CPU (user+sys) per run, median: python -c pass {cpu['pass']:.1f} ms, connect+send"
          f" {cpu['connect']:.1f} ms, cloud-engine vm list {cpu['cli']:.1f} ms (answer included),"
          f" through runner/cli.py {cpu['server']:.1f} ms")  # fmt: skip
    print(
        f"cli_cpu_ms={cpu['cli']:.1f} python_pass_cpu_ms={cpu['pass']:.1f} "
        f"cli_first_byte_ms={cli_ms:.1f} python_pass_ms={pass_ms:.1f}"
        f" python_first_byte_ms={connect_ms:.1f} server_module_first_byte_ms={server_ms:.1f}"
    )


if __name__ == "__main__":
    main()
