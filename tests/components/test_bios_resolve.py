"""Pure part of components.bmc (resolve, and the redfish CLI): name resolution, registry checks, diff, endpoint/TLS parsing, CLI usage."""

from __future__ import annotations

from typing import Any

import pytest

from components.bmc import redfish
from components.bmc import resolve as bios_resolve
from components.bmc.resolve import BiosError, BiosSettingsMissing, diff, resolve_attributes, resolve_settings
from components.catalog.bios import BiosSetting, Scalar

TME = BiosSetting("tme", "MemoryEncryption_TME_", "Memory Encryption (TME)", "Enabled")
PA = BiosSetting("pa_limit_46", "LimitCPUPAto46bits", "Limit CPU PA to 46 bits", "Disabled")
TDX = BiosSetting("tdx", "TrustDomainExtensions_TDX_", "Trust Domain Extension (TDX)", "Enabled")
SPLIT = BiosSetting("key_split", "TME_MT_TDXKeySplit", "TME-MT/TDX key split", 1)


def entry(name: str, display: str, values: tuple[str, ...] = ("Enabled", "Disabled"), **extra: Any) -> dict[str, Any]:
    return {
        "AttributeName": name,
        "DisplayName": display,
        "Type": "Enumeration",
        "Value": [{"ValueName": v, "ValueDisplayName": v} for v in values],
        **extra,
    }


# --- resolution order -----------------------------------------------------------------------------


def test_exact_name_wins_over_display_name() -> None:
    current = {"MemoryEncryption_TME_": "Disabled", "Other": "Disabled"}
    registry = [entry("MemoryEncryption_TME_", "Something else"), entry("Other", "Memory Encryption (TME)")]
    assert resolve_attributes([TME], current, registry) == {"MemoryEncryption_TME_": "Enabled"}
    assert resolve_settings([TME], current, registry)[0].matched_by == "name"


@pytest.mark.parametrize(
    ("table_name", "bmc_name"),
    [
        ("LimitCPUPAto46bits", "LimitCPUPAto46bits_F319"),
        ("LimitCPUPAto46bits_F31D", "LimitCPUPAto46bits"),
        ("LimitCPUPAto46bits_F31D", "LimitCPUPAto46bits_F319"),
        ("LimitCPUPAto46bits", "LimitCPUPAto46bits#F319"),
    ],
)
def test_vendor_suffix_is_stripped_on_both_sides(table_name: str, bmc_name: str) -> None:
    setting = BiosSetting("pa_limit_46", table_name, "no such display name", "Disabled")
    resolved = resolve_settings([setting], {bmc_name: "Enabled"}, None)
    assert resolved[0].attribute == bmc_name
    assert resolved[0].matched_by == "suffix"


def test_suffix_regex_leaves_ordinary_names_alone() -> None:
    assert bios_resolve.strip_vendor_suffix("Processors_Feed") == "Processors_Feed"
    assert bios_resolve.strip_vendor_suffix("TrustDomainExtension(TDX)#3C38") == "TrustDomainExtension(TDX)"
    assert bios_resolve.strip_vendor_suffix("X_F31D") == "X"


def test_hidden_duplicate_loses_to_the_visible_one() -> None:
    current = {"LimitCPUPAto46bits_F319": "Enabled", "LimitCPUPAto46bits_F31D": "Enabled"}
    registry = [
        entry("LimitCPUPAto46bits_F319", "Limit CPU PA to 46 bits", Hidden=True),
        entry("LimitCPUPAto46bits_F31D", "Limit CPU PA to 46 bits"),
    ]
    assert resolve_attributes([PA], current, registry) == {"LimitCPUPAto46bits_F31D": "Disabled"}


def test_two_usable_duplicates_are_ambiguous() -> None:
    current = {"LimitCPUPAto46bits_F319": "Enabled", "LimitCPUPAto46bits_F31D": "Enabled"}
    with pytest.raises(BiosError, match=r"matches several BIOS attributes.*F319.*F31D"):
        resolve_attributes([PA], current, None)


def test_display_name_is_case_and_whitespace_insensitive() -> None:
    current = {"TrustDomainExtension(TDX)#3C38": "Disabled"}
    registry = [entry("TrustDomainExtension(TDX)#3C38", "  trust domain   EXTENSION (TDX) ")]
    resolved = resolve_settings([TDX], current, registry)
    assert resolved[0].attribute == "TrustDomainExtension(TDX)#3C38"
    assert resolved[0].matched_by == "displayName"


def test_not_found_names_setting_attribute_display_name_and_fix() -> None:
    with pytest.raises(BiosSettingsMissing) as info:  # a BiosError that a later read may cure
        resolve_attributes([TDX], {"ProcTurboMode": "Enabled"}, [entry("ProcTurboMode", "Turbo")], vendor="supermicro")
    message = str(info.value)
    for part in (
        "'tdx'",
        "'TrustDomainExtensions_TDX_'",
        "'Trust Domain Extension (TDX)'",
        "BIOS too old or attribute hidden until the previous phase is applied",
        "update BIOS or check the vendor table firmware/bios/supermicro.yaml",
    ):
        assert part in message
    assert "\n" not in message


