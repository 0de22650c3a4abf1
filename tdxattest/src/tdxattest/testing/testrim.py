"""TEST reference integrity manifests -- NOT NVIDIA, for tests and the dev stack only.

A RIM in NVIDIA's layout (the SWID tag of tests/fixtures/gpu-evidence/rim, `core.rim`) for any
version and measurements, with an enveloped ECDSA-SHA384 XML signature (C14N 1.1) by a TEST signer
whose chain ends at a TEST root; `core.rim.verify_rim` accepts it only when handed that root.

    signer = TestRimSigner.create()
    xml = signer.rim(version="550.163.01", measurements={2: [digest]}, inactive={1: digest})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tdxattest.core.rim import SWID_NS
from tdxattest.testing.testgpu import make_test_cert

_SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
_RIM_NS = "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/"


@dataclass(frozen=True)
class TestRimSigner:
    __test__ = False  # not a pytest test class

    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]  # leaf first, root last

    @classmethod
    def create(cls, now: datetime | None = None) -> TestRimSigner:
        now = now or datetime.now(UTC)
        root_key, ca_key, leaf_key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
        root = make_test_cert("TEST NVIDIA CoRIM signing Root CA (NOT NVIDIA)", root_key, None, root_key, now, ca=True)
        ca = make_test_cert("TEST NVIDIA Reference Value GH100 CA", ca_key, root, root_key, now, ca=True)
        leaf = make_test_cert("TEST RIM Signer", leaf_key, ca, ca_key, now, ca=False)
        return cls(leaf_key, (leaf, ca, root))

    @property
    def root_pem(self) -> bytes:
        return self.chain[-1].public_bytes(serialization.Encoding.PEM)

    def rim(
        self,
        *,
        version: str,
        measurements: Mapping[int, Sequence[bytes]],
        inactive: Mapping[int, bytes] | None = None,
        product: str = "GH100",
    ) -> bytes:
        """A signed RIM. `measurements`: SPDM block -> accepted values (active); `inactive`: block ->
        a value NVIDIA lists but marks inactive (never compared)."""
        from lxml import etree
        from signxml import SignatureMethod, XMLSigner
        from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm

        nsmap = {None: SWID_NS, "ns2": _SHA384_NS}
        root = etree.Element(f"{{{SWID_NS}}}SoftwareIdentity", nsmap=nsmap)
        root.set("name", product)
        root.set("tagId", f"TEST-{product}-{version}")
        root.set("version", "1.0")
        etree.SubElement(root, f"{{{SWID_NS}}}Entity", name="TEST", role="softwareCreator tagCreator")
        meta = etree.SubElement(root, f"{{{SWID_NS}}}Meta", nsmap={"ns1": _RIM_NS})
        meta.set("colloquialVersion", version)
        meta.set("product", product)
        payload = etree.SubElement(root, f"{{{SWID_NS}}}Payload")
        blocks = {b: (list(v), True) for b, v in measurements.items()}
        blocks.update({b: ([v], False) for b, v in (inactive or {}).items()})
        for block, (values, active) in sorted(blocks.items()):
            res = etree.SubElement(payload, f"{{{SWID_NS}}}Resource")
            res.set("type", "Measurement")
            res.set("index", str(block - 1))
            res.set("active", "True" if active else "False")
            res.set("alternatives", str(len(values)))
            for n, value in enumerate(values):
                res.set(f"{{{_SHA384_NS}}}Hash{n}", value.hex())
            res.set("name", f"Measurement_{block - 1}")
            res.set("size", "48")
        signer = XMLSigner(
            signature_algorithm=SignatureMethod.ECDSA_SHA384,
            digest_algorithm=DigestAlgorithm.SHA384,
            c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
        )
        signer.namespaces = {"ds": "http://www.w3.org/2000/09/xmldsig#"}
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        certs = [c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain]
        signed = signer.sign(root, key=key_pem, cert=certs)
        return etree.tostring(signed)
