"""Labelled real and fake people read from a folder in the Human-Art layout (local path or fsspec URL)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import fsspec

# Human-Art (Ju et al., CVPR 2023) keeps natural and artificial people in separate trees:
# images/real_human/<scenario>/ (acrobatics, cosplay, dance, drama, movie) and
# images/2D_virtual_human/<scenario>/ (cartoon, oil_painting, sketch, ...) and
# images/3D_virtual_human/<scenario>/ (garage_kits, relief, sculpture). Label 1 = fake person.
HUMANART_GROUPS = {"real_human": 0, "2D_virtual_human": 1, "3D_virtual_human": 1}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class LabelledImage:
    path: str  # as the folder's filesystem names it
    group: str  # a HUMANART_GROUPS key
    scenario: str
    label: int  # 1 = fake person

    @property
    def stratum(self) -> str:
        return f"{self.group}/{self.scenario}"


class HumanArtFolder:
    """Labelled real / fake people in the Human-Art layout, at a local path or any fsspec URL.

    ``url`` is the dataset root (holding ``images/``) or the ``images`` folder itself. Every image file
    under ``<group>/<scenario>/`` (any depth below the scenario) is one example; files directly under a
    group, hidden files and other suffixes are ignored; a group that is absent is simply empty (the
    synthetic default has no 3D people). Annotation JSONs are not needed: the tree is the label.
    """

    def __init__(self, url: str, **storage_options) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        root = root.rstrip("/")
        self.root = posixpath.join(root, "images") if self.fs.isdir(posixpath.join(root, "images")) else root

    def entries(self) -> list[LabelledImage]:
        found: list[LabelledImage] = []
        for group, label in HUMANART_GROUPS.items():
            base = posixpath.join(self.root, group)
            if not self.fs.isdir(base):
                continue
            for path in sorted(self.fs.find(base)):
                parts = path[len(base) :].strip("/").split("/")
                if (
                    len(parts) < 2
                    or any(p.startswith(".") for p in parts)
                    or not parts[-1].lower().endswith(IMAGE_SUFFIXES)
                ):
                    continue
                found.append(LabelledImage(path, group, parts[0], label))
        if not found:
            raise FileNotFoundError(
                f"no images in the Human-Art layout under {self.url!r}: expected images/real_human/<scenario>/*, "
                f"images/2D_virtual_human/<scenario>/* and/or images/3D_virtual_human/<scenario>/*"
            )
        return found

    def read_bytes(self, entry: LabelledImage) -> bytes:
        return self.fs.cat_file(entry.path)
