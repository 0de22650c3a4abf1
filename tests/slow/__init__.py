"""Slow tier: builds and boots real artifacts (the TD guest image under QEMU). `pytest -m slow`."""
