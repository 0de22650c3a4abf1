"""Probes from the machine running Pulumi to a host, outside the steps (an SSH handshake before
the first step). Needs nothing of the other layers."""
