"""The vendor BIOS tables in firmware/bios/ load, validate, and never carry SGX Factory Reset."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.catalog import bios as bios_tables
from components.catalog.bios import KNOWN_SETTINGS, PHASE2_SETTINGS, BiosSetting, load_vendor_table
from components.catalog.pinfile import CatalogError

VENDORS = ("dell", "intel", "lenovo", "supermicro")


def test_known_vendors_are_the_files_present() -> None:
    assert bios_tables.list_vendors() == VENDORS


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_vendor_loads_with_its_phases(vendor: str) -> None:
    table = load_vendor_table(vendor)
    assert table.vendor == vendor
    assert table.description and table.sources
    assert table.phase_numbers == tuple(range(1, len(table.phases) + 1)) and len(table.phases) >= 2
    assert all(table.phase(n) for n in table.phase_numbers)
    assert table.tee_io == ()
    for settings in table.phases.values():
        for item in settings:
            assert isinstance(item, BiosSetting)
            assert item.setting in KNOWN_SETTINGS
            assert item.attribute and item.display_name
            assert not isinstance(item.value, bool)


@pytest.mark.parametrize("vendor", VENDORS)
def test_tdx_settings_come_after_the_first_reset(vendor: str) -> None:
    table = load_vendor_table(vendor)
    later = {s.setting for n in table.phase_numbers[1:] for s in table.phase(n)}
    assert later >= PHASE2_SETTINGS
    assert not {s.setting for s in table.phase(1)} & PHASE2_SETTINGS


@pytest.mark.parametrize("vendor", VENDORS)
def test_no_sgx_factory_reset_anywhere(vendor: str) -> None:
    text = bios_tables.table_path(vendor).read_text()
    data_lines = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"factory\s*_?reset", data_lines, re.IGNORECASE)
    table = load_vendor_table(vendor)
    for item in (*(s for n in table.phase_numbers for s in table.phase(n)), *table.tee_io):
        assert "factory" not in f"{item.setting}{item.attribute}{item.display_name}{item.aliases}".lower()


def _values(vendor: str, phase: int, registration: str = "mpa") -> dict[str, object]:
    return {s.attribute: s.value for s in load_vendor_table(vendor).phase(phase, registration)}


def test_dell_phases_follow_what_unlocks_what() -> None:
    """tests/fixtures/host/bios/dell.rules.json: MultipleKeys active unlocks EnableTdx, KeySplit and
    IntelSgx; EnableTdx unlocks the SEAM loader; IntelSgx unlocks the registration settings."""
    assert _values("dell", 1) == {
        "ProcX2Apic": "Enabled",
        "NodeInterleave": "Disabled",
        "CpuPaLimit": "Disabled",
        "MemoryEncryption": "MultipleKeys",
    }
    assert _values("dell", 2) == {
        "EnableTdx": "Enabled",
        "KeySplit": "1",
        "GlbMemIntegrity": "Disabled",
        "IntelSgx": "On",
    }
    assert _values("dell", 3) == {
        "EnableTdxSeamldr": "Enabled",
        "SgxPackageInfoInBandAccess": "On",
        "SgxAutoRegistrationAgent": "Enabled",
    }


@pytest.mark.parametrize("vendor", ["dell", "intel"])
def test_the_registration_agent_follows_dcap_registration(vendor: str) -> None:
    """The agent consumes the platform manifest PCKIDRetrievalTool needs: off for pckid, untouched for none."""
    table = load_vendor_table(vendor)
    last = table.phase_numbers[-1]
    agent = {"dell": "SgxAutoRegistrationAgent", "intel": "SGXAutoMPRegistrationAgent"}[vendor]
    assert _values(vendor, last, "mpa")[agent] == "Enabled"
    assert _values(vendor, last, "pckid")[agent] == "Disabled"
    assert agent not in _values(vendor, last, "none")
    assert table.sets_registration_agent


def test_intel_names_the_agent_as_both_intel_documents_do() -> None:
    [agent] = [s for s in load_vendor_table("intel").phase(3) if s.setting == "sgx_auto_registration"]
    assert agent.display_name == "SGX Auto MP Registration" and agent.aliases == ("SGX Auto MP Registration Agent",)


def test_lenovo_sets_only_tme_and_apic_before_the_first_reboot() -> None:
    assert _values("lenovo", 1) == {"Processors_TotalMemoryEncryption": "Enabled", "Processors_APICMode": "x2APIC"}
    phase2 = _values("lenovo", 2)
    assert phase2["Processors_TME_MTTDXkeysplit"] == 1
    assert phase2["Processors_SGXPackageInfoIn_BandAccess"] == "Enabled"
    assert all(name.startswith("Processors_") for name in phase2)
    assert not load_vendor_table("lenovo").sets_registration_agent


def test_supermicro_follows_the_adapters_four_stages() -> None:
    assert set(_values("supermicro", 1)) == {"LimitCPUPAto46bits", "MemoryEncryption_TME_"}
    assert set(_values("supermicro", 2)) == {
        "TotalMemoryEncryptionMulti_Tenant_TME_MT_",
        "TotalMemoryEncryption_TME_Bypass",
    }
    assert set(_values("supermicro", 3)) == {"TrustDomainExtensions_TDX_", "TDXSecureArbitrationModeLoader_SEAMLoader_"}
    assert set(_values("supermicro", 4)) == {
        "TME_MT_TDXKeySplit",
        "SWGuardExtensions_SGX_",
        "SGXPackageInfoIn_BandAccess",
    }


def test_table_objects_are_immutable() -> None:
    table = load_vendor_table("dell")
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.vendor = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        table.phases[3] = ()  # type: ignore[index]


# --- invalid tables -------------------------------------------------------------------------------

_VALID: dict[str, Any] = {
    "vendor": "acme",
    "description": "Acme test board",
    "sources": ["acme:manual"],
    "phases": {
        1: [{"setting": "tme", "attribute": "Tme", "displayName": "TME", "value": "Enabled"}],
        2: [{"setting": "tdx", "attribute": "Tdx", "displayName": "TDX", "value": "Enabled"}],
    },
    "teeIo": [],
}


def _write(tmp_path: Path, document: object, vendor: str = "acme") -> Path:
    (tmp_path / "bios").mkdir(exist_ok=True)
    path = tmp_path / "bios" / f"{vendor}.yaml"
    path.write_text(yaml.safe_dump(document) if not isinstance(document, str) else document)
    return path


def _variant(**changes: object) -> dict[str, object]:
    phases = {k: [dict(s) for s in v] for k, v in _VALID["phases"].items()}
    document: dict[str, object] = {**_VALID, "phases": phases}
    document.update(changes)
    return document


def test_valid_custom_table_loads(tmp_path: Path) -> None:
    _write(tmp_path, _VALID)
    table = load_vendor_table("acme", tmp_path)
    assert table.phase(2)[0] == BiosSetting("tdx", "Tdx", "TDX", "Enabled")
    assert bios_tables.list_vendors(tmp_path) == ("acme",)


def test_unknown_vendor_names_the_file_and_the_known_vendors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"hpe\.yaml.*known vendors: dell, intel, lenovo, supermicro"):
        load_vendor_table("hpe")


def test_missing_phase_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, _variant(phases={1: _VALID["phases"][1]}))
    with pytest.raises(CatalogError, match=re.escape(str(path)) + r".*'phases'.*got \[1\]"):
        load_vendor_table("acme", tmp_path)
    _write(tmp_path, _variant(phases={1: _VALID["phases"][1], 3: _VALID["phases"][2]}))
    with pytest.raises(CatalogError, match=r"without gaps.*got \[1, 3\]"):
        load_vendor_table("acme", tmp_path)


def test_a_registration_agent_needs_its_off_value(tmp_path: Path) -> None:
    agent = {"setting": "sgx_auto_registration", "attribute": "A", "displayName": "A", "value": "Enabled"}
    _write(tmp_path, _variant(phases={1: _VALID["phases"][1], 2: [*_VALID["phases"][2], agent]}))
    with pytest.raises(CatalogError, match=r"offValue' is required for sgx_auto_registration"):
        load_vendor_table("acme", tmp_path)


def test_phase_lookup_error_names_the_table() -> None:
    with pytest.raises(CatalogError, match=r"dell\.yaml has no phase 4"):
        load_vendor_table("dell").phase(4)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"setting": "turbo", "attribute": "T", "displayName": "T", "value": "On"},
            r"phases\.1\[0\]\.setting.*'turbo'",
        ),
        ({"setting": "tme", "attribute": "T", "displayName": "T"}, r"phases\.1\[0\]\.value' is missing"),
        ({"setting": "tme", "attribute": "", "displayName": "T", "value": "x"}, r"phases\.1\[0\]\.attribute"),
        ({"setting": "tme", "attribute": "T", "displayName": "T", "value": True}, r"boolean True; quote it"),
        ({"setting": "tme", "attribute": "T", "displayName": "T", "value": "x", "note": 1}, r"unknown field.*note"),
        (
            {"setting": "sgx", "attribute": "SgxFactoryReset", "displayName": "SGX Factory Reset", "value": "On"},
            r"SGX Factory Reset must never be in a table",
        ),
        (
            {"setting": "tdx", "attribute": "Tdx1", "displayName": "TDX", "value": "Enabled"},
            r"phases\.1' sets \['tdx'\].*move them to phase 2",
        ),
    ],
)
def test_bad_entries_name_file_and_key(tmp_path: Path, entry: dict[str, object], message: str) -> None:
    path = _write(tmp_path, _variant(phases={1: [entry], 2: _VALID["phases"][2]}))
    with pytest.raises(CatalogError, match=message) as info:
        load_vendor_table("acme", tmp_path)
    assert str(path) in str(info.value)


def test_unquoted_on_in_yaml_is_caught(tmp_path: Path) -> None:
    text = yaml.safe_dump(_VALID).replace("value: Enabled", "value: On", 1)
    _write(tmp_path, text)
    with pytest.raises(CatalogError, match="quote it"):
        load_vendor_table("acme", tmp_path)


def test_duplicate_setting_across_phases(tmp_path: Path) -> None:
    dup = {"setting": "tme", "attribute": "Tme2", "displayName": "TME", "value": "Enabled"}
    _write(tmp_path, _variant(phases={1: _VALID["phases"][1], 2: [*_VALID["phases"][2], dup]}))
    with pytest.raises(CatalogError, match=r"setting 'tme' appears more than once"):
        load_vendor_table("acme", tmp_path)


def test_vendor_key_must_match_the_file(tmp_path: Path) -> None:
    _write(tmp_path, _variant(vendor="other"))
    with pytest.raises(CatalogError, match=r"key 'vendor' is 'other'"):
        load_vendor_table("acme", tmp_path)


def test_missing_sources_and_unknown_top_key(tmp_path: Path) -> None:
    _write(tmp_path, _variant(sources=[]))
    with pytest.raises(CatalogError, match=r"key 'sources'"):
        load_vendor_table("acme", tmp_path)
    _write(tmp_path, _variant(extra=1))
    with pytest.raises(CatalogError, match=r"unknown field.*extra"):
        load_vendor_table("acme", tmp_path)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "vendor: [unclosed\n")
    with pytest.raises(CatalogError, match=re.escape(str(path)) + ": not valid YAML"):
        load_vendor_table("acme", tmp_path)


def test_vendor_name_is_checked_before_building_a_path(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="invalid vendor name"):
        load_vendor_table("../etc/passwd", tmp_path)
