from pathlib import Path

import pytest

from cloud_engine.infra.database import parse_database_url
from cloud_engine.infra.settings import SettingsError, load_settings


def test_defaults_use_embedded_database():
    settings = load_settings(environ={})
    assert settings.database_url is None
    assert settings.pgdata == settings.data_dir / "pgdata"
    assert settings.command_batch_max == 256


def test_values_come_from_prefixed_environment():
    settings = load_settings(
        environ={
            "CLOUD_ENGINE_DB_POOL_SIZE": "9",
            "CLOUD_ENGINE_DATA_DIR": "/srv/ce",
            "CLOUD_ENGINE_LOG_FORMAT": "console",
        }
    )
    assert settings.db_pool_size == 9
    assert settings.data_dir == Path("/srv/ce")
    assert settings.log_format == "console"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("CLOUD_ENGINE_DB_POOL_SIZE", "many", "Expected `int`"),
        ("CLOUD_ENGINE_DB_POOL_SIZE", "0", ">= 1"),
        ("CLOUD_ENGINE_LOG_FORMAT", "xml", "Invalid enum value"),
        ("CLOUD_ENGINE_COMMAND_MAX_RETRIES", "-1", ">= 0"),
    ],
)
def test_bad_values_name_the_variable(variable, value, fragment):
    with pytest.raises(SettingsError) as info:
        load_settings(environ={variable: value})
    assert str(info.value).startswith(variable)
    assert fragment in str(info.value)


def test_database_url_is_parsed():
    target = parse_database_url("postgresql://ce:s%40cret@db.local:6543/cloud", schema="x")
    assert (target.host, target.port, target.user, target.password) == (
        "db.local",
        6543,
        "ce",
        "s@cret",
    )
    assert target.dbname == "cloud"
    assert target.schema == "x"
    assert "s@cret" not in target.describe()


@pytest.mark.parametrize(
    "url",
    ["mysql://u@h/db", "postgresql://h", "postgresql://u@h:notaport/db", "postgresql:///db"],
)
def test_bad_database_url_is_a_settings_error(url):
    with pytest.raises(SettingsError):
        parse_database_url(url)


def test_unix_socket_url_round_trips():
    target = parse_database_url("postgresql://postgres@localhost:5432/cloudengine?host=/tmp/pg")
    assert target.host == "/tmp/pg"
    assert parse_database_url(target.url()) == target
