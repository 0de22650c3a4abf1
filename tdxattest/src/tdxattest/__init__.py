"""tdxattest: Intel TDX attestation for the clients of a confidential vLLM endpoint and for the
Trust Domain that serves it. Never imports Pulumi.

    core/      pure parsers and computations (quotes, measurements, policy, the `pins` contract)
    dcap/      DCAP collateral and quote verification (dcap-qvl), the Appraiser
    channel/   the attested channel: the gateway in the TD, the verifying proxy on the client
    testing/   test doubles (TEST PKI, stand-in vLLM)
    cli/       the `tdxattest` command (also `python -m tdxattest <verb>`)
"""
