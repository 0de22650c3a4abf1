"""The stack configuration: `Pulumi.<stack>.yaml` read once, validated completely (every error at
once, each naming the key, the problem and the fix), into the frozen dataclasses of `model`.

    model       the dataclasses (no parsing)
    reader      the error-collecting walker, the error types, shared field checks
    stack       parse_stack, load_stack_file (offline), load_from_pulumi (at `pulumi up`), the CLI
    workload    the `workload:` block
    kubernetes  the `workload.kubernetes` block

`python -m components.config stacks/Pulumi.<stack>.yaml` checks a stack file offline.
"""
