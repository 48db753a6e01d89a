"""Pool and volume XML as libvirt will read it, built without libvirt."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from cloud_engine.effectors.storage.pools import BACKENDS, DirPool, UnknownPoolKind, backend_for
from cloud_engine.effectors.storage.spec import PoolSpec
from cloud_engine.effectors.storage.volumes import _check_snapshot_name, parse_volume, volume_xml

NASTY = "a<b>&'\"c"


def test_dir_pool_xml():
    root = ET.fromstring(DirPool().pool_xml(PoolSpec(name="p1", path="/srv/pools/p1")))
    assert root.tag == "pool"
    assert root.get("type") == "dir"
    assert root.findtext("name") == "p1"
    assert root.findtext("target/path") == "/srv/pools/p1"


def test_pool_xml_escapes_special_characters():
    xml = DirPool().pool_xml(PoolSpec(name=NASTY, path=f"/srv/{NASTY}"))
    assert "<b>" not in xml
    root = ET.fromstring(xml)
    assert root.findtext("name") == NASTY
    assert root.findtext("target/path") == f"/srv/{NASTY}"


def test_dir_pool_matches_its_own_definition_and_not_another_path():
    spec = PoolSpec(name="p1", path="/srv/pools/p1/")
    backend = DirPool()
    defined = ET.fromstring(backend.pool_xml(spec))
    assert backend.mismatch(spec, defined) is None
    other = PoolSpec(name="p1", path="/srv/elsewhere")
    assert "path" in (backend.mismatch(other, defined) or "")


def test_unknown_pool_kind_is_rejected_by_name():
    assert set(BACKENDS) == {"dir"}
    with pytest.raises(UnknownPoolKind, match="'nfs'"):
        backend_for("nfs")


def test_plain_volume_xml():
    root = ET.fromstring(volume_xml("disk0", 2 * 1024**3))
    assert root.findtext("name") == "disk0"
    capacity = root.find("capacity")
    assert capacity is not None
    assert capacity.get("unit") == "bytes"
    assert capacity.text == str(2 * 1024**3)
    fmt = root.find("target/format")
    assert fmt is not None
    assert fmt.get("type") == "qcow2"
    assert root.findtext("target/compat") == "1.1"
    assert root.find("backingStore") is None


def test_backed_volume_xml_names_backing_file_and_format():
    root = ET.fromstring(
        volume_xml("disk0", 1024, backing_path="/t/tmpl.img", backing_format="raw")
    )
    assert root.findtext("backingStore/path") == "/t/tmpl.img"
    fmt = root.find("backingStore/format")
    assert fmt is not None
    assert fmt.get("type") == "raw"


def test_volume_xml_escapes_special_characters():
    xml = volume_xml(NASTY, 1, backing_path=f"/t/{NASTY}")
    assert "<b>" not in xml
    root = ET.fromstring(xml)
    assert root.findtext("name") == NASTY
    assert root.findtext("backingStore/path") == f"/t/{NASTY}"


def test_parse_volume_reads_libvirts_description():
    xml = """<volume type='file'><name>v1</name><key>/p/v1</key>
      <capacity unit='bytes'>2097152</capacity><allocation unit='bytes'>200704</allocation>
      <target><path>/p/v1</path><format type='qcow2'/></target>
      <backingStore><path>/t/tmpl.qcow2</path><format type='qcow2'/></backingStore></volume>"""
    state = parse_volume("pool", "v1", xml)
    assert state.exists
    assert state.path == "/p/v1"
    assert state.capacity_bytes == 2097152
    assert state.format == "qcow2"
    assert state.backing_path == "/t/tmpl.qcow2"


@pytest.mark.parametrize("name", ["", "1", "42"])
def test_snapshot_names_that_qemu_would_read_as_ids_are_refused(name):
    with pytest.raises(ValueError, match="snapshot name"):
        _check_snapshot_name(name)
