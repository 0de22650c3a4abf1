"""The tdx-vllm Pulumi program's code, by layer (docs/architecture.md):

resources/  ComponentResources, one per module, each with typed Args
render/     pure renderers: host step scripts and values, the TD definition, Kubernetes objects, `pins`
config/     the stack configuration, parsed once into frozen dataclasses
catalog/    the one reader of firmware/ (pins of the TD boot image, GPUs, DCAP, TDX module, BIOS tables)
bmc/        the Redfish client that applies BIOS settings (run by a local command)
scripts/    what runs on a host: one shell script per step
"""
