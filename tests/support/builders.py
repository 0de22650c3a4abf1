"""Synthetic inputs for the measurement and policy code: a minimal TDVF, a bzImage with an EFI stub,
a TCG2 event log header, and TD reports / verified facts with chosen fields."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

from tdxattest.core.policy import QuoteFacts
from tdxattest.core.quote import TdReport
from tdxattest.core.tdvf import FOOTER_GUID, TDVF_METADATA_GUID, TDX_METADATA_OFFSET_GUID

SIZE = 0x4000


DESC = 0x3C00


# (data offset, raw size, GPA, memory size, type, attributes)
SECTIONS = [
    (0x1000, 0x3000, 0xFFFFD000, 0x3000, 0, 1),  # BFV, measured
    (0x0000, 0x1000, 0xFFFFC000, 0x1000, 1, 0),  # CFV
    (0, 0, 0x809000, 0x2000, 2, 0),  # TD_HOB
    (0, 0, 0x800000, 0x6000, 3, 0),  # TempMem
]


def make_tdvf(
    sections=SECTIONS,
    *,
    count: int | None = None,
    version: int = 1,
    length: int | None = None,
    signature: bytes = b"TDVF",
) -> bytes:
    """A small firmware image with an OVMF footer table pointing at a TDVF descriptor."""
    fw = bytearray((i * 7 + 3) & 0xFF for i in range(SIZE))
    n = len(sections) if count is None else count
    fw[DESC - 16 : DESC] = TDVF_METADATA_GUID.bytes_le
    fw[DESC : DESC + 16] = struct.pack("<4sIII", signature, 16 + 32 * n if length is None else length, version, n)
    for i, s in enumerate(sections):
        fw[DESC + 16 + 32 * i : DESC + 48 + 32 * i] = struct.pack("<IIQQII", *s)
    end = SIZE - 0x20
    footer = struct.pack("<H", 40) + FOOTER_GUID.bytes_le
    entry = struct.pack("<I", SIZE - DESC) + struct.pack("<H", 22) + TDX_METADATA_OFFSET_GUID.bytes_le
    fw[end - 40 : end] = entry + footer
    return bytes(fw)


def make_bzimage(
    *,
    size: int = 0x3000,
    protocol: int = 0x20F,
    cert: bytes = b"",
    xloadflags: int = 0x7F,
    initrd_addr_max: int = 0x7FFFFFFF,
    fill: int = 0x5A,
) -> bytes:
    """A tiny x86 bzImage-shaped PE32+ image: MZ stub, PE header, Linux setup header at 0x1f1,
    two sections (.setup, .text), optional certificate table at the end."""
    img = bytearray(bytes([fill]) * size)
    img[0:2] = b"MZ"
    struct.pack_into("<I", img, 0x3C, 0x40)
    img[0x40:0x44] = b"PE\x00\x00"
    struct.pack_into("<HHIIIHH", img, 0x44, 0x8664, 2, 0, 0, 0, 240, 0x206)  # COFF header
    opt = 0x58
    img[opt : opt + 240] = bytes(240)
    struct.pack_into("<H", img, opt, 0x20B)
    struct.pack_into("<I", img, opt + 60, 0x200)  # SizeOfHeaders
    struct.pack_into("<I", img, opt + 64, 0x12345678)  # CheckSum (excluded from the hash)
    struct.pack_into("<I", img, opt + 108, 16)  # NumberOfRvaAndSizes
    table = opt + 240
    for i, (name, ptr, raw) in enumerate(((b".setup", 0x200, 0xE00), (b".text", 0x1000, size - 0x1000))):
        struct.pack_into("<8sIIIIIIHHI", img, table + 40 * i, name, raw, ptr, raw, ptr, 0, 0, 0, 0, 0x60000020)
    # Linux setup header
    img[0x1F1] = 7
    struct.pack_into("<I", img, 0x202, 0x53726448)
    struct.pack_into("<H", img, 0x206, protocol)
    img[0x210] = 0
    img[0x211] = 0x01
    struct.pack_into("<H", img, 0x224, 0)
    struct.pack_into("<I", img, 0x218, 0)
    struct.pack_into("<I", img, 0x21C, 0)
    struct.pack_into("<I", img, 0x228, 0)
    struct.pack_into("<I", img, 0x22C, initrd_addr_max)
    struct.pack_into("<H", img, 0x236, xloadflags)
    if cert:
        struct.pack_into("<II", img, opt + 112 + 32, len(img), len(cert))
        img += cert
    return bytes(img)


def make_spec_id_log(event_type: int = 3, signature: bytes = b"Spec ID Event03\x00") -> bytes:
    spec = signature + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1) + struct.pack("<HH", 0x000C, 48) + b"\x00"
    return struct.pack("<II", 1, event_type) + bytes(20) + struct.pack("<I", len(spec)) + spec


MRTD = bytes(range(48))


TCB_DATE = 1_691_539_200  # 2023-08-09T00:00:00Z


def report(**over) -> TdReport:
    fields = dict(
        tee_tcb_svn=bytes.fromhex("04010700000000000000000000000000"),
        mrseam=b"\x5b" * 48,
        mrsignerseam=b"\0" * 48,
        seam_attributes=b"\0" * 8,
        td_attributes=bytes.fromhex("0000001000000000"),
        xfam=bytes.fromhex("e702060000000000"),
        mrtd=MRTD,
        mrconfigid=b"\0" * 48,
        mrowner=b"\0" * 48,
        mrownerconfig=b"\0" * 48,
        rtmr0=b"\1" * 48,
        rtmr1=b"\2" * 48,
        rtmr2=b"\3" * 48,
        rtmr3=b"\0" * 48,
        report_data=b"\x42" * 64,
    )
    fields.update(over)
    return TdReport(**fields)


def facts(status="UpToDate", advisories=(), tcb_date=TCB_DATE, **rep) -> QuoteFacts:
    return QuoteFacts(
        tcb_status=status,
        advisory_ids=tuple(advisories),
        report=report(**rep),
        fmspc="00806F050000",
        tcb_date=tcb_date,
        tcb_evaluation_data_number=17,
        qe_svn=8,
        pce_svn=13,
        qe_vendor_id=bytes.fromhex("939a7233f79c4ca9940a0db3957f0607"),
    )


# A throwaway certificate window wide enough for every test's clock.
CERT_NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CERT_NOT_AFTER = dt.datetime(2034, 1, 1, tzinfo=dt.UTC)


def certificate(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool, fwid: bytes | None = None) -> Any:
    """A test certificate for `key` signed by `issuer_key` (SHA-384), valid CERT_NOT_BEFORE..AFTER;
    with `fwid`, the TCG TcbInfo extension whose value ends with it (what a GPU leaf carries)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(CERT_NOT_BEFORE)
        .not_valid_after(CERT_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if fwid is not None:
        oid = x509.ObjectIdentifier("2.23.133.5.4.1")  # TCG DICE TcbInfo
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, bytes(16) + fwid), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())
