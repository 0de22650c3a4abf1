"""Just enough of a TDX DCAP quote (v4/v5) to read the TD's measurement registers.

This reads the header and the TD report body; it does NOT check any signature, certificate or
TCB status (that is quote verification, elsewhere). Use it only to compare a replayed event log
with the registers a quote claims, or to display them.

Layout: 48-byte header (u16 version, u16 attestation key type, u32 TEE type = 0x81 for TDX, ...).
v4: the TD report body follows at 48. v5: u16 body type (2 = TD report 1.0, 3 = TD report 1.5),
u32 body size, then the body at 54. TD report body offsets: TD attributes 120, XFAM 128, MRTD 136,
MRCONFIGID 184, MROWNER 232, MROWNERCONFIG 280, RTMR0-3 328/376/424/472, REPORTDATA 520.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import InputError

HEADER_SIZE = 48
TEE_TYPE_TDX = 0x81
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
V5_BODY_TYPES = {2: TD_REPORT10_SIZE, 3: TD_REPORT15_SIZE}


@dataclass(frozen=True)
class QuoteRegisters:
    version: int
    body_offset: int
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes

    def as_dict(self) -> dict:
        out = {
            "version": self.version,
            "td_attributes": self.td_attributes.hex(),
            "xfam": self.xfam.hex(),
            "mrtd": self.mrtd.hex(),
            "mrconfigid": self.mrconfigid.hex(),
            "mrowner": self.mrowner.hex(),
            "mrownerconfig": self.mrownerconfig.hex(),
            "report_data": self.report_data.hex(),
        }
        out.update({f"rtmr{i}": r.hex() for i, r in enumerate(self.rtmrs)})
        return out


def read_quote_registers(quote: bytes) -> QuoteRegisters:
    if len(quote) < HEADER_SIZE:
        raise InputError(f"a TDX quote header ({HEADER_SIZE} bytes)", f"{len(quote)} bytes", offset=0)
    version, _key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if version not in (4, 5):
        raise InputError("quote version 4 or 5", str(version), offset=0)
    if tee_type != TEE_TYPE_TDX:
        raise InputError(f"TEE type 0x{TEE_TYPE_TDX:x} (TDX)", f"0x{tee_type:x}", offset=4)
    if version == 4:
        body, size = HEADER_SIZE, TD_REPORT10_SIZE
    else:
        if len(quote) < HEADER_SIZE + 6:
            raise InputError("a v5 quote body descriptor (6 bytes)", "end of data", offset=HEADER_SIZE)
        body_type, size = struct.unpack_from("<HI", quote, HEADER_SIZE)
        if body_type not in V5_BODY_TYPES:
            raise InputError("quote body type 2 or 3 (TD report 1.0 / 1.5)", str(body_type), offset=HEADER_SIZE)
        if size != V5_BODY_TYPES[body_type]:
            raise InputError(
                f"body size {V5_BODY_TYPES[body_type]} for body type {body_type}", str(size), offset=HEADER_SIZE + 2
            )
        body = HEADER_SIZE + 6
    if body + size > len(quote):
        raise InputError(f"a {size}-byte TD report body", f"{len(quote) - body} bytes (truncated quote)", offset=body)

    def field(off: int, n: int) -> bytes:
        return bytes(quote[body + off : body + off + n])

    return QuoteRegisters(
        version=version,
        body_offset=body,
        td_attributes=field(120, 8),
        xfam=field(128, 8),
        mrtd=field(136, 48),
        mrconfigid=field(184, 48),
        mrowner=field(232, 48),
        mrownerconfig=field(280, 48),
        rtmrs=(field(328, 48), field(376, 48), field(424, 48), field(472, 48)),
        report_data=field(520, 64),
    )
