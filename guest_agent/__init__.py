"""The tdx-vllm guest agent: runs inside the TD, measures the workload into RTMR3, attests the GPUs,
fetches the pinned model, starts vLLM (or the dev stand-in) and the attested gateway, checks a known
answer through the gateway, and reports one line the host waits for. See docs/guest-agent.md."""

# The two ends of the host <-> agent protocol; components/td_definition.py and the TrustDomain's
# wait step take them from here.
REPORT_PREFIX = "tdx-vllm-agent: "  # the report line on the serial console
CONFIG_FW_CFG = "opt/tdx-vllm/agent.json"  # the fw_cfg file the host hands the config in
