from uuid import uuid4

import pytest

from cloud_engine.engine.errors import InvalidTransition, Validation
from cloud_engine.engine.fabric.image_store import ImageStore
from tests.unit.support import assert_disable_then_enable, assert_refused, event_names


def make_store(**overrides):
    values = {
        "zone_id": uuid4(),
        "name": "secondary-1",
        "url": "nfs://filer-1/export/secondary",
        "protocol": "nfs",
    }
    values.update(overrides)
    return ImageStore.create(**values)


def test_create_records_location():
    store_id = uuid4()
    store = make_store(id=store_id)
    assert store.id == store_id
    assert (store.protocol, store.url, store.state) == (
        "nfs",
        "nfs://filer-1/export/secondary",
        "Enabled",
    )
    assert event_names(store) == ["Created"]


@pytest.mark.parametrize(
    ("protocol", "url"),
    [
        ("file", "/var/lib/cloud-engine/images"),
        ("file", "file:///var/lib/cloud-engine/images"),
        ("http", "http://mirror.example/images"),
        ("http", "https://mirror.example/images"),
    ],
)
def test_create_accepts_urls_matching_the_protocol(protocol, url):
    assert make_store(protocol=protocol, url=url).url == url


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "name"),
        ({"protocol": "ftp"}, "protocol"),
        ({"url": "http://filer-1/export"}, "url"),
        ({"url": "nfs:///no-host"}, "url"),
        ({"url": "filer-1:/export"}, "url"),
        ({"protocol": "file", "url": "relative/dir"}, "url"),
        ({"protocol": "file", "url": "nfs://filer-1/export"}, "url"),
        ({"protocol": "http", "url": "https://"}, "url"),
        ({"protocol": "http", "url": "https://mirror.example/with space"}, "url"),
    ],
)
def test_create_refuses_invalid_values(overrides, field):
    with pytest.raises(Validation) as info:
        make_store(**overrides)
    assert info.value.field == field


def test_disable_and_enable():
    assert_disable_then_enable(make_store())


def test_enable_refused_when_enabled():
    store = make_store()
    assert_refused(store, InvalidTransition, store.enable)


def test_disable_refused_when_disabled():
    store = make_store()
    store.disable()
    assert_refused(store, InvalidTransition, store.disable)
