"""docker/compose.yml and docker/Dockerfile cannot be run here (no Docker
engine on these machines), so what can be checked without one is: the
compose file parses, every service runs a real `cloud-engine` subcommand,
every variable it sets is a setting documented in docs/operations.md, and
the image copies every package the wheel is built from."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_engine.infra.settings import PREFIX, Settings
from cloud_engine.runner.cli import _parser

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _engine_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in _compose()["services"].items()
        if service.get("image") == "cloud-engine:dev"
    }


def test_compose_parses_into_the_components() -> None:
    compose = _compose()
    assert set(compose["volumes"]) == {"postgres-data", "kafka-data"}
    assert set(_engine_services()) == {"relay", "api", "engine", "projections", "effector"}


@pytest.mark.parametrize("name", sorted(_engine_services()))
def test_every_service_runs_a_real_subcommand(name: str) -> None:
    command = _engine_services()[name]["command"]
    try:
        args = _parser().parse_args(command)
    except SystemExit as e:  # argparse's way of refusing
        pytest.fail(f"{name}: `cloud-engine {' '.join(command)}` is refused ({e})")
    assert args.command == command[0]


def test_every_variable_is_a_documented_setting() -> None:
    documented = (ROOT / "docs" / "operations.md").read_text()
    fields = {PREFIX + f.upper() for f in Settings.__struct_fields__}
    for name, service in _engine_services().items():
        for variable in service["environment"]:
            assert variable in fields, f"{name}: {variable} is not a setting"
            assert f"`{variable}`" in documented, f"{variable} is not in docs/operations.md"


def test_the_image_copies_every_package() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["cloud_engine*"]
    # The package and every layer folder its links point to.
    layers = {p.name for p in (ROOT / "cloud_engine").iterdir() if p.is_symlink()}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.MULTILINE))
    assert {"cloud_engine", *layers} <= copied, f"not copied: {layers - copied}"
    assert re.search(r"^COPY pyproject\.toml uv\.lock ", dockerfile, re.MULTILINE)
    assert "uv sync --locked" in dockerfile
