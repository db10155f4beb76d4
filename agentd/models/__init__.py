"""Model weights: the manifest, the models directory (ModelStore) and the fetcher.

store = ModelStore()                       # $AGENTD_MODELS_DIR, ./models, /var/lib/agentd/models
onnx = store.file("silero-vad", "silero_vad.onnx")   # raises ModelMissingError (one line)
Fetcher(store).fetch("silero-vad")        # offline first; PyPI wheel or upstream URL
"""

from agentd.models.manifest import (
    FileSpec,
    Manifest,
    ManifestError,
    ModelSpec,
    default_manifest_path,
    load_manifest,
    parse_manifest,
)
from agentd.models.store import (
    FileCheck,
    FileState,
    ModelCheck,
    ModelError,
    ModelMissingError,
    ModelStore,
    default_models_dir,
    sha256_file,
)

__all__ = [
    "FileCheck",
    "FileSpec",
    "FileState",
    "Manifest",
    "ManifestError",
    "ModelCheck",
    "ModelError",
    "ModelMissingError",
    "ModelSpec",
    "ModelStore",
    "default_manifest_path",
    "default_models_dir",
    "load_manifest",
    "parse_manifest",
    "sha256_file",
]
