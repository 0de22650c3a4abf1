"""Model fetch: every file the manifest lists, hashed while it streams, kept only when it matches
(the rule and its reasons: guest_agent/pod/model_fetch.py, which the Kubernetes target runs in its pod)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tdxattest.core.workload import WorkloadManifest

from .pod import model_fetch
from .pod.model_fetch import FetchError
from .system import Refused


@dataclass(frozen=True)
class ModelResult:
    dir: Path
    fetched: tuple[str, ...]
    kept: tuple[str, ...]


def fetch_model(manifest: WorkloadManifest, source: str, model_dir: Path) -> ModelResult:
    try:
        fetched, kept = model_fetch.fetch_files(
            dict(manifest.model_files), source, manifest.model_id, manifest.model_revision, model_dir
        )
    except FetchError as exc:
        raise Refused("model", str(exc)) from None
    return ModelResult(model_dir, tuple(fetched), tuple(kept))
