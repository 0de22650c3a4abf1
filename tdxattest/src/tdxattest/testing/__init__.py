"""Test doubles: a TEST PKI that signs software quotes the verifier accepts only when told to trust
its root, and a stand-in vLLM. For tests and the dev stack; never in a production TD image."""
