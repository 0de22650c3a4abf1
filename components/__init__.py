"""Pulumi components that take a TDX GPU host from "reachable over SSH" to "ready for a Trust Domain"."""
