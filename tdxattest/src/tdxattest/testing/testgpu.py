"""A software "GPU" that signs Hopper-format SPDM attestation reports over any nonce, with a TEST
certificate chain -- NOT NVIDIA, for tests and the dev stack only.

The real reports in tests/fixtures/gpu-evidence verify for the one nonce their GPU was given, so
they test parsing, chains and signatures but not a fresh nonce per connection. This stand-in keeps a
real report's measurement blocks and opaque data (so the driver and VBIOS versions, the FWID and the
reference measurements are a real H100's) and re-signs request || response over the nonce it is
asked for, with a P-384 key whose chain ends at a TEST root that every verifier refuses unless it
is handed that root (`GpuPolicy.root_pem`):

    TEST NVIDIA Device Identity CA (NOT NVIDIA) -- TEST GH100 Identity -- TEST GH100 GSP FMC LF
                                                                          (FWID extension)

    gpu = TestGpu.create(template_report)       # or TestGpu.load(state_dir) after .save(state_dir)
    report = gpu.report(nonce)                  # bytes: request || response || signature

`python -m tdxattest.testing.testgpu collect --state DIR --nonce HEX` prints what the agent's NVML
collector prints (guest_agent.nvml), for the gateway's `--gpu-collect`; `sign --state DIR --index I
--nonce HEX` writes one raw report to stdout, for the stand-in NVML library's signer hook.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tdxattest.core.gpu_evidence import (
    FWID_OID,
    OPAQUE_DRIVER_VERSION,
    OPAQUE_FWID,
    OPAQUE_VBIOS_VERSION,
    REQUEST_LEN,
    parse_gpu_report,
)
from tdxattest.testing.der import oid, tlv

_ORG = "TEST ONLY - NOT NVIDIA"
SHA384_OID = "2.16.840.1.101.3.4.2.2"


def tcb_info_extension(fwid: bytes) -> x509.UnrecognizedExtension:
    """TCG DICE TcbInfo with one SHA-384 FWID: SEQUENCE { [6] IMPLICIT SEQUENCE OF FWID }, FWID =
    SEQUENCE { hashAlg OID, digest OCTET STRING } (the digest is the extension's last 48 bytes)."""
    fwid_der = tlv(0x30, oid(SHA384_OID) + tlv(0x04, fwid))
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(FWID_OID), tlv(0x30, tlv(0xA6, fwid_der)))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG)])


