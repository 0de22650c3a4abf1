"""Fixtures shared across test directories."""

pytest_plugins = ["tests.support.nvml_standin"]  # standin_lib, nvml_gpu: the stand-in libnvidia-ml.so.1
