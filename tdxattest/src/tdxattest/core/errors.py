"""The one exception type for unusable input: which file, where in it, what was expected and what
was found. Pure parsers raise it without a file name (they only see bytes); the thin loaders that
read files attach the name with `with_file`."""

from __future__ import annotations


class InputError(ValueError):
    """Unusable input. `str(err)` is one line: `FILE: offset N: expected X, seen Y`."""

    def __init__(self, expected: str, seen: str, *, offset: int | None = None, file: str | None = None):
        self.expected = expected
        self.seen = seen
        self.offset = offset
        self.file = file
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.file or "<input>"]
        if self.offset is not None:
            parts.append(f"offset {self.offset} (0x{self.offset:x})")
        parts.append(f"expected {self.expected}, seen {self.seen}")
        return ": ".join(parts)

    def with_file(self, file: str) -> InputError:
        """The same error, naming `file` (kept when one is already set)."""
        if self.file:
            return self
        return InputError(self.expected, self.seen, offset=self.offset, file=str(file))


def show_bytes(data: bytes, limit: int = 16) -> str:
    """A short, printable rendering of raw bytes for error messages."""
    if not data:
        return "end of data"
    return "0x" + data[:limit].hex() + ("..." if len(data) > limit else "")
