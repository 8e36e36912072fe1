"""How Label Studio shows a round's images: links it resolves itself, so they never expire.

Never base64 (it makes Label Studio slow), never a URL we sign (a presigned URL dies after at most 7 days,
and a round can wait longer than that for people). Per image URI:

- ``http(s)://``: passed unchanged.
- ``s3://bucket/key``: passed unchanged, and the project gets a Label Studio S3 *source storage* on that
  bucket (never synced: it only lets Label Studio resolve the task's ``s3://`` links). Label Studio turns the
  link into its own ``/tasks/<id>/resolve/?fileuri=...`` URL, and at each view either redirects the browser to
  a URL it presigns then, valid ``presign_ttl_min`` minutes (``presign=True``), or streams the object
  itself (``presign=False``: for a bucket the annotators' browsers cannot reach). The storage's credentials
  (:class:`S3Access`) live in Label Studio's database, write-only through its API, never in a task.
- a local file (no scheme, ``file://``, ``local://``): Label Studio's ``/data/local-files/?d=<path>``, relative
  to ``local_files_root``, the server's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` (with
  ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true``), and the project gets a local-files storage on the
  images' folder (never synced: it grants the project's users the right to see those files).

Any other scheme is refused with the schemes that work.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import fsspec

LOCAL_FILES_URL = "/data/local-files/?d="
S3_SCHEME = "s3"  # the only scheme Label Studio's S3 storage resolves


@dataclass(frozen=True)
class S3Access:
    """How the Label Studio *server* reads the bucket (not how we do: it may sit in another network).

    ``access_key_id`` / ``secret_access_key``: read-only keys for Label Studio; both None leaves it to the
    server's own credentials (its environment or cloud role). ``endpoint``: the S3 endpoint as the server
    reaches it; None is AWS S3, or the server's own ``S3_ENDPOINT`` (Label Studio refuses a private-network
    endpoint sent through its API unless its ``SSRF_PROTECTION_ENABLED`` is false, so an in-cluster S3 is
    set there). ``presign``: redirect browsers to a URL presigned at view time (``presign_ttl_min``
    minutes); False streams the images through Label Studio."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    endpoint: str | None = None
    region: str | None = None
    presign: bool = True
    presign_ttl_min: int = 15

    def __post_init__(self) -> None:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "Label Studio's S3 access needs both label_studio_s3_access_key_id and "
                "label_studio_s3_secret_access_key, or neither (the server's own credentials)"
            )
        if not 1 <= self.presign_ttl_min <= 32767:  # Label Studio stores it as a small positive integer
            raise ValueError(f"label_studio_s3_presign_ttl_min must be in 1..32767 minutes, not {self.presign_ttl_min}")

    def storage_fields(self) -> dict[str, object]:
        """The credential and endpoint fields of Label Studio's S3 storage (only those that are set)."""
        fields: dict[str, object] = {"presign": self.presign, "presign_ttl": self.presign_ttl_min}
        if self.access_key_id is not None:
            fields.update(aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)
        if self.endpoint:
            fields["s3endpoint"] = self.endpoint
        if self.region:
            fields["region_name"] = self.region
        return fields


def local_path(uri: str) -> str | None:
    """The absolute path of a local image URI; None for a remote one."""
    parts = urlsplit(uri)
    if parts.scheme in ("file", "local"):
        return os.path.abspath(fsspec.core.strip_protocol(uri))
    if parts.scheme == "":
        return os.path.abspath(uri)
    return None


def task_image_url(uri: str, local_files_root: str | None) -> str:
    """What a task's ``$image`` holds for ``uri`` (see the module docstring)."""
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https", S3_SCHEME):
        return uri
    local = local_path(uri)
    if local is None:
        raise ValueError(
            f"image {uri}: Label Studio cannot show a {scheme}:// file here; use an s3:// or local store "
            "(or http(s) URLs)"
        )
    if local_files_root is None:
        raise ValueError(
            f"image {uri} is a local file: set the Label Studio backend's local_files_root "
            "to the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, or use an s3:// store"
        )
    rel = os.path.relpath(local, local_files_root)
    if rel in (".", "..") or rel.startswith(".." + os.sep):
        raise ValueError(f"image {local} is outside the Label Studio local files root {local_files_root}")
    return LOCAL_FILES_URL + quote(rel.replace(os.sep, "/"))


def local_storage_dir(uris: Iterable[str], local_files_root: str | None) -> str | None:
    """The folder a local-files storage must grant for these images; None when none is local."""
    dirs = {os.path.dirname(p) for u in uris if (p := local_path(u)) is not None}
    if not dirs:
        return None
    common = os.path.commonpath(sorted(dirs))
    if local_files_root is not None and os.path.abspath(common) == local_files_root:
        raise ValueError(
            f"the images lie directly in the Label Studio local files root {common}; Label Studio "
            "only serves subfolders of it: put the store in a subfolder"
        )
    return common


def s3_prefixes(uris: Iterable[str]) -> dict[str, str]:
    """``{bucket: the folder common to its images' keys}`` for the ``s3://`` images (the storage's prefix:
    Label Studio checks, when the storage is created, that the prefix holds at least one object)."""
    keys: dict[str, list[str]] = {}
    for uri in uris:
        parts = urlsplit(uri)
        if parts.scheme == S3_SCHEME:
            keys.setdefault(parts.netloc, []).append(parts.path.lstrip("/"))
    return {bucket: posixpath.commonpath([posixpath.dirname(k) for k in ks]) for bucket, ks in sorted(keys.items())}
