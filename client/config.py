"""The client's per-user configuration: named profiles, each an API URL and
a token, like the openstack CLI's clouds.yaml.

    $XDG_CONFIG_HOME/cloud-engine/config.toml   (~/.config/... by default;
                                                 CLOUD_ENGINE_CONFIG moves it)
    default = "local"
    [profiles.local]
    url = "http://127.0.0.1:8080"
    token = "ce_..."

The file holds secrets, so it is written with mode 0600 (and its directory
0700) through a temporary file renamed into place: a crash never leaves a
half-written file, and the token is never readable by others, not even for
a moment. Which profile: --profile, else CLOUD_ENGINE_PROFILE, else the
file's default; CLOUD_ENGINE_URL and CLOUD_ENGINE_TOKEN override its fields
(a script can run without any file).
"""

from __future__ import annotations

import os
import re

# Imports are start-up time (the CLI's target is 150 ms to its first
# request): no typing, dataclasses or pathlib at run time; tomllib only
# when there is a file to read.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(Exception):
    """No usable profile: the message says what to do."""


class Profile:
    __slots__ = ("name", "token", "url")

    def __init__(self, name: str, url: str, token: str | None) -> None:
        self.name = name
        self.url = url
        self.token = token

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Profile) and (self.name, self.url, self.token) == (
            other.name,
            other.url,
            other.token,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.url, self.token))

    def __repr__(self) -> str:  # never the token
        return f"Profile(name={self.name!r}, url={self.url!r})"


def path() -> str:
    explicit = os.environ.get("CLOUD_ENGINE_CONFIG")
    if explicit:
        return os.path.expanduser(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "cloud-engine", "config.toml")


def load(file: str | None = None) -> dict[str, Any]:
    file = file or path()
    try:
        f = open(file, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return {}
    import tomllib

    with f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file}: {e}") from None


def resolve(profile: str | None = None, file: str | None = None) -> Profile:
    env = os.environ
    data = load(file)
    name = profile or env.get("CLOUD_ENGINE_PROFILE") or data.get("default")
    stored: dict[str, Any] = {}
    if name:
        stored = data.get("profiles", {}).get(name) or {}
        if not stored and not env.get("CLOUD_ENGINE_URL"):
            raise ConfigError(f"no profile {name!r} in {file or path()}: cloud-engine login URL")
    url = env.get("CLOUD_ENGINE_URL") or stored.get("url")
    token = env.get("CLOUD_ENGINE_TOKEN") or stored.get("token")
    if not url:
        raise ConfigError("not logged in: run `cloud-engine login URL` (or set CLOUD_ENGINE_URL)")
    return Profile(name=name or "env", url=str(url).rstrip("/"), token=token)


def configured(profile: str | None = None) -> bool:
    """Whether a profile (or the environment) names an API at all."""
    try:
        resolve(profile)
    except ConfigError:
        return False
    return True


def _quote(value: str) -> str:
    # TOML basic strings share JSON's escapes for what a URL or token holds.
    import json

    return json.dumps(value)


def render(data: dict[str, Any]) -> str:
    lines = []
    if data.get("default"):
        lines.append(f"default = {_quote(data['default'])}")
    for name, fields in sorted(data.get("profiles", {}).items()):
        lines.append("")
        lines.append(f"[profiles.{_quote(name)}]")
        for key in ("url", "token"):
            if fields.get(key):
                lines.append(f"{key} = {_quote(str(fields[key]))}")
    return "\n".join(lines) + "\n"


def save(name: str, url: str, token: str, *, make_default: bool, file: str | None = None) -> str:
    if not PROFILE_NAME.match(name):
        raise ConfigError(f"profile {name!r}: letters, digits, '.', '_' and '-', at most 64")
    file = file or path()
    data = load(file)
    data.setdefault("profiles", {})[name] = {"url": url.rstrip("/"), "token": token}
    if make_default or not data.get("default"):
        data["default"] = name
    directory, base = os.path.split(file)
    os.makedirs(directory or ".", mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render(data))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case the umask or an old file widened it
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return file
