"""NVIDIA reference integrity manifests (RIMs): the signed reference values of a GPU driver or VBIOS.

A RIM is an ISO/IEC 19770-2 SWID tag (TCG RIM binding) with an enveloped XML signature
(exclusive of nothing: C14N 1.1, ECDSA-SHA384) whose KeyInfo carries the signing chain, leaf first,
ending at the NVIDIA CoRIM signing Root CA. NVIDIA's RIM service serves one per driver version
(`NV_GPU_DRIVER_GH100_<version>`) and per VBIOS (`NV_GPU_VBIOS_<project>_<project SKU>_<chip
SKU>_<version without dots>`, from the report's opaque data), as JSON with the tag in base64.

    rim = verify_rim(xml_bytes, now)              # RimError naming the check, or the verified values
    reference, detail = rim_reference(report, lookup)   # block index -> accepted values

`Payload/Resource` elements are the measurements: `index` (0-based: RIM index i is SPDM measurement
block i + 1), `active` (only active ones are compared), `alternatives` and `Hash0..HashN` (hex
SHA-384, any of which is accepted). Values are read from the element the signature covers (the one
the XML signature library returns), never from the document as first parsed, so a second, unsigned
payload cannot be slipped in. The XML is parsed without entities, DTDs or network access, and a
document over MAX_RIM_BYTES is refused before parsing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tdxattest.core.certs import first_break
from tdxattest.core.gpu_evidence import GpuEvidenceError, normalise_version

if TYPE_CHECKING:
    from cryptography import x509

    from tdxattest.core.gpu_evidence import GpuReport

# SHA-256 of the DER of "CN=NVIDIA CoRIM signing Root CA, O=NVIDIA, C=US" (P-384, 2023-03-16 ..
# 2053-03-08): the root of every RIM signing chain, as NVIDIA's nvtrust verifier ships it
# (verifier_RIM_root.pem) and as the RIM in tests/fixtures/gpu-evidence/rim ends.
NVIDIA_RIM_ROOT_SHA256 = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
MAX_RIM_BYTES = 1 << 20
SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
HASH_ATTR = re.compile(r"^\{http://www\.w3\.org/2001/04/xmlenc#sha384\}Hash(\d+)$")
RIM_ID = re.compile(r"^NV_GPU_[A-Z0-9_]+(?:\.[0-9A-Za-z]+)*$")
OPAQUE_CHIP_SKU, OPAQUE_PROJECT, OPAQUE_PROJECT_SKU = 15, 17, 18
HOPPER_PRODUCT = "GH100"  # the only family whose RIM ids are formed here (rim_ids)


class RimError(GpuEvidenceError):
    """A RIM could not be had or did not verify: a refusal of the GPU evidence, named `gpu.rim_*`."""


@dataclass(frozen=True)
class Rim:
    version: str  # colloquialVersion: the driver version, or the VBIOS version (96.00.74.00.1C)
    product: str  # GH100
    tag_id: str
    signer: str
    not_after: float  # the earliest end of validity in the signing chain
    measurements: Mapping[int, tuple[bytes, ...]] = field(default_factory=dict)  # SPDM block -> values


RimLookup = Callable[[str], Rim]  # a RIM id -> the verified RIM; raises RimError


def _parser() -> Any:
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _certs(root: Any) -> list[x509.Certificate]:
    import base64

    from cryptography import x509

    out = []
    for el in root.iter(f"{{{DSIG_NS}}}X509Certificate"):
        try:
            out.append(x509.load_der_x509_certificate(base64.b64decode("".join((el.text or "").split()))))
        except ValueError as exc:
            raise RimError("gpu.rim_malformed", "DER certificates in the signature's KeyInfo", str(exc)) from None
    return out


def _verify_chain(certs: list[x509.Certificate], root_pem: bytes | None, now: float) -> float:
    """Leaf -> ... -> root, each link ECDSA-signed by the next and valid at `now`; the root pinned by
    fingerprint (or `root_pem`, a TEST root). Returns the chain's earliest notAfter."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    if len(certs) < 2:
        raise RimError("gpu.rim_chain_invalid", "a signing certificate and its chain in KeyInfo", f"{len(certs)}")
    root = certs[-1]
    if root_pem is not None:
        if root != x509.load_pem_x509_certificate(root_pem):
            raise RimError("gpu.rim_untrusted_root", "the given TEST RIM root", root.subject.rfc4514_string())
    elif root.fingerprint(hashes.SHA256()).hex() != NVIDIA_RIM_ROOT_SHA256:
        raise RimError(
            "gpu.rim_untrusted_root",
            f"a chain ending at the NVIDIA CoRIM signing Root CA (DER SHA-256 {NVIDIA_RIM_ROOT_SHA256})",
            f"{root.subject.rfc4514_string()} ({root.fingerprint(hashes.SHA256()).hex()})",
        )
    broken = first_break(certs, root, now)
    if broken is not None:
        fix = " (fetch a current RIM)" if broken.kind == "validity" else ""
        raise RimError("gpu.rim_chain_invalid", broken.expected(now), broken.problem + fix)
    return min(c.not_valid_after_utc.timestamp() for c in certs)


