"""tdxattest: attestation library and CLI for Intel TDX Trust Domains.

Offline measurement computation (MRTD, RTMR0-3 from pinned boot artifacts), TCG2/CCEL event-log
replay and, later, quote verification. The library is plain Python (stdlib only for the measurement
code) and never imports Pulumi; `components/` imports it, never the reverse.

Run the CLI with `python -m tdxattest <verb>`.
"""
