"""DER by hand, for the TEST PKIs' certificate extensions that cryptography has no builder for (Intel's
SGX extension, the TCG DICE TcbInfo with the FWID)."""

from __future__ import annotations


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([parts[0] * 40 + parts[1]])
    for value in parts[2:]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def integer(value: int) -> bytes:
    # Minimal two's-complement: a leading 0x00 keeps values >= 0x80 positive.
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))
