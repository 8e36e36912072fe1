"""Reading CosmicMan-HQ training shards (WebDataset tar files) into training tensors.

A shard is a tar file addressed by any fsspec URL (local path, ``file://``, ``s3://``, ...). Members are
grouped into samples the WebDataset way: key = member path up to the first dot of its basename, the rest
is the field name. Fields of one sample:

- ``jpg`` or ``png`` (also ``jpeg`` / ``webp``): the image bytes;
- ``mask.png``: uint8 ATR label map (0 background .. 17), the image's size;
- ``json``: ``{"sha256", "caption", "groups": [{"name", "text", "labels": [int], "foreground": bool,
  "span": [s, e] | null}], "attributes": {...}}``. Spans index the tokenizer's padded ids (BOS at 0,
  77 long) and are end-exclusive.

Per sample this yields
- ``pixel_values``: (3, R, R) float in [-1, 1]: shorter side resized to R (bicubic), centre crop;
- ``input_ids``: (77,) long, the caption tokenized with padding to 77 (truncated);
- ``group_masks``: (G, h, w) float: each group's mask (union of its labels; ``foreground`` = every label
  != 0) after the same resize/crop as the image (label map resized with NEAREST), then brought to
  ``mask_size`` (the HOLA map size) by ``"area"`` (one-hot, then area-average: cell coverage) or
  ``"nearest"``; ``mask_size=None`` keeps R x R;
- ``spans``: (G, 2) long, (-1, -1) for a group without a usable span;
- ``key``: the sample key (image sha256).

A span is usable if 1 <= s < e <= 77 and -- when ``verify_spans`` and the group has ``text`` -- the
group's text tokenized without BOS/EOS equals ``input_ids[s:e]``; otherwise the group keeps its mask but
gets no span (no HOLA), counted in ``stats["span_rejected"]``. Undecodable samples are skipped and
counted in ``stats["skipped"]``.
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
import random
import tarfile
from collections import Counter
from typing import Any, Iterable, Iterator

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)

N_ATR_LABELS = 18
IMAGE_FIELDS = ("jpg", "png", "jpeg", "webp")
MAX_TEXT_TOKENS = 77


def expand_shard_urls(urls: Iterable[str]) -> list[str]:
    """Brace-expand (``shard-{000..009}.tar``) and glob (``*``) shard URLs; a directory lists its *.tar."""
    from braceexpand import braceexpand

    out: list[str] = []
    for url in urls:
        for u in braceexpand(url):
            fs, path = fsspec.core.url_to_fs(u)
            proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            prefix = "" if proto in ("file", "local") else f"{proto}://"
            if any(c in path for c in "*?["):
                out.extend(prefix + p for p in sorted(fs.glob(path)))
            elif fs.isdir(path):
                out.extend(prefix + p for p in sorted(fs.glob(posixpath.join(path, "*.tar"))))
            else:
                out.append(u)
    if not out:
        raise FileNotFoundError(f"no shards found for {list(urls)}")
    return out


def iter_tar_samples(url: str) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__``, ``__url__`` and field -> bytes) of one tar shard, streamed."""
    with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        current: dict[str, Any] | None = None
        for member in tar:
            if not member.isfile():
                continue
            dirname, base = posixpath.split(member.name)
            if "." not in base:
                continue
            stem, field = base.split(".", 1)
            key = posixpath.join(dirname, stem) if dirname else stem
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            current[field.lower()] = data
        if current is not None:
            yield current


def _resize_crop(img: Image.Image, size: int, resample: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), resample=resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def group_label_masks(label_map: torch.Tensor, groups: list[dict], mask_size: tuple[int, int] | None,
                      mode: str = "area") -> torch.Tensor:
    """(H, W) long label map -> (G, h, w) float group masks (see module doc)."""
    sel = torch.zeros(len(groups), N_ATR_LABELS)
    for g, grp in enumerate(groups):
        if grp.get("foreground"):
            sel[g, 1:] = 1
        else:
            for lab in grp.get("labels") or []:
                if not 0 <= int(lab) < N_ATR_LABELS:
                    raise ValueError(f"label {lab} outside 0..{N_ATR_LABELS - 1}")
                sel[g, int(lab)] = 1
    if mask_size is None or tuple(mask_size) == tuple(label_map.shape):
        onehot = F.one_hot(label_map.clamp(0, N_ATR_LABELS - 1), N_ATR_LABELS).permute(2, 0, 1).float()
    elif mode == "area":
        onehot = F.one_hot(label_map.clamp(0, N_ATR_LABELS - 1), N_ATR_LABELS).permute(2, 0, 1).float()
        onehot = F.interpolate(onehot[None], size=tuple(mask_size), mode="area")[0]
    elif mode == "nearest":
        small = F.interpolate(label_map[None, None].float(), size=tuple(mask_size), mode="nearest-exact")
        onehot = F.one_hot(small[0, 0].long(), N_ATR_LABELS).permute(2, 0, 1).float()
    else:
        raise ValueError(f"mask resize mode must be 'area' or 'nearest', got {mode!r}")
    # labels are disjoint, so the union's coverage is the sum of the selected labels' coverage
    return torch.einsum("gl,lhw->ghw", sel, onehot).clamp(0, 1)


