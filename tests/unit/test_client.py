"""The client CLI's pieces that need no server: the verb table against the
OpenAPI document, the YAML it prints, the profile file and the dispatch
between client and server commands."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml as pyyaml

from cloud_engine.client import config, gen, output
from cloud_engine.client.main import handles
from cloud_engine.client.verbs import VERBS


def test_verb_table_is_generated_from_the_current_openapi_document() -> None:
    document = json.loads(gen.OPENAPI.read_text())
    assert gen.TARGET.read_text() == gen.render(document), "python -m cloud_engine.client.gen"


def test_every_api_operation_is_a_command() -> None:
    document = json.loads(gen.OPENAPI.read_text())
    # A stream is not a request a person types: `events --follow` reads it.
    operations = {
        (method.upper(), path)
        for path, methods in document["paths"].items()
        if path.startswith("/v1/")
        for method, op in methods.items()
        if "text/event-stream" not in op["responses"].get("200", {}).get("content", {})
    }
    # The console's live event stream (server-sent events) is not a command.
    operations.discard(("GET", "/v1/stream"))
    commands = {(v["method"], v["path"]) for verbs in VERBS.values() for v in verbs.values()}
    assert operations == commands
    assert {"deploy", "start", "stop", "reboot", "migrate", "destroy"} <= set(VERBS["vm"])
    assert VERBS["vm"]["deploy"]["operation"] and not VERBS["zone"]["create"]["operation"]


@pytest.mark.parametrize(
    "document",
    [
        {"a": "yes", "b": "1.5", "c": "x: y", "d": "", "e": "-", "f": None, "g": True},
        {"list": [{"name": "place", "status": "done"}, [], {}, [1, [2, "3"]]], "n": -4.5e-3},
        [{"id": "30a9d118-fcf9-4bc1-9f6d-8baac4dc088d", "t": "2026-12-07T03:21:34Z"}],
        {"odd": "a #b", "quote": 'say "hi"', "nl": "two\nlines", "key with space": "~"},
    ],
)
def test_yaml_output_reads_back_as_the_same_document(document: Any) -> None:
    assert pyyaml.safe_load(output.yaml(document)) == document


def test_profiles_file_is_private_and_profiles_resolve_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CLOUD_ENGINE_PROFILE", "CLOUD_ENGINE_URL", "CLOUD_ENGINE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    file = tmp_path / "cfg" / "config.toml"
    monkeypatch.setenv("CLOUD_ENGINE_CONFIG", str(file))
    with pytest.raises(config.ConfigError, match="login"):
        config.resolve()
    config.save("one", "http://a:1/", "ce_a", make_default=False)
    config.save("two", "http://b:2", "ce_b", make_default=False)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    assert config.resolve() == config.Profile(name="one", url="http://a:1", token="ce_a")
    assert config.resolve("two").token == "ce_b"
    monkeypatch.setenv("CLOUD_ENGINE_PROFILE", "two")
    assert config.resolve().url == "http://b:2"
    assert config.resolve("one").url == "http://a:1"  # the option beats the environment
    monkeypatch.setenv("CLOUD_ENGINE_TOKEN", "ce_env")
    assert config.resolve().token == "ce_env"
    with pytest.raises(config.ConfigError, match="no profile 'three'"):
        config.resolve("three")
    config.save("two", "http://b:3", "ce_c", make_default=True)  # login again: replaced
    monkeypatch.delenv("CLOUD_ENGINE_PROFILE")
    monkeypatch.delenv("CLOUD_ENGINE_TOKEN")
    assert config.resolve() == config.Profile(name="two", url="http://b:3", token="ce_c")
    with pytest.raises(config.ConfigError):
        config.save("no spaces", "http://x", "ce_x", make_default=False)


def test_client_and_server_commands_are_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CLOUD_ENGINE_PROFILE", "CLOUD_ENGINE_URL", "CLOUD_ENGINE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUD_ENGINE_CONFIG", str(tmp_path / "none.toml"))
    assert handles(["vm", "list"]) and handles(["login", "http://x"]) and handles(["events", "x"])
    assert handles(["console", "web-1"])  # without loading the server
    assert not handles(["up"]) and not handles(["lab", "status"]) and not handles([])
    # The first admin token is made on the server, with no profile to use.
    assert not handles(["token", "create", "--role", "admin", "--account", "ops"])
    monkeypatch.setenv("CLOUD_ENGINE_URL", "http://127.0.0.1:8080")
    assert handles(["token", "create", "--role", "user", "--account", "alice"])
    assert not handles(["token", "create", "--role", "user", "--account", "a", "--data-dir", "d"])


class _Reply:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body


class _Operations:
    """Answers GET /v1/operations/{id} from a script of documents."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents
        self.asked = 0

    def request(self, method: str, path: str, **_: Any) -> _Reply:
        assert (method, path) == ("GET", "/v1/operations/op-1")
        document = self.documents[min(self.asked, len(self.documents) - 1)]
        self.asked += 1
        return _Reply(document)


def _op(version: int, state: str, *done: str) -> dict[str, Any]:
    steps = [{"name": n, "status": "done" if n in done else "pending"} for n in ("place", "start")]
    attributes = {"kind": "vm.start", "steps": steps, "current_step": "start"}
    return {"id": "op-1", "version": version, "state": state, "attributes": attributes}


@pytest.mark.parametrize("live", [False, True])
def test_wait_follows_the_steps_and_never_goes_back(
    live: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud_engine.client import wait

    monkeypatch.setattr(wait, "POLL_S", 0)
    script = [
        _op(1, "pending"),
        _op(2, "running", "place"),
        _op(1, "pending"),  # a read model a moment behind: not shown
        _op(3, "succeeded", "place", "start"),
    ]
    client = _Operations(script)
    final = wait.wait(client, "op-1", live=live)  # type: ignore[arg-type]
    assert final["state"] == "succeeded" and client.asked == 4
    err = capsys.readouterr().err
    if live:
        assert "vm.start op-1: succeeded" in err and "done" in err
    else:
        states = [line.split()[3] for line in err.splitlines()]
        assert states == ["pending", "running", "succeeded"]


def test_id_fields_name_the_noun_a_name_is_looked_up_in() -> None:
    from cloud_engine.client.main import _noun_of

    assert _noun_of("template_id") == "template"
    assert _noun_of("target_host_id") == "host"
    assert _noun_of("network_ids") == "network"
    assert _noun_of("iso_id") == "template"  # an ISO is a template
    assert _noun_of("name") is None
