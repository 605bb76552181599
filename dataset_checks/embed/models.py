"""Embedders: the built-in dlib ResNet face descriptor, and user callables named in rules.yaml.

A plugged embedder is named `package.module:callable` (rules.yaml `embedder:`). It is called
with a batch of images, a `list` of HxWx3 `numpy.uint8` RGB arrays (upright, EXIF applied), and
returns one result per image, either

* a float array of shape (N, D): one face per image (e.g. a model that takes aligned crops), or
* a list of N items, each `None` or an empty (0, D) array (no face), a (D,) vector (one face), or
  a (k, D) array (k faces; the first is used and the image is reported as having several).

Optional attributes on the callable: `model_name` (str; default the callable's spec),
`model_version` (str; default the version of its top-level package), `default_threshold`
(float; used when rules.yaml says `threshold: auto`), `batch_size` (int, default 16).
The callable is imported again in each worker process, so it must be importable by name.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

BUILTIN = "dlib"
# What an embedder is called with (a batch of HxWx3 uint8 RGB images); its result is
# anything split_results takes (see the module doc)
Embedder = Callable[[list[NDArray[np.uint8]]], Any]
DLIB_MODEL_FILES = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")
# Thresholds for `threshold: auto`, measured on LFW (see docs/embeddings.md).
DEFAULT_THRESHOLDS = {BUILTIN: {"raw": 0.95, "centred": 0.75}}
DETECT_MAX_SIDE = 2000  # larger images are detected on a downscaled copy (HOG cost grows with area)
INSTALL_HINT = "install the faces extra: pip install 'dataset-checks[faces]'"


class EmbedderUnavailable(RuntimeError):
    """The configured embedder cannot be loaded (not installed, bad name); the message says why."""


@dataclass(frozen=True)
class EmbedderInfo:
    """What the main process knows about an embedder; the model itself loads in the workers."""

    spec: str  # "dlib" or "package.module:callable"
    name: str  # the vector label: vectors with different names are never compared
    version: str
    default_threshold: float | None = None
    default_threshold_centred: float | None = None
    batch_size: int = 16

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def slug(self) -> str:
        """A folder name for the cache: readable, and unique per model id."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_id)[:60]
        return f"{safe}-{hashlib.sha256(self.model_id.encode()).hexdigest()[:10]}"

    def as_dict(self) -> dict[str, Any]:
        return {"embedder": self.spec, "model": self.name, "version": self.version}


# -- dlib -----------------------------------------------------------------------------------


