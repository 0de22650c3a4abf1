"""Commands that read a deployed stack from outside a Pulumi run (I/O: the Pulumi CLI, SSH). What
they conclude is computed in components/render/status.py."""
