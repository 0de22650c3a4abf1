"""Every field of a TDX quote as plain data, for people and tools: `tdxattest decode` and
`tdxattest pckinfo` (what dcap-qvl's CLI calls `decode` and `pckinfo`).

Decoding is NOT verification: nothing here checks a signature, a certificate or a TCB level. The
FMSPC and TCB components come from the same readers the verification path uses
(`Quote.fmspc`, `quote_pck_tcb`), so what `decode` prints is what `verify` looks collateral up with.

Untrusted bytes: input is capped at MAX_QUOTE_BYTES before parsing, every reader below is a single
forward pass (no search that restarts), and the PEM chain is read at most MAX_PCK_CHAIN_CERTS deep.
"""

from __future__ import annotations

import struct
from typing import Any

from tdxattest.core.errors import InputError
from tdxattest.core.quote import (
    CERT_TYPE_PCK_CHAIN,
    CERT_TYPE_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    QE_REPORT_SIZE,
    SGX_EXTENSION_OID,
    Quote,
    der_items,
    oid_str,
    parse_quote,
    sgx_extension,
)
from tdxattest.core.tdx_modules import release_of

# A real quote is 4-8 KiB (a v4 quote with its PEM chain is about 5 KiB); 1 MiB leaves room for any
# certification data a QE could add and keeps a hostile file from costing more than a glance.
MAX_QUOTE_BYTES = 1 << 20

_BODY_NAMES = {2: "TD report 1.0", 3: "TD report 1.5"}
_CERT_TYPES = {
    1: "PPID in plain text, CPUSVN, PCESVN",
    2: "PPID RSA-2048-OAEP encrypted, CPUSVN, PCESVN",
    3: "PPID RSA-3072-OAEP encrypted, CPUSVN, PCESVN",
    4: "PCK leaf certificate",
    5: "PCK certificate chain (PEM)",
    6: "QE report certification data",
    7: "platform manifest",
}
# SGX extension OIDs (Intel SGX PCK Certificate and CRL Profile): 1.2.840.113741.1.13.1.<n>
_PPID, _TCB, _PCEID, _FMSPC, _SGX_TYPE = (f"{SGX_EXTENSION_OID}.{n}" for n in (1, 2, 3, 4, 5))
_SGX_TYPES = {0: "Standard", 1: "Scalable", 2: "Scalable with integrity"}


def check_size(data: bytes) -> None:
    if len(data) > MAX_QUOTE_BYTES:
        raise InputError(f"a quote of at most {MAX_QUOTE_BYTES} bytes", f"{len(data)} bytes")


def decode_quote(data: bytes) -> dict[str, Any]:
    """Every header, body and signature-data field, the decoded TD attributes, the TDX module the
    MRSEAM belongs to, and the PCK chain summarised (subjects, validity, SGX extension fields)."""
    check_size(data)
    quote = parse_quote(data)
    h = quote.header
    body = quote.report.as_dict()
    body["mrseam_release"] = release_of(body["mrseam"])
    return {
        "size": len(data),
        "trailing_bytes": quote.trailing,
        "header": {
            "version": h.version,
            "attestation_key_type": h.att_key_type,
            "tee_type": f"0x{h.tee_type:x}",
            "qe_svn": h.qe_svn,
            "pce_svn": h.pce_svn,
            "qe_vendor_id": h.qe_vendor_id.hex(),
            "qe_vendor_is_intel": h.qe_vendor_id == INTEL_QE_VENDOR_ID,
            "user_data": h.user_data.hex(),
        },
        "body_type": quote.body_type,
        "body_name": _BODY_NAMES[quote.body_type],
        "body": body,
        "signature_data": _signature_data(quote),
        "pck": _pck(quote),
    }


def _signature_data(quote: Quote) -> dict[str, Any]:
    out: dict[str, Any] = {
        "signature": quote.signature.hex(),
        "attestation_key": quote.attestation_key.hex(),
        "certification_data_type": quote.cert_data_type,
        "certification_data": _CERT_TYPES.get(quote.cert_data_type, "unknown"),
    }
    if quote.cert_data_type == CERT_TYPE_QE_REPORT and quote.qe_report is not None:
        out["qe_report"] = qe_report_fields(quote.qe_report)
        out["qe_report_signature"] = (quote.qe_report_signature or b"").hex()
        out["qe_auth_data"] = (quote.qe_auth_data or b"").hex()
        out["inner_certification_data_type"] = quote.pck_cert_type
    return out