def test_registry_entry_without_a_current_attribute_is_hidden_not_resolved() -> None:
    registry = [entry("TrustDomainExtensions_TDX_", "Trust Domain Extension (TDX)")]
    expected = "registry lists it as 'TrustDomainExtensions_TDX_', but the BIOS does not expose it yet"
    with pytest.raises(BiosError, match=expected):
        resolve_attributes([TDX], {}, registry)


def test_without_registry_the_error_says_display_names_were_not_tried() -> None:
    with pytest.raises(BiosError, match="serves no attribute registry"):
        resolve_attributes([TDX], {"Other": 1}, None)


def test_every_failing_setting_is_reported_at_once() -> None:
    with pytest.raises(BiosError) as info:
        resolve_attributes([TME, TDX], {}, [])
    assert "'tme'" in str(info.value) and "'tdx'" in str(info.value)


def test_two_settings_on_one_attribute_are_refused() -> None:
    clash = BiosSetting("tme_mt", "Whatever", "Memory Encryption (TME)", "Enabled")
    registry = [entry("MemoryEncryption_TME_", "Memory Encryption (TME)")]
    with pytest.raises(BiosError, match="'tme' and 'tme_mt' both resolve to attribute 'MemoryEncryption_TME_'"):
        resolve_attributes([TME, clash], {"MemoryEncryption_TME_": "Disabled"}, registry)


# --- registry checks and value coercion -----------------------------------------------------------


def test_read_only_attribute_is_refused_with_both_names() -> None:
    registry = [entry("TrustDomainExtensions_TDX_", "Trust Domain Extension (TDX)", ReadOnly=True)]
    with pytest.raises(BiosError, match=r"'tdx': attribute 'TrustDomainExtensions_TDX_' is read-only"):
        resolve_attributes([TDX], {"TrustDomainExtensions_TDX_": "Disabled"}, registry)


def test_value_outside_the_allowed_list_is_refused_with_both() -> None:
    registry = [entry("LimitCPUPAto46bits", "Limit CPU PA to 46 bits", values=("Enable", "Disable"))]
    with pytest.raises(BiosError) as info:
        resolve_attributes([PA], {"LimitCPUPAto46bits": "Enable"}, registry, vendor="supermicro")
    message = str(info.value)
    assert "value 'Disabled' is not allowed for attribute 'LimitCPUPAto46bits'" in message
    assert "'Enable', 'Disable'" in message
    assert "firmware/bios/supermicro.yaml" in message


def test_value_display_name_maps_to_the_value_name() -> None:
    registry = [
        {
            "AttributeName": "LimitCPUPAto46bits",
            "DisplayName": "x",
            "Type": "Enumeration",
            "Value": [
                {"ValueName": "0x0", "ValueDisplayName": "Disabled"},
                {"ValueName": "0x1", "ValueDisplayName": "Enabled"},
            ],
        }
    ]
    assert resolve_attributes([PA], {"LimitCPUPAto46bits": "0x1"}, registry) == {"LimitCPUPAto46bits": "0x0"}


def test_integer_registry_type_coerces_and_checks_bounds() -> None:
    split = BiosSetting("key_split", "KeySplit", "Key split", "1")
    registry = [
        {"AttributeName": "KeySplit", "DisplayName": "Key split", "Type": "Integer", "LowerBound": 0, "UpperBound": 6}
    ]
    assert resolve_attributes([split], {"KeySplit": 0}, registry) == {"KeySplit": 1}
    too_big = BiosSetting("key_split", "KeySplit", "Key split", 9)
    with pytest.raises(BiosError, match=r"outside \[0, 6\]"):
        resolve_attributes([too_big], {"KeySplit": 0}, registry)


def test_enumeration_of_digits_coerces_int_to_string() -> None:
    registry = [entry("TME_MT_TDXKeySplit", "TME-MT/TDX key split", values=("0", "1", "2"))]
    assert resolve_attributes([SPLIT], {"TME_MT_TDXKeySplit": "0"}, registry) == {"TME_MT_TDXKeySplit": "1"}


def test_without_registry_the_current_value_type_decides() -> None:
    assert resolve_attributes([SPLIT], {"TME_MT_TDXKeySplit": "0"}, None) == {"TME_MT_TDXKeySplit": "1"}
    string_split = BiosSetting("key_split", "KeySplit", "x", "1")
    assert resolve_attributes([string_split], {"KeySplit": 0}, None) == {"KeySplit": 1}


# --- diff -----------------------------------------------------------------------------------------


def test_diff_lists_only_what_must_change() -> None:
    desired: dict[str, Scalar] = {"A": "Enabled", "B": 1, "C": "On"}
    current = {"A": "Enabled", "B": 0, "D": "x"}
    assert diff(desired, current) == {"B": 1, "C": "On"}
    assert diff(desired, {**current, "B": 1, "C": "On"}) == {}


