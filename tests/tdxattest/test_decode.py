"""`tdxattest decode` and `pckinfo` (issue 18): every field of the real quotes, the same FMSPC and TCB
components the verification path reads, and untrusted input refused by size before it is parsed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tdxattest.core.decode import MAX_QUOTE_BYTES, decode_quote, pck_info
from tdxattest.core.errors import InputError
from tdxattest.core.quote import der_items, parse_quote, quote_pck_tcb, quote_qe_isv_svn
from tdxattest.testing.testpki import TestPki
from tests.support.paths import QUOTES
from tests.tdxattest.test_hostile_input import hostile_quote

MANIFEST = json.loads((QUOTES / "manifest.json").read_text())["quotes"]
BODY_KEYS = {  # manifest (dcap-qvl's names) -> decode's
    "tee_tcb_svn": "tee_tcb_svn",
    "mr_seam": "mrseam",
    "td_attributes": "td_attributes",
    "xfam": "xfam",
    "mr_td": "mrtd",
    "mr_config_id": "mrconfigid",
    "mr_owner": "mrowner",
    "mr_owner_config": "mrownerconfig",
    "rtmr0": "rtmr0",
    "rtmr1": "rtmr1",
    "rtmr2": "rtmr2",
    "rtmr3": "rtmr3",
    "report_data": "report_data",
}


def tdxattest(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tdxattest", *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", sorted(MANIFEST), ids=[Path(p).stem for p in sorted(MANIFEST)])
def test_decode_prints_what_the_verification_path_reads(path: str) -> None:
    data = (QUOTES / path).read_bytes()
    info = MANIFEST[path]
    doc = decode_quote(data)
    assert doc["header"]["version"] == info["quote_version"] and doc["header"]["qe_vendor_is_intel"] is True
    assert {k: doc["body"][ours] for k, ours in BODY_KEYS.items()} == {k: info[k] for k in BODY_KEYS}
    pck = doc["pck"]
    # The FMSPC the collateral is looked up by, and the TCB components dcap-qvl matches against TCB info.
    assert pck["fmspc"] == parse_quote(data).fmspc() == info["fmspc"]
    components, pcesvn = quote_pck_tcb(data) or ((), None)
    assert (tuple(pck["tcb_components"]), pck["pcesvn"]) == (components, pcesvn)
    assert pck["cpusvn"] == bytes(components).hex()
    # The QE SVN a policy minimum is held to, read by offsets on the verification path.
    assert quote_qe_isv_svn(data) == doc["signature_data"]["qe_report"]["isv_svn"]
    assert pck["chain"][0]["not_before"] == info["pck_leaf_validity"][0]
    assert [c["subject"].rsplit("CN=", 1)[1] for c in pck["chain"]][1:] in (
        ["Intel SGX PCK Platform CA", "Intel SGX Root CA"],
        ["Intel SGX PCK Processor CA", "Intel SGX Root CA"],
    )


def test_decode_names_the_td_attributes_and_the_module_release() -> None:
    doc = decode_quote((QUOTES / "quotes/phala-v4-b0c06f.bin").read_bytes())
    assert doc["body"]["td_attributes_decoded"] == {
        "hex": "0000001000000000",
        "debug": False,
        "sept_ve_disable": True,
        "pks": False,
        "kl": False,
        "perfmon": False,
    }
    assert doc["body"]["mrseam_release"] == "1.5.06"
    sig = doc["signature_data"]
    assert (sig["certification_data_type"], sig["inner_certification_data_type"]) == (6, 5)
    assert sig["qe_report"]["isv_prod_id"] == 2 and len(sig["qe_report"]["mrsigner"]) == 64
    v5 = decode_quote((QUOTES / "quotes/gotdxguest-v5-90c06f.bin").read_bytes())
    assert (v5["body_type"], v5["body_name"]) == (3, "TD report 1.5") and "tee_tcb_svn2" in v5["body"]


def test_the_decode_command_prints_text_and_json() -> None:
    quote = str(QUOTES / "quotes/phala-v4-b0c06f.bin")
    p = tdxattest("decode", quote)
    assert p.returncode == 0, p.stderr
    assert "  fmspc: B0C06F000000" in p.stdout and "  mrseam_release: 1.5.06" in p.stdout
    assert "    sept_ve_disable: yes" in p.stdout
    p = tdxattest("decode", quote, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["pck"]["fmspc"] == "B0C06F000000"


def test_pckinfo_reads_the_leaf_from_a_quote_or_a_certificate(tmp_path: Path) -> None:
    data = (QUOTES / "quotes/phala-v4-b0c06f.bin").read_bytes()
    from_quote = pck_info(data)
    assert from_quote["source"] == "quote" and from_quote["fmspc"] == "B0C06F000000"
    assert len(from_quote["ppid"]) == 32 and from_quote["pce_id"] == "0000" and from_quote["sgx_type"] == "Scalable"
    leaf = x509.load_der_x509_certificate(parse_quote(data).pck_chain_ders()[0])
    for suffix, encoding in (("pem", Encoding.PEM), ("der", Encoding.DER)):
        cert = tmp_path / f"leaf.{suffix}"
        cert.write_bytes(leaf.public_bytes(encoding))
        p = tdxattest("pckinfo", str(cert), "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == {**from_quote, "source": "certificate"}


def test_pckinfo_refuses_a_quote_without_a_pem_chain(tmp_path: Path) -> None:
    quote = bytearray((QUOTES / "quotes/phala-v4-b0c06f.bin").read_bytes())
    offset = 48 + 584 + 4 + 64 + 64
    quote[offset] = 7  # certification data type 7: no QE report, no chain
    q = tmp_path / "q.bin"
    q.write_bytes(bytes(quote))
    p = tdxattest("pckinfo", str(q))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "expected a quote whose certification data carries the PEM PCK chain (type 5)" in p.stderr


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x04" * (2 * MAX_QUOTE_BYTES + 3))
    for verb in ("decode", "pckinfo"):
        p = tdxattest(verb, str(big))
        assert p.returncode == 2, p.stderr
        assert p.stderr == f"error: {big}: expected a quote of at most {MAX_QUOTE_BYTES} bytes, seen a larger file\n"
    with pytest.raises(InputError, match=f"at most {MAX_QUOTE_BYTES} bytes, seen {MAX_QUOTE_BYTES + 1} bytes"):
        decode_quote(bytes(MAX_QUOTE_BYTES + 1))


def test_a_hostile_pem_chain_decodes_to_no_chain(pki: TestPki) -> None:
    # 1000 KiB of BEGIN lines without an END: one forward scan, nothing to decode.
    doc = decode_quote(hostile_quote(pki, kib=1000))
    assert doc["pck"] is None and doc["signature_data"]["inner_certification_data_type"] == 5


@pytest.mark.parametrize(
    "der,expected",
    [
        (b"\x30", "a DER tag and length in the SGX extension"),
        (b"\x30\x85\x00\x00\x00\x00\x01", "a DER long-form length of 1 to 4 bytes"),
        (b"\x30\x80", "a DER long-form length of 1 to 4 bytes"),
        (b"\x30\x82\x01", "a DER long-form length of 1 to 4 bytes"),
        (b"\x30\x05\x01\x02", "5 bytes of DER content in the SGX extension"),
    ],
    ids=["one-byte", "five-length-bytes", "indefinite", "cut-length", "cut-content"],
)
def test_der_that_does_not_fit_is_unusable_input(der: bytes, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        list(der_items(der))
    assert list(der_items(b"\x04\x02ab\x02\x01\x07")) == [(0x04, b"ab"), (0x02, b"\x07")]
