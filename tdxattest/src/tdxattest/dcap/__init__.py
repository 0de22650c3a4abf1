"""Intel DCAP: collateral (the model, fetching it from a PCCS or PCS, the verified on-disk cache),
quote verification with dcap-qvl, and the `Appraiser` that takes a quote to a verdict."""