def dlib_model_dir() -> Path:
    """The `face_recognition_models` model folder, found without importing the package (its
    __init__ needs setuptools' pkg_resources, gone from new Python installs)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailable(f"the dlib embedder needs the face_recognition_models package; {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [f for f in DLIB_MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise EmbedderUnavailable(f"face_recognition_models at {folder} lacks {', '.join(missing)}; reinstall it")
    return folder


def dlib_info() -> EmbedderInfo:
    if importlib.util.find_spec("dlib") is None:
        raise EmbedderUnavailable(f"the dlib embedder needs dlib (the dlib-bin wheel); {INSTALL_HINT}")
    dlib_model_dir()
    try:
        dlib_version = importlib.metadata.version("dlib-bin")
    except importlib.metadata.PackageNotFoundError:
        try:
            dlib_version = importlib.metadata.version("dlib")
        except importlib.metadata.PackageNotFoundError:
            dlib_version = "unknown"
    try:
        models_version = importlib.metadata.version("face_recognition_models")
    except importlib.metadata.PackageNotFoundError:
        models_version = "unknown"
    t = DEFAULT_THRESHOLDS[BUILTIN]
    return EmbedderInfo(
        spec=BUILTIN,
        name=BUILTIN,  # the same model as FACE01's `dlib` vectors, so the two are compared
        version=f"dlib_face_recognition_resnet_model_v1+5pt;dlib {dlib_version};models {models_version}",
        default_threshold=t["raw"],
        default_threshold_centred=t["centred"],
        batch_size=8,
    )


class DlibEmbedder:
    """Frontal HOG detector (no upsampling), 5-point landmarks, ResNet descriptor (128-d).

    With several faces the one nearest the image centre is used (an identity folder shows one
    person; bystanders sit at the edges), as in the shared LFW vectors.
    """

    def __init__(self) -> None:
        import dlib

        folder = dlib_model_dir()
        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(str(folder / DLIB_MODEL_FILES[0]))
        self.net = dlib.face_recognition_model_v1(str(folder / DLIB_MODEL_FILES[1]))
        self._rect = dlib.rectangle

    def _detect(self, image: NDArray[np.uint8]) -> list[Any]:  # dlib rectangles (dlib is untyped)
        h, w = image.shape[:2]
        scale = max(h, w) / DETECT_MAX_SIDE
        if scale <= 1:
            return list(self.detector(image, 0))
        from PIL import Image

        small = np.asarray(Image.fromarray(image).resize((round(w / scale), round(h / scale)),
                                                                 Image.Resampling.BILINEAR))
        return [
            self._rect(int(r.left() * scale), int(r.top() * scale), int(r.right() * scale), int(r.bottom() * scale))
            for r in self.detector(small, 0)
        ]

    def __call__(self, images: list[NDArray[np.uint8]]) -> list[NDArray[np.float32]]:
        out = []
        for image in images:
            faces = self._detect(image)
            if not faces:
                out.append(np.zeros((0, 128), dtype=np.float32))
                continue
            h, w = image.shape[:2]
            cy, cx = h / 2, w / 2
            faces.sort(key=lambda r: ((r.left() + r.right()) / 2 - cx) ** 2 + ((r.top() + r.bottom()) / 2 - cy) ** 2)
            shape = self.shapes(image, faces[0])
            vec = np.asarray(self.net.compute_face_descriptor(image, shape), dtype=np.float32)
            # Only the used face is described (~80 ms each); the rest are counted.
            block = np.zeros((len(faces), 128), dtype=np.float32)
            block[0] = vec
            out.append(block)
        return out


# -- resolving ------------------------------------------------------------------------------


def _import_callable(spec: str) -> Embedder:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise EmbedderUnavailable(f"embedder {spec!r}: expected 'dlib' or 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise EmbedderUnavailable(f"embedder {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise EmbedderUnavailable(f"embedder {spec!r}: {module_name} has no attribute {attr!r}")
    if not callable(obj):
        raise EmbedderUnavailable(f"embedder {spec!r}: {attr} is not callable")
    fn: Embedder = obj
    return fn


def get_embedder(spec: str) -> EmbedderInfo:
    """Check that an embedder can be loaded and describe it; raises `EmbedderUnavailable`."""
    if spec == BUILTIN:
        return dlib_info()
    fn = _import_callable(spec)
    top = spec.split(":")[0].split(".")[0]
    version = getattr(fn, "model_version", None)
    if version is None:
        try:
            version = importlib.metadata.version(top)
        except Exception:
            version = "unversioned"
    threshold = getattr(fn, "default_threshold", None)
    return EmbedderInfo(
        spec=spec,
        name=str(getattr(fn, "model_name", spec)),
        version=str(version),
        default_threshold=float(threshold) if threshold is not None else None,
        default_threshold_centred=None,
        batch_size=int(getattr(fn, "batch_size", 16)),
    )


_LOADED: dict[str, Embedder] = {}


def load_model(spec: str) -> Embedder:
    """The callable itself (the model loaded), once per process."""
    if spec not in _LOADED:
        _LOADED[spec] = DlibEmbedder() if spec == BUILTIN else _import_callable(spec)
    return _LOADED[spec]


def split_results(result: Any, n: int) -> list[tuple[NDArray[np.float32] | None, int]]:
    """An embedder's return value -> per image (vector of the used face or None, faces found)."""
    if isinstance(result, np.ndarray) and result.ndim == 2:
        items = [result[i] for i in range(result.shape[0])]
    else:
        items = list(result)
    if len(items) != n:
        raise ValueError(f"embedder returned {len(items)} results for {n} images")
    out: list[tuple[NDArray[np.float32] | None, int]] = []
    for item in items:
        if item is None:
            out.append((None, 0))
            continue
        arr = np.asarray(item, dtype=np.float32)
        if arr.ndim == 1:
            out.append((arr, 1))
        elif arr.ndim == 2:
            out.append((arr[0] if arr.shape[0] else None, int(arr.shape[0])))
        else:
            raise ValueError(f"embedder returned an array of shape {arr.shape} for one image")
    return out
