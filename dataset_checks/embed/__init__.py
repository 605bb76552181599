"""From images to embeddings: decode (Pillow), embed (dlib or a plugged model), cache, refresh.

Heavy libraries (dlib, Pillow) are imported only when images are actually embedded.
"""

from .cache import DEFAULT_CACHE, Cache, Entry
from .folders import FaceReport, ImageOutcome, Prepared, prepare
from .images import IMAGE_EXTENSIONS, decode, has_images, list_images
from .models import (
    BUILTIN,
    DEFAULT_THRESHOLDS,
    EmbedderInfo,
    EmbedderUnavailable,
    get_embedder,
    load_model,
)
from .pool import EmbedStats, embed_images

__all__ = [
    "BUILTIN", "DEFAULT_CACHE", "DEFAULT_THRESHOLDS", "IMAGE_EXTENSIONS", "Cache", "EmbedStats", "EmbedderInfo",
    "EmbedderUnavailable", "Entry", "FaceReport", "ImageOutcome", "Prepared", "decode", "embed_images",
    "get_embedder", "has_images", "list_images", "load_model", "prepare",
]
