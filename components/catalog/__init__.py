"""The catalog: the one reader of firmware/ (or `$TDX_VLLM_FIRMWARE_DIR`). TD boot manifests, GPU
SKUs, gpu-admin-tools, DCAP packages, TDX module releases and BIOS vendor tables become frozen
dataclasses here; every problem is a `CatalogError` that names the file and the key."""