def make_test_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    *,
    ca: bool,
    extra: x509.ExtensionType | None = None,
) -> x509.Certificate:
    """A TEST certificate ("TEST ONLY - NOT NVIDIA"), P-384/SHA-384 as NVIDIA's chains are, valid
    from a day before `now` for ten years; `ca` sets basicConstraints. The TEST GPU's and the TEST
    RIM signer's chains are made of these."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extra is not None:
        builder = builder.add_extension(extra, critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def with_opaque_fields(opaque: bytes, replace: dict[int, bytes]) -> bytes:
    """`opaque` with the values of the given field types replaced (lengths adjusted)."""
    out, p = bytearray(), 0
    while p + 4 <= len(opaque):
        kind, size = struct.unpack_from("<HH", opaque, p)
        value = replace.get(kind, opaque[p + 4 : p + 4 + size])
        out += struct.pack("<HH", kind, len(value)) + value
        p += 4 + size
    return bytes(out)


def vbios_field(version: str) -> bytes:
    """96.00.9f.00.01 -> the 8-byte opaque field (inverse of GpuReport.vbios_version)."""
    a, b, c, d, oem = (int(x, 16) for x in version.split("."))
    return bytes((d, c, b, a, oem, 0, 0, 0))


@dataclass(frozen=True)
class TestGpu:
    """One stand-in GPU: a signing key, its TEST chain (leaf first) and the report it imitates."""

    __test__ = False  # not a pytest test class

    key: ec.EllipticCurvePrivateKey
    chain_pem: bytes
    root_pem: bytes
    header: bytes  # the response's first 4 bytes (version, code, param1, param2)
    records: bytes  # measurement blocks: count byte, 3-byte length, blocks
    opaque: bytes
    root_key: ec.EllipticCurvePrivateKey | None = None  # signs TEST OCSP responses (ocsp_response)

    @classmethod
    def create(cls, template: bytes | str, *, name: str = "GH100", now: datetime | None = None) -> TestGpu:
        """A new TEST chain whose leaf carries the template report's FWID."""
        now = now or datetime.now(UTC)
        parsed = parse_gpu_report(template)
        fwid = parsed.fwid or bytes(48)
        root_key, ica_key, leaf_key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
        root = make_test_cert("TEST NVIDIA Device Identity CA (NOT NVIDIA)", root_key, None, root_key, now, ca=True)
        ica = make_test_cert(f"TEST {name} Identity", ica_key, root, root_key, now, ca=True)
        leaf = make_test_cert(
            f"TEST {name} GSP FMC LF", leaf_key, ica, ica_key, now, ca=False, extra=tcb_info_extension(fwid)
        )
        signed = parsed.response_signed
        rec_len = int.from_bytes(signed[5:8], "little")
        return cls(
            key=leaf_key,
            chain_pem=_pem(leaf, ica, root),
            root_pem=_pem(root),
            header=signed[:4],
            records=signed[4 : 8 + rec_len],
            opaque=parsed.opaque,
            root_key=root_key,
        )

    def with_versions(self, *, driver: str | None = None, vbios: str | None = None) -> TestGpu:
        """The same GPU reporting other versions (they are in the signed opaque data)."""
        fields: dict[int, bytes] = {}
        if driver is not None:
            fields[OPAQUE_DRIVER_VERSION] = driver.encode() + b"\0"
        if vbios is not None:
            fields[OPAQUE_VBIOS_VERSION] = vbios_field(vbios)
        return replace(self, opaque=with_opaque_fields(self.opaque, fields))

    def with_measurement(self, index: int, value: bytes) -> TestGpu:
        """The same GPU measuring `value` in block `index` (a changed firmware or driver)."""
        out, p, end = bytearray(self.records[:4]), 4, len(self.records)
        while p < end:
            idx, spec, size = struct.unpack_from("<BBH", self.records, p)
            block = self.records[p + 4 : p + 4 + size]
            if idx == index:
                block = block[:1] + struct.pack("<H", len(value)) + value
            out += struct.pack("<BBH", idx, spec, len(block)) + block
            p += 4 + size
        out[1:4] = (len(out) - 4).to_bytes(3, "little")
        return replace(self, records=bytes(out))

    def with_fwid(self, fwid: bytes) -> TestGpu:
        return replace(self, opaque=with_opaque_fields(self.opaque, {OPAQUE_FWID: fwid}))

    def ocsp_response(
        self,
        *,
        status: str = "good",
        now: datetime | None = None,
        valid_for: timedelta = timedelta(days=1),
        signer: ec.EllipticCurvePrivateKey | None = None,
        responder: x509.Certificate | None = None,
    ) -> bytes:
        """A TEST OCSP response (DER) for the chain's CA certificate (the ICA, issued by the root):
        `status` good | revoked | unknown, signed by the root, or by `signer` (with `responder`, a
        delegated responder certificate included in the response)."""
        from cryptography.x509 import ReasonFlags, ocsp

        now = now or datetime.now(UTC)
        _leaf, ica, root = x509.load_pem_x509_certificates(self.chain_pem)
        key = signer or self.root_key
        assert key is not None, "a TestGpu made by create() (it keeps the TEST root key)"
        cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED}.get(
            status, ocsp.OCSPCertStatus.UNKNOWN
        )
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=ica,
            issuer=root,
            algorithm=hashes.SHA256(),
            cert_status=cert_status,
            this_update=now - timedelta(minutes=5),
            next_update=now - timedelta(minutes=5) + valid_for,
            revocation_time=now - timedelta(days=1) if status == "revoked" else None,
            revocation_reason=ReasonFlags.key_compromise if status == "revoked" else None,
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder or root)
        if responder is not None:
            builder = builder.certificates([responder])
        return builder.sign(key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)

    def ocsp_responder_cert(self, key: ec.EllipticCurvePrivateKey, *, for_ocsp: bool = True) -> x509.Certificate:
        """A delegated responder certificate issued by the TEST root (OCSP signing EKU when `for_ocsp`)."""
        from cryptography.x509.oid import ExtendedKeyUsageOID

        assert self.root_key is not None
        root = x509.load_pem_x509_certificates(self.chain_pem)[-1]
        eku = [ExtendedKeyUsageOID.OCSP_SIGNING if for_ocsp else ExtendedKeyUsageOID.SERVER_AUTH]
        return make_test_cert(
            "TEST OCSP Responder",
            key,
            root,
            self.root_key,
            datetime.now(UTC),
            ca=False,
            extra=x509.ExtendedKeyUsage(eku),
        )

    def report(self, nonce: bytes, responder_nonce: bytes = bytes(32)) -> bytes:
        if len(nonce) != 32:
            raise ValueError(f"nonce of 32 bytes, seen {len(nonce)}")
        request = bytes((0x11, 0xE0, 0x01, 0xFF)) + nonce + b"\x00"
        assert len(request) == REQUEST_LEN
        response = self.header + self.records + responder_nonce + struct.pack("<H", len(self.opaque)) + self.opaque
        r, s = decode_dss_signature(self.key.sign(request + response, ec.ECDSA(hashes.SHA384())))
        return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")

    # -- a state directory, for the processes the gateway and the NVML stand-in run ---------------
    def save(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        (state / "key.pem").write_bytes(_key_pem(self.key))
        (state / "chain.pem").write_bytes(self.chain_pem)
        (state / "root.pem").write_bytes(self.root_pem)
        (state / "template.json").write_text(
            json.dumps({"header": self.header.hex(), "records": self.records.hex(), "opaque": self.opaque.hex()})
        )

    @classmethod
    def load(cls, state: Path) -> TestGpu:
        key = serialization.load_pem_private_key((state / "key.pem").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        t = json.loads((state / "template.json").read_text())
        return cls(
            key,
            (state / "chain.pem").read_bytes(),
            (state / "root.pem").read_bytes(),
            bytes.fromhex(t["header"]),
            bytes.fromhex(t["records"]),
            bytes.fromhex(t["opaque"]),
        )


def save_gpus(gpus: list[TestGpu], state: Path, cc: dict | None = None) -> None:
    """Several stand-in GPUs under `state/<i>/`, and the CC state the collector reports."""
    for i, gpu in enumerate(gpus):
        gpu.save(state / str(i))
    (state / "cc.json").write_text(json.dumps(cc or {"environment": "prod", "enabled": True, "devtools": False}))


def collect(state: Path, nonce: bytes) -> dict:
    """What guest_agent.nvml prints, from the stand-in GPUs under `state`."""
    gpus = []
    i = 0
    while (state / str(i)).is_dir():
        gpu = TestGpu.load(state / str(i))
        gpus.append({"index": i, "evidence": gpu.report(nonce).hex(), "certificate": gpu.chain_pem.decode()})
        i += 1
    return {
        "collector": "tdxattest.testing.testgpu",
        "cc": json.loads((state / "cc.json").read_text()),
        "evidences": gpus,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tdxattest.testing.testgpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("verb", choices=("collect", "sign"))
    ap.add_argument("--state", required=True, type=Path)
    ap.add_argument("--nonce", required=True)
    ap.add_argument("--index", type=int, default=0)
    args = ap.parse_args(argv)
    nonce = bytes.fromhex(args.nonce)
    if args.verb == "collect":
        json.dump(collect(args.state, nonce), sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stdout.buffer.write(TestGpu.load(args.state / str(args.index)).report(nonce))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
