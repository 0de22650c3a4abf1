"""The ComponentResources, one per module, each with typed Args: TdxHost (Preflight, BiosSettings,
KernelSettings, GpuConfidentialMode, DcapServices), TrustDomain, KubernetesWorkload. `command` is
their shared host-step plumbing (pulumi_command with the host key pinned)."""
