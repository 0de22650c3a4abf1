"""The tdx-vllm guest agent: runs inside the TD, measures the workload into RTMR3, attests the GPUs,
fetches the pinned model, starts vLLM (or the dev stand-in) and the attested gateway, checks a known
answer through the gateway, and reports one line the host waits for. See docs/guest-agent.md."""

REPORT_PREFIX = "tdx-vllm-agent: "
