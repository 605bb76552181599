"""Small inline JPEG thumbnails of the faces behind a finding, for report.html.

Images sit next to the embeddings: FACE01 keeps them in the identity folder under the names in
`name`, or in one of its subfolders (same_face/, noFace/, multipleFaces/: its duplicate finder
moves photos there without updating the file). A face whose image is missing, unreadable or
outside its folder has no thumbnail (the report shows its name instead). Images are only read,
never written.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from .discover import FACE01_SIDE_ORDER

THUMB_PX = 96  # longest side; the report shows them at this size
QUALITY = 70


class Thumbnails:
    def __init__(self, root: Path, size: int = THUMB_PX, quality: int = QUALITY):
        self.root = Path(root)
        self.size = size
        self.quality = quality
        self._cache: dict[tuple[str, str], str | None] = {}
        self.made = 0
        self.bytes = 0

    def data_uri(self, identity: str, file: str) -> str | None:
        key = (identity, file)
        if key not in self._cache:
            self._cache[key] = self._make(identity, file)
        return self._cache[key]

    def _path(self, identity: str, file: str) -> Path | None:
        folder = self.root / identity
        try:
            base = folder.resolve()
        except (OSError, RuntimeError):
            return None
        for path in [folder / file] + [folder / side / file for side in FACE01_SIDE_ORDER]:
            try:
                resolved = path.resolve()
                if base in resolved.parents and resolved.is_file():
                    return resolved
            except (OSError, RuntimeError):
                continue
        return None

    def _make(self, identity: str, file: str) -> str | None:
        path = self._path(identity, file)
        if path is None:
            return None
        try:
            from PIL import Image

            with Image.open(path) as im:
                im.draft("RGB", (self.size, self.size))  # JPEG: decode at reduced scale
                im = im.convert("RGB")
                im.thumbnail((self.size, self.size))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=self.quality, optimize=True)
        except Exception:  # not an image, truncated, unsupported: show the name instead
            return None
        data = buf.getvalue()
        self.made += 1
        self.bytes += len(data)
        return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
