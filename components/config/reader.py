"""Reading the stack configuration: a walker that records every error instead of raising (so
`pulumi preview` and `python -m components.config` report them all at once), the error types, the
marker for a secret seen still encrypted, and the field checks the parsers share."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from components.catalog.pinfile import CatalogError
from components.config.model import HOST_KEY_TYPES, Secret

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class ConfigError:
    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}; fix: {self.fix}"


class ConfigErrors(Exception):
    def __init__(self, errors: Iterable[ConfigError]):
        self.errors = tuple(errors)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.errors)
        lines = [f"stack configuration has {n} error{'s' if n != 1 else ''}:"]
        lines += [f"  - {e}" for e in self.errors]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Secret markers: how each input source tells us a leaf was encrypted


class _Encrypted:
    """A `{secure: ...}` leaf seen in a stack file before decryption."""

    def __repr__(self) -> str:
        return "<encrypted>"

    def __deepcopy__(self, memo: dict) -> _Encrypted:
        return self


ENCRYPTED = _Encrypted()


# --------------------------------------------------------------------------------------------
# The validator: a small walker that records errors instead of raising


class Reader:
    """Reads one document for one stack; `errors` collects every problem (path, problem, fix)."""

    def __init__(self, stack: str, secret_paths: frozenset[str] | None):
        self.stack = stack
        # None: secret leaves are visible as ENCRYPTED markers (offline mode).
        self.secret_paths = secret_paths
        self.errors: list[ConfigError] = []

    def error(self, path: str, problem: str, fix: str) -> None:
        self.errors.append(ConfigError(path, problem, fix))

    def catalog(self, path: str, read: Callable[[], T], what: str, fix: str) -> T | None:
        """`read()` of a pin file under firmware/, its CatalogError reported at `path` like any other
        config error (so `pulumi up` and `check` list it with the rest, never as a traceback)."""
        try:
            return read()
        except CatalogError as exc:
            self.error(path, f"{what} is unusable: {exc}", fix)
            return None

    # -- structure -----------------------------------------------------------------------

    def obj(self, value: Any, path: str, allowed: Iterable[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping) or is_secure_marker(value):
            self.error(path, f"expected a mapping, got {kind_of(value)}", "write it as `key: value` lines")
            return {}
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(allowed)}"
                self.error(join(path, key), "unknown key", f"remove it or rename it ({hint})")
        return value

    def required(self, m: Mapping[str, Any], key: str, path: str, what: str) -> Any:
        if key not in m or m[key] is None:
            self.error(join(path, key), "required", what)
            return None
        return m[key]

    # -- scalars -------------------------------------------------------------------------

    def string(self, value: Any, path: str, fix: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, _Encrypted) or is_secure_marker(value):
            self.error(path, "is a secret but this key is not secret", "set it with plain `pulumi config set --path`")
            return None
        if not isinstance(value, str) or not value.strip():
            self.error(path, f"expected a non-empty string, got {kind_of(value)}", fix)
            return None
        return value.strip()

    def integer(self, value: Any, path: str, default: int, lo: int, hi: int) -> int:
        if value is None:
            return default
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # `pulumi config set --path` stores numbers as strings
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.error(path, f"expected an integer in {lo}..{hi}, got {value!r}", f"set a number between {lo} and {hi}")
            return default
        return value

    def boolean(self, value: Any, path: str, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {value!r}", "write `true` or `false`")
            return default
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        if value is None:
            return default
        if value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            self.error(path, f"`{value}` is not one of {', '.join(choices)}", f"use one of {', '.join(choices)}{hint}")
            return None
        return str(value)

    def url(self, value: str, path: str, schemes: tuple[str, ...], fix: str, credentials_fix: str) -> None:
        """Record why `value` is not a usable URL (`url_problem`), with `credentials_fix` when it
        carries credentials: every URL field names the secret field or the way that replaces them."""
        problem = url_problem(value, schemes)
        if problem is not None:
            self.error(path, problem, credentials_fix if problem == URL_CREDENTIALS else fix)

    def pccs_url(self, value: Any, path: str, credentials_fix: str) -> str | None:
        """A PCCS (or Intel PCS) base URL: https, no credentials, no query."""
        url = self.string(value, path, "set `https://PCCS:8081/sgx/certification/v4/`")
        if url is not None:
            self.url(url, path, ("https",), "use `https://PCCS-HOST:8081/sgx/certification/v4/`", credentials_fix)
        return url

    def secret(self, value: Any, path: str, how: str) -> Secret | None:
        """A leaf that must arrive encrypted. `how` is the `pulumi config set` hint."""
        if value is None:
            return None
        set_hint = f"`pulumi config set --secret --path '{path}' ...`{how}"
        if self.secret_paths is None:
            if isinstance(value, _Encrypted) or is_secure_marker(value):
                return Secret("<encrypted>")
            self.error(path, "given in plain text; secrets must be Pulumi secrets", f"remove it and run {set_hint}")
            return None
        if path not in self.secret_paths:
            self.error(path, "given in plain text; secrets must be Pulumi secrets", f"remove it and run {set_hint}")
            return None
        if not isinstance(value, str) or not value:
            self.error(path, f"expected a non-empty secret string, got {kind_of(value)}", f"run {set_hint}")
            return None
        return Secret(value)


def is_secure_marker(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"secure"}


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def kind_of(value: Any) -> str:
    if is_secure_marker(value) or isinstance(value, _Encrypted):
        return "a secret"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "a number",
        bool: "a boolean",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------
# Field checks (pure)

# re.ASCII: with IGNORECASE alone Python folds some non-ASCII letters onto ASCII ones, so the
# Kelvin sign `K` matched [a-z] and a look-alike host name passed.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.I | re.A
)
# An IPv6 zone (`fe80::1%eth0`) names a network interface; ipaddress takes any text there.
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def is_valid_address(value: str) -> bool:
    """An IPv4 or IPv6 address (a zone only as an interface name), or an ASCII DNS name."""
    if not value.isascii():
        return False
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(value)) and not re.fullmatch(r"[0-9.]+", value)
    zone = getattr(parsed, "scope_id", None)
    return zone is None or bool(_ZONE.fullmatch(zone))


# A POSIX login name (useradd's NAME_REGEX without the trailing `$` of machine accounts): it is
# used in SSH sessions and named in messages, never interpreted, and nothing else is a user.
SSH_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def known_hosts_key(value: str) -> str:
    """`value` without a leading known_hosts host field: `ssh-keyscan` prints `HOST TYPE BASE64`, and
    pasting that line as is should just work."""
    parts = value.split()
    if len(parts) >= 3 and parts[0] not in HOST_KEY_TYPES and parts[1] in HOST_KEY_TYPES:
        return " ".join(parts[1:])
    return value


def host_key_problem(value: str) -> str | None:
    """Why `value` is not an authorized_keys-style public key, or None."""
    import base64
    import struct

    parts = value.split()
    if len(parts) < 2:
        return "expected `<type> <base64>` as in known_hosts (without the host name)"
    kind, blob = parts[0], parts[1]
    if kind not in HOST_KEY_TYPES:
        return f"unknown key type `{kind}` (expected one of {', '.join(HOST_KEY_TYPES)})"
    try:
        raw = base64.b64decode(blob, validate=True)
        (n,) = struct.unpack(">I", raw[:4])
        inner = raw[4 : 4 + n].decode()
    except Exception:
        return "the key data is not valid base64 SSH wire format"
    if inner != kind:
        return f"the key data says `{inner}` but the type says `{kind}`"
    return None


def normalise_fingerprint(value: str) -> str:
    return value.replace(":", "").strip().lower()


def url_problem(value: str, schemes: tuple[str, ...]) -> str | None:
    """Why `value` is not a usable URL of one of `schemes`, or None. Credentials in it are a problem
    of their own (`url_credentials`): the callers name the secret field that replaces them."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in schemes:
        return f"scheme must be {' or '.join(schemes)}, got `{parts.scheme or 'none'}`"
    if "@" in parts.netloc:
        return URL_CREDENTIALS
    if not parts.hostname or not is_valid_address(parts.hostname):
        return f"`{parts.hostname or ''}` is not a valid host name or IP address"
    if port is not None and not 0 < port < 65536:
        return f"port {port} out of range"
    if parts.query or parts.fragment:
        # Every URL field here is a base that the program appends paths to (or a fixed service URL);
        # a query is either broken by that or a token, and a token here is plain config.
        return (
            "has a query or fragment (`?...`, `#...`): a base URL takes neither, and a token there would be "
            "plain config"
        )
    return None


# A URL is plain config: it is stored unencrypted in the stack file, shown by `preview`, and reaches
# outputs, facts, the hosts' command lines and the TD's config, which the host can read.
URL_CREDENTIALS = (
    "carries credentials (`user@` or `user:password@`), and a URL is plain config: it would show in the "
    "stack file, the outputs and state, on the host's command lines and in the TD's config"
)