def qe_report_fields(report: bytes) -> dict[str, Any]:
    """The QE's SGX report body (384 bytes): the enclave that signed the attestation key."""
    if len(report) != QE_REPORT_SIZE:
        raise InputError(f"a {QE_REPORT_SIZE}-byte QE report", f"{len(report)} bytes")
    (miscselect,) = struct.unpack_from("<I", report, 16)
    isv_prod_id, isv_svn = struct.unpack_from("<HH", report, 256)
    return {
        "cpusvn": report[0:16].hex(),
        "miscselect": f"0x{miscselect:08x}",
        "attributes": report[48:64].hex(),
        "mrenclave": report[64:96].hex(),
        "mrsigner": report[128:160].hex(),
        "isv_prod_id": isv_prod_id,
        "isv_svn": isv_svn,
        "report_data": report[320:384].hex(),
    }


def _pck(quote: Quote) -> dict[str, Any] | None:
    ders = quote.pck_chain_ders()
    if not ders:
        return None
    from cryptography import x509

    chain = []
    for der in ders:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise InputError("a DER certificate in the PCK chain", str(exc)[:120]) from None
        chain.append(
            {
                "subject": cert.subject.rfc4514_string(),
                "issuer": cert.issuer.rfc4514_string(),
                "serial": f"{cert.serial_number:x}",
                "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    return {"ca": quote.pck_ca(), "chain": chain, **pck_extension(ders[0])}


def pck_extension(leaf_der: bytes) -> dict[str, Any]:
    """The SGX extension of a PCK leaf: PPID, CPUSVN, PCESVN, the 16 TCB component SVNs, PCE-ID,
    FMSPC and SGX type (each None when absent)."""
    out: dict[str, Any] = {
        "fmspc": None,
        "pcesvn": None,
        "cpusvn": None,
        "tcb_components": None,
        "pce_id": None,
        "ppid": None,
        "sgx_type": None,
    }
    raw = sgx_extension(leaf_der)
    if raw is None:
        return out
    for _tag, seq in der_items(raw):
        for _tag2, entry in der_items(seq):
            items = list(der_items(entry))
            if len(items) != 2 or items[0][0] != 0x06:
                continue
            oid, (tag, value) = oid_str(items[0][1]), items[1]
            if oid == _FMSPC:
                out["fmspc"] = value.hex().upper()
            elif oid == _PPID:
                out["ppid"] = value.hex()
            elif oid == _PCEID:
                out["pce_id"] = value.hex()
            elif oid == _SGX_TYPE:
                kind = int.from_bytes(value, "big")
                out["sgx_type"] = _SGX_TYPES.get(kind, str(kind))
            elif oid == _TCB and tag == 0x30:
                out.update(_tcb(value))
    return out


def _tcb(seq: bytes) -> dict[str, Any]:
    comps: dict[int, int] = {}
    cpusvn = None
    for _tag, inner in der_items(seq):
        sub = list(der_items(inner))
        if len(sub) != 2 or sub[0][0] != 0x06:
            continue
        index = oid_str(sub[0][1]).rsplit(".", 1)[-1]
        if index == "18" and sub[1][0] == 0x04:
            cpusvn = sub[1][1].hex()
        elif index.isdigit() and sub[1][0] == 0x02:
            comps[int(index)] = int.from_bytes(sub[1][1], "big")
    return {
        "tcb_components": [comps.get(i) for i in range(1, 17)],
        "pcesvn": comps.get(17),
        "cpusvn": cpusvn,
    }


def pck_info(data: bytes) -> dict[str, Any]:
    """`pckinfo`: the PCK leaf's identity fields, from a quote or from a PCK certificate (PEM or DER)."""
    check_size(data)
    if data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----") or data[:1] == b"\x30":
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            cert = (
                x509.load_pem_x509_certificate(data)
                if data.lstrip()[:1] == b"-"
                else x509.load_der_x509_certificate(data)
            )
        except ValueError as exc:
            raise InputError("a PCK certificate (PEM or DER) or a TDX quote", str(exc)[:120]) from None
        leaf = cert.public_bytes(Encoding.DER)
        source = "certificate"
    else:
        quote = parse_quote(data)
        ders = quote.pck_chain_ders()
        if not ders:
            raise InputError(
                f"a quote whose certification data carries the PEM PCK chain (type {CERT_TYPE_PCK_CHAIN})",
                f"certification data type {quote.cert_data_type}, no PEM chain",
            )
        leaf = ders[0]
        source = "quote"
    fields = pck_extension(leaf)
    if fields["fmspc"] is None:
        raise InputError("a PCK certificate with Intel's SGX extension (OID 1.2.840.113741.1.13.1)", "none")
    return {"source": source, **fields}