def _measurements(signed: Any) -> dict[int, tuple[bytes, ...]]:
    out: dict[int, tuple[bytes, ...]] = {}
    payload = signed.find(f"{{{SWID_NS}}}Payload")
    if payload is None:
        raise RimError("gpu.rim_malformed", "a signed Payload element", "none")
    for res in payload.iter(f"{{{SWID_NS}}}Resource"):
        if res.get("type") != "Measurement":
            continue
        try:
            index = int(res.get("index", ""))
            hashes = sorted(
                (int(m.group(1)), bytes.fromhex(v)) for k, v in res.attrib.items() if (m := HASH_ATTR.fullmatch(k))
            )
        except ValueError:
            raise RimError("gpu.rim_malformed", "integer indices and hex Hash values", res.get("name", "?")) from None
        if not 0 <= index < 255 or not hashes or any(len(h) != 48 for _, h in hashes):
            raise RimError("gpu.rim_malformed", "index 0..254 and 48-byte SHA-384 values", res.get("name", "?"))
        if index + 1 in out:
            raise RimError("gpu.rim_malformed", "one Resource per index", f"index {index} twice")
        if res.get("active") == "True":
            out[index + 1] = tuple(h for _, h in hashes)
    return out


def verify_rim(xml: bytes, now: float, root_pem: bytes | None = None) -> Rim:
    """The RIM's signed values, once its signature, chain and root check at `now`. Pure (no I/O)."""
    from lxml import etree
    from signxml import SignatureConfiguration, SignatureMethod, XMLVerifier
    from signxml.algorithms import DigestAlgorithm
    from signxml.exceptions import InvalidInput, InvalidSignature

    if len(xml) > MAX_RIM_BYTES:
        raise RimError("gpu.rim_malformed", f"a RIM of at most {MAX_RIM_BYTES} bytes", f"{len(xml)} bytes")
    try:
        doc = etree.fromstring(xml, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise RimError("gpu.rim_malformed", "well-formed SWID XML", str(exc)[:160]) from None
    if doc.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise RimError("gpu.rim_malformed", "a SoftwareIdentity tag", str(doc.tag)[:80])
    certs = _certs(doc)
    not_after = _verify_chain(certs, root_pem, now)
    from cryptography.hazmat.primitives.serialization import Encoding

    config = SignatureConfiguration(
        verification_time=datetime.fromtimestamp(now, UTC),
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
    )
    try:
        result = XMLVerifier().verify(
            xml, x509_cert=certs[0].public_bytes(Encoding.PEM).decode(), expect_config=config, parser=_parser()
        )
    except (InvalidSignature, InvalidInput) as exc:
        raise RimError(
            "gpu.rim_signature_invalid", "an ECDSA-SHA384 XML signature by the RIM signer", str(exc)[:200]
        ) from None
    if isinstance(result, list):  # more than one reference: NVIDIA signs the whole tag once
        raise RimError("gpu.rim_signature_invalid", "one signed reference (the whole tag)", f"{len(result)}")
    signed = result.signed_xml
    if signed is None or signed.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise RimError("gpu.rim_signature_invalid", "a signature over the whole SoftwareIdentity", "another element")
    meta = signed.find(f"{{{SWID_NS}}}Meta")
    version = meta.get("colloquialVersion") if meta is not None else None
    if not version:
        raise RimError("gpu.rim_malformed", "Meta colloquialVersion (the driver or VBIOS version)", "none")
    return Rim(
        version=version,
        product=(meta.get("product") if meta is not None else None) or "",
        tag_id=signed.get("tagId", ""),
        signer=certs[0].subject.rfc4514_string(),
        not_after=not_after,
        measurements=_measurements(signed),
    )


def _ascii(raw: bytes | None) -> str:
    return (raw or b"").split(b"\0", 1)[0].decode("ascii", "replace")


def rim_ids(report: GpuReport) -> tuple[str, str]:
    """(driver RIM id, VBIOS RIM id) of a Hopper report, from its signed opaque data."""
    fields = report.opaque_fields
    driver = report.driver_version or "?"
    vbios = (report.vbios_version or "?").replace(".", "").upper()
    project, project_sku, chip_sku = (
        _ascii(fields.get(k)) for k in (OPAQUE_PROJECT, OPAQUE_PROJECT_SKU, OPAQUE_CHIP_SKU)
    )
    return f"NV_GPU_DRIVER_{HOPPER_PRODUCT}_{driver}", f"NV_GPU_VBIOS_{project}_{project_sku}_{chip_sku}_{vbios}"


def rim_reference(report: GpuReport, lookup: RimLookup) -> tuple[dict[int, tuple[bytes, ...]], str]:
    """The report's reference values from its driver and VBIOS RIMs (each must be for the version the
    GPU signed, and no block may be claimed by both), and a description for the verdict."""
    driver_id, vbios_id = rim_ids(report)
    driver, vbios = lookup(driver_id), lookup(vbios_id)
    for rim_id, rim, seen in ((driver_id, driver, report.driver_version), (vbios_id, vbios, report.vbios_version)):
        if normalise_version(rim.version) != normalise_version(seen or ""):
            raise RimError("gpu.rim_version_mismatch", f"{rim_id} for version {seen}", f"a RIM for {rim.version}")
        # The signed product binds the RIM to the GPU family the id names (a GB100 RIM of the same
        # driver release has other values); the version formats tell a driver RIM from a VBIOS one.
        if rim.product != HOPPER_PRODUCT:
            raise RimError(
                "gpu.rim_version_mismatch", f"{rim_id}: a RIM for {HOPPER_PRODUCT}", f"one for {rim.product!r}"
            )
    both = sorted(set(driver.measurements) & set(vbios.measurements))
    if both:
        raise RimError("gpu.rim_conflict", "driver and VBIOS RIMs measuring different blocks", f"both measure {both}")
    return {**driver.measurements, **vbios.measurements}, f"NVIDIA RIMs {driver_id}, {vbios_id}"