# --- endpoint, TLS, system path -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://10.0.0.5", "https://10.0.0.5"),
        ("https://bmc.example:8443/", "https://bmc.example:8443"),
        ("https://10.0.0.5/redfish/v1/", "https://10.0.0.5"),
        ("https://[fd00::5]:443", "https://[fd00::5]:443"),
    ],
)
def test_base_url_accepts(endpoint: str, expected: str) -> None:
    assert bios_resolve.base_url(endpoint) == expected


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("http://10.0.0.5", "plain http"),
        ("10.0.0.5", "not an https:// URL"),
        ("https://root:calvin@10.0.0.5", "contains credentials"),
        ("https://10.0.0.5/some/path", "must be scheme://host"),
        ("https://10.0.0.5:99999", "invalid port"),
    ],
)
def test_base_url_refuses(endpoint: str, message: str) -> None:
    with pytest.raises(BiosError, match=message) as info:
        bios_resolve.base_url(endpoint, config_key="hosts[3].bmc")
    assert "calvin" not in str(info.value)


def test_plain_http_only_with_explicit_opt_in() -> None:
    assert bios_resolve.base_url("http://127.0.0.1:8000", allow_insecure_http=True) == "http://127.0.0.1:8000"


def test_fingerprint_normalisation() -> None:
    hex_digest = "ab" * 32
    colon_upper = ":".join(["AB"] * 32)
    assert bios_resolve.normalise_fingerprint(colon_upper) == hex_digest
    assert bios_resolve.format_fingerprint(hex_digest) == colon_upper
    with pytest.raises(BiosError, match="64 hex digits"):
        bios_resolve.normalise_fingerprint("ab" * 20)  # a SHA-1 is not accepted


def test_system_identity_accepts_a_bare_id() -> None:
    assert bios_resolve.system_identity(None) is None
    assert bios_resolve.system_identity("System.Embedded.1") == "/redfish/v1/Systems/System.Embedded.1"
    assert bios_resolve.system_identity("/redfish/v1/Systems/1") == "/redfish/v1/Systems/1"


def test_tls_trust_is_required_before_any_connection() -> None:
    with pytest.raises(BiosError, match="bmc.tlsFingerprint or bmc.caFile is required"):
        redfish.check_phase("https://192.0.2.1", "admin", "pw-not-used", "dell", 1)
    with pytest.raises(BiosError, match="only one of"):
        redfish.check_phase(
            "https://192.0.2.1", "admin", "pw-not-used", "dell", 1, tls_fingerprint="ab" * 32, ca_file="/etc/hostname"
        )


def test_unknown_vendor_and_phase_become_bios_errors() -> None:
    with pytest.raises(BiosError, match="no BIOS table for vendor 'hpe'"):
        redfish.check_phase("https://192.0.2.1", "admin", "pw", "hpe", 1, tls_fingerprint="ab" * 32)
    with pytest.raises(BiosError, match="has no phase 7"):
        redfish.check_phase("https://192.0.2.1", "admin", "pw", "dell", 7, tls_fingerprint="ab" * 32)


def test_redaction_covers_password_and_basic_token() -> None:
    secrets = redfish._secrets_for("admin", "hunter22")
    text = "pw hunter22 token " + secrets[1]
    assert redfish._redact(text, secrets) == "pw *** token ***"


# --- CLI usage ------------------------------------------------------------------------------------


def test_cli_without_credentials_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(redfish.ENV_USERNAME, raising=False)
    monkeypatch.delenv(redfish.ENV_PASSWORD, raising=False)
    code = redfish.main(
        ["check", "--vendor", "dell", "--phase", "1", "--endpoint", "https://192.0.2.1", "--tls-fingerprint", "ab" * 32]
    )
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: TDXGPU_BMC_USERNAME and TDXGPU_BMC_PASSWORD")


def test_cli_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        redfish.main(
            [
                "apply",
                "--vendor",
                "dell",
                "--phase",
                "1",
                "--endpoint",
                "https://x",
                "--tls-fingerprint",
                "a",
                "--ca-file",
                "b",
            ]
        )
    assert info.value.code == 2
    assert capsys.readouterr().out == ""


def test_cli_bios_error_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(redfish.ENV_USERNAME, "admin")
    monkeypatch.setenv(redfish.ENV_PASSWORD, "cli-secret-123")
    code = redfish.main(["check", "--vendor", "dell", "--phase", "1", "--endpoint", "http://192.0.2.1"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "plain http" in lines[0]


def test_locked_attribute_already_at_its_value_is_fine() -> None:
    registry = [entry("MemoryEncryption_TME_", "Memory Encryption (TME)", ReadOnly=True)]
    assert resolve_attributes([TME], {"MemoryEncryption_TME_": "Enabled"}, registry) == {
        "MemoryEncryption_TME_": "Enabled"
    }


def test_a_value_problem_is_not_a_missing_setting() -> None:
    """Only a setting the BIOS does not list is worth reading again; a refused value is not."""
    registry = [entry("TrustDomainExtensions_TDX_", "Trust Domain Extension (TDX)", values=("On", "Off"))]
    with pytest.raises(BiosError) as info:
        resolve_attributes([TDX], {"TrustDomainExtensions_TDX_": "Off"}, registry)
    assert not isinstance(info.value, BiosSettingsMissing)
