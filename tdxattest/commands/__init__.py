"""CLI verbs: one module per verb, each exposing `register(subparsers)` (see `tdxattest.cli`)."""
