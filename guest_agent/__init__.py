"""The tdx-vllm guest agent: runs inside the TD, measures the workload into RTMR3, attests the GPUs,
fetches the pinned model, starts vLLM (or the dev stand-in) and the attested gateway, checks a known
answer through the gateway, and reports one line the host waits for. See docs/guest-agent.md."""

# The host <-> agent protocol; the Pulumi side (components/render/td_definition.py, the TrustDomain's
# wait step, the TD boot manifest per stack) takes these from here.
REPORT_PREFIX = "tdx-vllm-agent: "  # the report line on the serial console
CONFIG_FW_CFG = "opt/tdx-vllm/agent.json"  # the fw_cfg file the host hands the config in
# The stack whose TDs may run without TDX (software quotes) and serve the stand-in model server; the
# host says which stack it is in the agent config, and the image's own stack wins (docs/guest-agent.md).
DEV_STACK = "dev"
