"""The fast paths behind `verify_quote` (see bench/verify.py) give exactly what the slow paths give,
on every fixture quote, and nothing about a verification is remembered between calls: the memoised
pieces are pure functions of immutable bytes (the PCK leaf's SGX TCB extension) or of one
Collateral object (its digested tcbLevels), and dcap-qvl runs, with its signature checks, on
every call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tdxattest.core.errors import InputError
from tdxattest.core.policy import Policy
from tdxattest.core.quote import (
    _BODY_FIELDS,
    TdReport,
    _body_location,
    parse_quote,
    pck_tcb,
    quote_pck_tcb,
    read_td_report,
)
from tdxattest.dcap.collateral import collateral_from_json_text, load_collateral
from tdxattest.dcap.verify import _tcb_date_from_tcb_info, verify_quote
from tests.support.paths import QUOTES

MANIFEST_PATH = QUOTES / "manifest.json"
MANIFEST = json.loads(MANIFEST_PATH.read_text())
CASES = MANIFEST["cases"]
QUOTE_FILES = sorted((QUOTES / "quotes").glob("*.bin"))


def _case(case_id: str) -> dict:
    return next(c for c in CASES if c["id"] == case_id)


def _slow_report(data: bytes) -> TdReport:
    _, body, size = _body_location(data)
    fields = {name: data[body + off : body + off + n] for name, off, n in _BODY_FIELDS}
    if size == 648:
        fields["tee_tcb_svn2"] = data[body + 584 : body + 600]
        fields["mr_servicetd"] = data[body + 600 : body + 648]
    return TdReport(**fields)


@pytest.mark.parametrize("path", QUOTE_FILES, ids=[p.stem for p in QUOTE_FILES])
def test_fast_td_report_equals_dataclass_init(path: Path) -> None:
    data = path.read_bytes()
    fast, slow = read_td_report(data), _slow_report(data)
    assert type(fast) is TdReport and fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert fast.as_dict() == slow.as_dict() and parse_quote(data).report == slow
    assert read_td_report(bytearray(data)) == slow  # type: ignore[arg-type]  # a bytearray is read too
    assert all(type(getattr(fast, n)) is bytes for n, _, _ in _BODY_FIELDS)
    with pytest.raises(AttributeError):  # still frozen
        fast.mrtd = b""  # type: ignore[misc]


@pytest.mark.parametrize("path", QUOTE_FILES, ids=[p.stem for p in QUOTE_FILES])
def test_quote_pck_tcb_equals_full_parse(path: Path) -> None:
    data = path.read_bytes()
    want = pck_tcb(parse_quote(data).pck_leaf_der())
    assert want is not None and quote_pck_tcb(data) == want


def test_quote_pck_tcb_on_damaged_quotes_is_none_or_refused() -> None:
    data = (QUOTES / "quotes" / "zkdcap-v4-00806f.bin").read_bytes()
    want = quote_pck_tcb(data)
    for cut in (600, 700, 1000, 1300, 1600):
        try:
            got = quote_pck_tcb(data[:cut])
        except InputError:
            continue
        assert got is None, cut
    assert data[1258 : 1258 + 27] == b"-----BEGIN CERTIFICATE-----"  # the leaf's PEM header
    damaged = bytearray(data)
    damaged[1258 : 1258 + 27] = b"-----BEGIN GARBAGE---------"
    # The first certificate found is now the PCK CA (no SGX extension): no TCB, never another's.
    assert len(damaged) == len(data) and quote_pck_tcb(bytes(damaged)) is None
    assert pck_tcb(parse_quote(bytes(damaged)).pck_leaf_der()) is None and want is not None
    big = bytearray(data)
    big[632:636] = (10**6).to_bytes(4, "little")  # signature-data length past the end
    assert quote_pck_tcb(bytes(big)) is None


def test_tcb_levels_digested_once_per_collateral_object() -> None:
    case = _case("zkdcap-v4-outofdate")
    coll = load_collateral(str(QUOTES / case["collateral_file"]))
    levels = coll.tcb_levels()
    assert levels is not None
    assert levels is coll.tcb_levels() and len(levels) == len(coll.tcb_info["tcbLevels"])
    coll.tcb_info = dict(coll.tcb_info, tcbLevels=coll.tcb_info["tcbLevels"][:1])  # a replaced tcb_info is re-read
    levels = coll.tcb_levels()
    assert levels is not None and len(levels) == 1
    coll.tcb_info = {"tcbLevels": "not a list of levels"}
    assert coll.tcb_levels() is None


def test_tcb_date_with_and_without_the_verified_tee_tcb_svn() -> None:
    case = _case("zkdcap-v4-outofdate")
    quote = (QUOTES / case["quote_file"]).read_bytes()
    coll = load_collateral(str(QUOTES / case["collateral_file"]))
    rec = case["dcap_qvl_0_7_0"]
    adv = tuple(rec["advisory_ids"])
    date = _tcb_date_from_tcb_info(quote, coll, rec["status"], adv)
    assert date is not None
    assert _tcb_date_from_tcb_info(quote, coll, rec["status"], adv, read_td_report(quote).tee_tcb_svn) == date
    assert _tcb_date_from_tcb_info(quote, coll, rec["status"], tuple(reversed(adv))) == date  # order-free
    assert _tcb_date_from_tcb_info(quote, coll, rec["status"], adv[:-1]) is None  # advisories must agree
    assert _tcb_date_from_tcb_info(quote, coll, rec["status"], adv, bytes(16)) is None  # below every level


def test_nothing_is_remembered_between_verifications() -> None:
    """Warm every memo with an accepted OutOfDate+grace verification, then change one byte of the
    quote (same PCK leaf) or of the collateral: dcap-qvl still refuses each one."""
    case = _case("zkdcap-v4-outofdate")
    quote = (QUOTES / case["quote_file"]).read_bytes()
    text = (QUOTES / case["collateral_file"]).read_text()
    coll = collateral_from_json_text(text)
    now = case["verify_at_unix"]
    grace = Policy(out_of_date_grace_days=3650, allowed_advisories=frozenset(case["dcap_qvl_0_7_0"]["advisory_ids"]))
    for _ in range(3):
        ok = verify_quote(quote, coll, now, grace)
        assert ok.accepted and ok.tcb_status == "OutOfDate"
    q = bytearray(quote)
    q[48 + 136] ^= 1  # MRTD
    bad = verify_quote(bytes(q), coll, now, grace)
    assert not bad.accepted and bad.failures[0].check == "quote.signature_invalid" and not bad.report_verified
    doc = json.loads(text)
    sig = bytearray.fromhex(doc["tcb_info_signature"])
    sig[5] ^= 1
    doc["tcb_info_signature"] = sig.hex()
    bad = verify_quote(quote, collateral_from_json_text(json.dumps(doc)), now, grace)
    assert not bad.accepted and bad.failures[0].check == "collateral.tcb_info_signature_invalid"
    assert verify_quote(quote, coll, now, grace).accepted
