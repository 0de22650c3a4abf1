"""firmware/tdx-module.yaml against Intel's published MRSEAM table and the real quotes: every pinned
release carries Intel's value, and a release without one cannot be pinned."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from components.catalog.pinfile import CatalogError
from components.catalog.tdx_module import tdx_module_releases
from components.config.stack import ConfigErrors, parse_stack
from tests.support.paths import FIXTURES, REPO
from tests.support.stacks import good

INTEL_TABLE = FIXTURES / "tdx-module" / "intel-releases-and-hashes.md"
ROW = re.compile(
    r"\| \[(?P<version>\d\.\d\.\d\d)\]\(https://github\.com/intel/confidential-computing\.tdx\.tdx-module/releases/tag/"
    r"TDX_MODULE_(?P=version)\)\s+\| 0x(?P<mrseam>[0-9A-F]{96}) \|"
)


def _intel() -> dict[str, str]:
    rows = INTEL_TABLE.read_text().splitlines()[2:]
    table = {}
    for row in rows:
        m = ROW.fullmatch(row)
        assert m, row
        table[m["version"]] = m["mrseam"].lower()
    return table


def test_every_release_carries_intels_published_mrseam() -> None:
    intel = _intel()
    releases = tdx_module_releases()
    assert len(intel) == 19
    assert {v: r.mrseam for v, r in releases.items() if r.mrseam is not None} == intel


def test_a_release_intel_publishes_no_hash_for_says_why() -> None:
    unhashed = {v: r.reason for v, r in tdx_module_releases().items() if r.mrseam is None}
    assert list(unhashed) == ["2.0.05"]
    assert "no MRSEAM" in (unhashed["2.0.05"] or "")


def test_the_real_quotes_from_tdx_1_5_modules_name_their_release() -> None:
    manifest = json.loads((FIXTURES / "tdx-quotes" / "manifest.json").read_text())["quotes"]
    by_mrseam = {r.mrseam: v for v, r in tdx_module_releases().items()}
    named = {Path(path).stem: by_mrseam.get(q["mr_seam"]) for path, q in manifest.items()}
    assert {k: v for k, v in named.items() if v} == {
        "alibaba-v5-90c06f-servicetd": "1.5.05",
        "phala-v4-b0c06f": "1.5.06",
        "phala-v5-90c06f-outdated": "1.5.08",
        "gotdxguest-v5-90c06f": "1.5.16",
    }
    # The rest carry an MRSEAM Intel's table does not list; no stack can pin those modules.
    assert sorted(k for k, v in named.items() if v is None) == [
        "azure-v4-00806f",
        "gcp-cos113-v4-00806f",
        "gotdxguest-v4-50806f-spr-e4",
        "zkdcap-v4-00806f",
    ]


@pytest.fixture
def fw(tmp_path: Path) -> Path:
    out = tmp_path / "fw"
    shutil.copytree(REPO / "firmware", out)
    return out


@pytest.mark.parametrize(
    "entry,message",
    [
        ('series: "1.5"', "has no mrseam; give Intel's value or a `reason`"),
        ('series: "1.5"\n    mrseam: "AB"', "must be 96 lowercase hex digits"),
        ('series: "1.5"\n    mrseam: "' + "AB" * 48 + '"', "must be 96 lowercase hex digits"),
        ('series: "1.5"\n    mrseam: null\n    reason: ""', "has no mrseam"),
    ],
    ids=["missing", "short", "uppercase", "empty-reason"],
)
def test_a_malformed_mrseam_is_a_catalog_error(fw: Path, entry: str, message: str) -> None:
    (fw / "tdx-module.yaml").write_text(f'releases:\n  "1.5.16":\n    {entry}\n')
    with pytest.raises(CatalogError, match=re.escape(message)):
        tdx_module_releases(fw)


def test_a_stack_cannot_pin_a_release_without_a_published_mrseam() -> None:
    raw = good()
    raw["platform"]["tdxModule"] = "2.0.05"
    with pytest.raises(ConfigErrors) as info:
        parse_stack(raw, "staging")
    errors = [str(e) for e in info.value.errors]
    assert len(errors) == 1 and errors[0].startswith("platform.tdxModule: `2.0.05` has no published MRSEAM ("), errors
    assert "pin a release that Intel publishes an MRSEAM for" in errors[0]


def test_the_client_package_names_releases_from_the_same_table() -> None:
    from tdxattest.core.tdx_modules import INTEL_MRSEAMS, module_name, release_of

    assert dict(INTEL_MRSEAMS) == _intel()
    assert release_of(_intel()["1.5.28"].upper()) == "1.5.28"
    assert module_name("ff" * 48) == "an unlisted TDX module (ffffffffffffffff…)"
    assert module_name(_intel()["1.5.34"]) == "TDX module 1.5.34"
