"""aiohttp request-storage keys. aiohttp wants them made at a module's top level; this module is
imported only where the proxy serves, so `tdxattest` commands that serve nothing never load aiohttp."""

from aiohttp import web

# The proxy's handler wrote this request's audit line (channel/proxy.py, VerifyingProxy.audit_rejected).
AUDITED = web.RequestKey("audited", bool)
