"""The tdx-vllm policy pack (CrossGuard). `PolicyPack(...)` serves the pack and blocks: the rules
live in policy/validators.py and are tested there (tests/policy/test_policy_validators.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pulumi_policy import EnforcementLevel, PolicyPack
from validators import policies

PolicyPack(name="tdx-vllm", enforcement_level=EnforcementLevel.MANDATORY, policies=policies())
