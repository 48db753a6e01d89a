"""The API does what its OpenAPI document says: schemathesis (from PyPI)
against the real server, once with an admin token and once with a user's.

Every check schemathesis has runs (not_a_server_error, status, content type,
headers and response schema conformance, negative_data_rejection,
positive_data_acceptance, missing_required_header, unsupported_method,
ignored_auth, use_after_free, ensure_resource_availability, ...) in every
phase (examples, coverage, fuzzing, and the stateful phase, which follows
the document's links from each command to its operation and resource),
plus refusal_of_valid_data_names_state from schemathesis_hooks.py. The run
must end with no failure and no error.

The server is the one the other tests here use (uvicorn on a loopback port,
the embedded PostgreSQL), with a fabric and a user's network and VM (its
deploy stays pending: no engine runs here), projected so lists have rows.
Generated bodies name those resources often (the dictionaries below), so
commands get past their 404s into the engine. The CLI runs as a
subprocess: the server lives in this test's event loop.

Bounded and repeatable: EXAMPLES cases per operation and phase, a fixed seed
(CLOUD_ENGINE_FUZZ_SEED picks another). It prints what it ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from api_harness import Api, Fabric, created, make_fabric, vm_body

HERE = Path(__file__).resolve().parent
EXAMPLES = {"admin": 10, "user": 5}
STATEFUL_SCENARIOS = 30
SEED = int(os.environ.get("CLOUD_ENGINE_FUZZ_SEED", "1"))

# positive_data_acceptance's defaults plus 400 and 422: the hooks module's
# check decides which of those a schema-valid request may get.
ACCEPTED = ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]


def _config(fabric: Fabric, network: str, vm: str) -> str:
    dictionaries = {
        "zone": [fabric.zone],
        "pod": [fabric.pod],
        "cluster": [fabric.cluster],
        "host": fabric.hosts,
        "physical_network": [fabric.physical_network],
        "template": [fabric.template],
        "network": [network],
        "vm": [vm],
    }
    # Body fields that name a resource: usually one that exists.
    bindings = {
        "zone_id": "zone",
        "pod_id": "pod",
        "cluster_id": "cluster",
        "host_id": "host",
        "physical_network_id": "physical_network",
        "template_id": "template",
        "network_id": "network",
        "network_ids[*]": "network",
        "vm_id": "vm",
    }
    lines = [
        # An endless text/event-stream (and 503 on this API without a
        # broker): test_console.py tests it.
        "[[operations]]",
        'include-path = "/v1/stream"',
        "enabled = false",
        "",
        "[checks.positive_data_acceptance]",
        f"expected-statuses = {json.dumps(ACCEPTED)}",
        "",
        # Scenarios of up to 20 linked calls; more of them than cases per
        # operation, as each one is a whole chain.
        "[phases.stateful]",
        "max-steps = 20",
        "",
        "[phases.stateful.generation]",
        f"max-examples = {STATEFUL_SCENARIOS}",
        "",
    ]
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    for field, name in bindings.items():
        lines.append(f'"body.{field}" = {{ dictionary = "{name}", probability = 0.8 }}')
    return "\n".join(lines) + "\n"


def _summary(output: str) -> str:
    """The lines that say what ran: phases, links, test cases, time."""
    keep = re.compile(
        r"(Examples|Coverage|Fuzzing|Stateful) \(in|Scenarios:|API Links:|generated,"
        r"|Operations:|Seed:|(passed|failures?|errors?).* in [0-9.]+s"
    )
    return "\n".join(line for line in output.splitlines() if keep.search(line))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("who", ["admin", "user"])
async def test_schemathesis_finds_no_failure(api: Api, tmp_path: Path, who: str) -> None:
    fabric = await make_fabric(api)
    network = await created(
        await api.post(
            "/v1/networks",
            {
                "name": "alice-net",
                "zone_id": fabric.zone,
                "cidr": "10.9.0.0/24",
                "isolation": "VXLAN",
                "physical_network_id": fabric.physical_network,
            },
            token=api.alice,
        )
    )
    vm = await created(
        await api.post("/v1/vms", vm_body(fabric, network_ids=[network]), token=api.alice)
    )
    await api.project()
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(fabric, network, vm))
    token = api.admin if who == "admin" else api.alice
    url = f"http://127.0.0.1:{api.port}"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", f"{url}/openapi.json", "--url", url,
        "--header", f"Authorization: Bearer {token}",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(EXAMPLES[who]), "--seed", str(SEED),
        # One worker: CPython 3.11's ast module keeps its recursion depth in
        # shared state, and hypothesis parses lambdas on every worker thread
        # ("AST constructor recursion depth mismatch", cpython#106905).
        "--workers", "1",
        "--request-timeout", "30",
        "--generation-database", "none",
        "--no-color", "--output-truncate", "false",
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    stdout, _ = await process.communicate()
    output = stdout.decode(errors="replace")
    elapsed = time.monotonic() - started
    print(f"schemathesis as {who}, seed {SEED}, {EXAMPLES[who]} examples, {elapsed:.0f} s:")
    print(_summary(output))
    assert process.returncode == 0, output
    assert re.search(r"Stateful \(in", output), "the stateful phase did not run\n" + output