class ShardDataset(torch.utils.data.IterableDataset):
    """Samples of WebDataset shards as training tensors (see module doc).

    ``repeat=True`` cycles forever (epoch e shuffles the shard order with ``seed + e``); a shuffle buffer
    of ``shuffle_buffer`` samples mixes within and across shards (0 = file order)."""

    def __init__(self, urls: Iterable[str], tokenizer, resolution: int,
                 mask_size: tuple[int, int] | None = None, mask_resize: str = "area",
                 seed: int = 0, shuffle_buffer: int = 0, repeat: bool = False,
                 verify_spans: bool = True) -> None:
        self.urls = expand_shard_urls(urls)
        self.tokenizer = tokenizer
        self.resolution = int(resolution)
        self.mask_size = tuple(mask_size) if mask_size is not None else None
        self.mask_resize = mask_resize
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.repeat = repeat
        self.verify_spans = verify_spans
        self.stats: Counter = Counter(samples=0, skipped=0, span_rejected=0, epochs=0)
        self._span_cache: dict[str, list[int]] = {}

    # -- decoding -----------------------------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        if text not in self._span_cache:
            self._span_cache[text] = self.tokenizer(text, add_special_tokens=False).input_ids
        return self._span_cache[text]

    def decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        img_field = next((f for f in IMAGE_FIELDS if f in raw), None)
        if img_field is None or "mask.png" not in raw or "json" not in raw:
            raise ValueError(f"sample {raw.get('__key__')} lacks image / mask.png / json")
        meta = json.loads(raw["json"])
        with Image.open(io.BytesIO(raw[img_field])) as im:
            image = im.convert("RGB")
        with Image.open(io.BytesIO(raw["mask.png"])) as im:
            if im.mode not in ("L", "P"):
                raise ValueError(f"mask of {raw['__key__']} has mode {im.mode}, expected L or P")
            labels = Image.fromarray(np.asarray(im, dtype=np.uint8))  # palette index = label
        if image.size != labels.size:
            raise ValueError(f"image {image.size} and mask {labels.size} of {raw['__key__']} differ in size")
        R = self.resolution
        image = _resize_crop(image, R, Image.BICUBIC)
        labels = _resize_crop(labels, R, Image.NEAREST)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        label_map = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        if int(label_map.max()) >= N_ATR_LABELS:
            raise ValueError(f"mask of {raw['__key__']} has label {int(label_map.max())} > {N_ATR_LABELS - 1}")

        ids = self.tokenizer(meta.get("caption", ""), padding="max_length", max_length=MAX_TEXT_TOKENS,
                             truncation=True, return_tensors="pt").input_ids[0]
        groups = meta.get("groups") or []
        spans = torch.full((len(groups), 2), -1, dtype=torch.long)
        for g, grp in enumerate(groups):
            span = grp.get("span")
            if span is None:
                continue
            s, e = int(span[0]), int(span[1])
            ok = 1 <= s < e <= MAX_TEXT_TOKENS
            if ok and self.verify_spans and grp.get("text"):
                ok = self._text_ids(grp["text"]) == ids[s:e].tolist()
            if ok:
                spans[g] = torch.tensor([s, e])
            else:
                self.stats["span_rejected"] += 1
        masks = group_label_masks(label_map, groups, self.mask_size, self.mask_resize)
        return {"key": raw["__key__"], "pixel_values": pixels, "input_ids": ids,
                "group_masks": masks, "spans": spans}

    # -- iteration ------------------------------------------------------------------------------------
    def _samples(self) -> Iterator[dict[str, Any]]:
        epoch = 0
        while True:
            urls = list(self.urls)
            if self.shuffle_buffer:
                random.Random(self.seed + epoch).shuffle(urls)
            for url in urls:
                for raw in iter_tar_samples(url):
                    try:
                        yield self.decode(raw)
                        self.stats["samples"] += 1
                    except Exception as exc:  # one bad sample must not end a long run
                        self.stats["skipped"] += 1
                        log.warning("skipping sample %s of %s: %s", raw.get("__key__"), url, exc)
            epoch += 1
            self.stats["epochs"] = epoch
            if not self.repeat:
                return
            if self.stats["samples"] == 0:
                raise RuntimeError(f"no decodable samples in {self.urls}")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = self._samples()
        if not self.shuffle_buffer:
            yield from it
            return
        rng = random.Random(self.seed)
        buf: list[dict[str, Any]] = []
        for sample in it:
            buf.append(sample)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        while buf:
            yield buf.pop(rng.randrange(len(buf)))


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples; groups padded to the batch's largest count with empty masks and (-1, -1) spans."""
    G = max(1, max(s["group_masks"].shape[0] for s in samples))
    hw = samples[0]["group_masks"].shape[-2:] if samples[0]["group_masks"].ndim == 3 else None
    masks, spans = [], []
    for s in samples:
        m, sp = s["group_masks"], s["spans"]
        if m.shape[0] == 0:
            m = torch.zeros(0, *(hw or s["pixel_values"].shape[-2:]))
        pad = G - m.shape[0]
        masks.append(torch.cat([m, m.new_zeros(pad, *m.shape[1:])]) if pad else m)
        spans.append(torch.cat([sp, sp.new_full((pad, 2), -1)]) if pad else sp)
    return {
        "keys": [s["key"] for s in samples],
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "input_ids": torch.stack([s["input_ids"] for s in samples]),
        "group_masks": torch.stack(masks),
        "spans": torch.stack(spans),
    }


def batches(dataset: ShardDataset, batch_size: int) -> Iterator[dict[str, Any]]:
    """Fixed-size batches from a (repeating) dataset; a final short batch is dropped."""
    buf: list[dict[str, Any]] = []
    for sample in dataset:
        buf.append(sample)
        if len(buf) == batch_size:
            yield collate(buf)
            buf = []
