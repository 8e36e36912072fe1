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
- ``pixel_values``: (3, R, R) float in [-1, 1]: shorter side resized to R (bicubic), centre crop
  (``cosmicman.model.buckets`` keeps aspect ratios instead);
- ``input_ids``: (77,) long, the caption tokenized with padding to 77 (truncated);
- ``group_masks``: (G, h, w) float: each group's mask (union of its labels; ``foreground`` = every label
  != 0) after the same resize/crop as the image (label map resized with NEAREST), then brought to
  ``mask_size`` (the HOLA map size) by ``"area"`` (one-hot, then area-average: cell coverage) or
  ``"nearest"``; ``mask_size=None`` keeps R x R;
- ``spans``: (G, 2) long, (-1, -1) for a group without a usable span;
- ``key``: the sample key (image sha256); ``group_names``: the groups' names (for reports);
- ``bucket``: the (h, w) it was cropped to; ``original_size`` / ``crop_top_left``: SDXL's size ids;
- ``pos``: its position in the stream: the k-th raw sample a rank reads (after the shuffle buffer,
  undecodable ones included) is at ``k * world_size + rank`` -- unique across ranks, rising within one,
  what resume counts in and per-sample draws are seeded by.

Ranks split the stream by whole shards: the endless shard sequence (epoch e = the URL list, shuffled with
``seed + e`` when there is a shuffle buffer, else in file order) is numbered 0, 1, 2, ... across epochs and
rank r reads the units u with ``u % world_size == r``, so each shard is read by one rank per epoch and the
ranks' shard counts differ by at most one (the remainder rotates across epochs). One rank is today's
single reader.

Shards are shared by dataset versions, so a shard may hold samples its version no longer has (removed,
not compacted away yet): those named in ``excluded_samples`` (sample keys, the image sha256) are dropped as
their unit is read, before the shuffle buffer -- they take no stream position and never reach a batch,
and a stream with the same exclusions is the same stream (exact resume holds). Counted in
``stats["excluded"]``.

With a ``SampleDraw`` (``cosmicman.model.sample_draw``; the trainer's data path) a sample whose JSON holds
``caption_source`` is flipped (image and label map together, before the crop) with the draw's
probability and gets a freshly drawn caption (groups, spans) instead of the stored one; ``flipped`` says
which. A sample without ``caption_source`` (a dataset version written before it) keeps its stored
caption and is never flipped (its frozen text cannot be mirrored): counted in
``stats["frozen_captions"]``.

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
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cosmicman.core.masks import N_ATR_LABELS
from cosmicman.model.sample_draw import SampleDraw, mirror_label_map

log = logging.getLogger(__name__)

# every extension a pool image may be stored under (cosmicman.core.imageio.FORMAT_EXTENSIONS), and "jpeg"
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "avif")
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


def cover_crop(img: Image.Image, size_hw: tuple[int, int], resample: int) -> tuple[Image.Image, tuple[int, int]]:
    """Resize ``img`` (keeping its aspect) to just cover (h, w) = ``size_hw``, centre-crop to it; also the
    crop's (top, left) in resized pixels (SDXL's crop conditioning)."""
    bh, bw = size_hw
    w, h = img.size
    scale = max(bh / h, bw / w)
    nw, nh = max(bw, round(w * scale)), max(bh, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=resample)
    left, top = (nw - bw) // 2, (nh - bh) // 2
    return img.crop((left, top, left + bw, top + bh)), (top, left)


def group_label_masks(
    label_map: torch.Tensor, groups: list[dict], mask_size: tuple[int, int] | None, mode: str = "area"
) -> torch.Tensor:
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
    of ``shuffle_buffer`` samples mixes within and across shards (0 = file order). The buffer holds *raw*
    samples (bytes), and decoding happens after it, so:

    - ``rank`` / ``world_size`` split the shards (see module doc): a rank opens only its own units, and
      its shuffle buffer mixes only their samples (with rank 0's generator that of a single reader);
    - every sample has a stream position ``pos`` (``k * world_size + rank`` for the rank's k-th raw
      sample; 0, 1, ... on one rank; identical for every reader with the same seed, rank and world size),
      carried in the decoded sample;
    - resuming skips without decoding: positions below ``start`` and those in ``exclude`` are dropped raw;
    - samples whose key is in ``excluded_samples`` (not in the dataset version) are dropped before anything
      else sees them.

    Subclasses change where units come from (``read_unit``) and how a raw sample becomes tensors
    (``decode``); the order logic stays here."""

    def __init__(
        self,
        urls: Iterable[str],
        tokenizer,
        resolution: int,
        mask_size: tuple[int, int] | None = None,
        mask_resize: str = "area",
        seed: int = 0,
        shuffle_buffer: int = 0,
        repeat: bool = False,
        verify_spans: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        exclude: Iterable[int] = (),
        draw: SampleDraw | None = None,
        excluded_samples: Iterable[str] = (),
    ) -> None:
        self.urls = expand_shard_urls(urls)
        self.tokenizer = tokenizer
        self.resolution = int(resolution)
        self.mask_size = (int(mask_size[0]), int(mask_size[1])) if mask_size is not None else None
        self.mask_resize = mask_resize
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.repeat = repeat
        self.verify_spans = verify_spans
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self.start = int(start)
        self.exclude = frozenset(int(p) for p in exclude)
        self.draw = draw
        self.excluded_samples = frozenset(excluded_samples)
        #: the position this rank's next raw sample gets (undecodable ones count too)
        self.position = rank
        #: raw samples in this rank's last complete round (as many of its units as there are shards)
        self._round_len = 0
        self.stats: Counter = Counter(samples=0, skipped=0, span_rejected=0, excluded=0, epochs=0)
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
        source = meta.get("caption_source")
        draw = self.draw if source is not None else None
        if self.draw is not None and source is None:
            self.stats["frozen_captions"] += 1
        if draw is not None and "__pos__" not in raw:
            raise ValueError(f"sample {raw.get('__key__')}: a per-sample draw needs its stream position")
        rng = draw.rng(raw["__pos__"]) if draw is not None else None
        flipped = draw is not None and rng is not None and draw.flips(rng)
        if flipped:  # before the crop, so the crop offset SDXL is conditioned on is the flipped image's
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            labels = Image.fromarray(mirror_label_map(np.asarray(labels)))
            self.stats["flipped"] += 1
        original_hw = (image.size[1], image.size[0])
        target = self.target_hw(*image.size)
        image, crop_top_left = cover_crop(image, target, Image.Resampling.BICUBIC)
        labels, _ = cover_crop(labels, target, Image.Resampling.NEAREST)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        label_map = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        if int(label_map.max()) >= N_ATR_LABELS:
            raise ValueError(f"mask of {raw['__key__']} has label {int(label_map.max())} > {N_ATR_LABELS - 1}")

        if draw is not None and rng is not None:
            caption = draw.caption(source, self.tokenizer, rng, mirrored=flipped)
            text, groups = caption.text, [g.to_json() for g in caption.groups]
            self.stats["drawn_captions"] += 1
        else:
            text, groups = meta.get("caption", ""), meta.get("groups") or []
        ids = self.tokenizer(
            text,
            padding="max_length",
            max_length=MAX_TEXT_TOKENS,
            truncation=True,
            return_tensors="pt",
        ).input_ids[0]
        spans = torch.full((len(groups), 2), -1, dtype=torch.long)
        for g, grp in enumerate(groups):
            span = grp.get("span")
            if span is None:
                continue
            s, e = int(span[0]), int(span[1])
            ok = 1 <= s < e <= MAX_TEXT_TOKENS
            # a drawn caption's spans were just found in these very ids: nothing to verify
            if ok and self.verify_spans and draw is None and grp.get("text"):
                ok = self._text_ids(grp["text"]) == ids[s:e].tolist()
            if ok:
                spans[g] = torch.tensor([s, e])
            else:
                self.stats["span_rejected"] += 1
        masks = group_label_masks(label_map, groups, self.map_hw(target), self.mask_resize)
        # original size and crop offset: SDXL's micro-conditioning (time ids)
        return {
            "key": raw["__key__"],
            "pixel_values": pixels,
            "input_ids": ids,
            "group_masks": masks,
            "spans": spans,
            "group_names": [g.get("name", str(i)) for i, g in enumerate(groups)],
            "bucket": target,
            "original_size": original_hw,
            "crop_top_left": crop_top_left,
            "flipped": flipped,
        }

    def target_hw(self, width: int, height: int) -> tuple[int, int]:
        """The (h, w) an image of ``width x height`` is cover-cropped to: here the square resolution."""
        return (self.resolution, self.resolution)

    def map_hw(self, target_hw: tuple[int, int]) -> tuple[int, int] | None:
        """The group masks' size for a sample of ``target_hw`` (None: the image size)."""
        return self.mask_size

    # -- iteration ------------------------------------------------------------------------------------
    def read_unit(self, url: str) -> Iterator[dict[str, Any]]:
        """The raw samples of one unit (a tar shard here), in file order."""
        return iter_tar_samples(url)

    def rank_units(self, epoch: int) -> list[str]:
        """The units this rank reads in ``epoch``: the epoch's URL order (shuffled with ``seed + epoch``
        when there is a shuffle buffer) numbered on from the epochs before, those whose number is
        ``rank`` modulo ``world_size``."""
        urls = list(self.urls)
        if self.shuffle_buffer:
            random.Random(self.seed + epoch).shuffle(urls)
        first = epoch * len(urls)
        return [url for i, url in enumerate(urls) if (first + i) % self.world_size == self.rank]

    def _raw_stream(self) -> Iterator[dict[str, Any]]:
        self._round_len = 0
        round_units = round_samples = 0
        epoch = 0
        while True:
            for url in self.rank_units(epoch):
                for raw in self.read_unit(url):
                    if raw["__key__"] in self.excluded_samples:
                        self.stats["excluded"] += 1
                        continue
                    round_samples += 1
                    yield raw
                round_units += 1
                # a round (as many units as there are shards) is this rank's counterpart of an epoch
                if round_units == len(self.urls):
                    if self.repeat and round_samples == 0:
                        raise RuntimeError(f"no samples for rank {self.rank}/{self.world_size} in {self.urls}")
                    self._round_len = round_samples
                    round_units = round_samples = 0
            epoch += 1
            self.stats["epochs"] = epoch
            if not self.repeat:
                return

    def _shuffled(self) -> Iterator[dict[str, Any]]:
        it = self._raw_stream()
        if not self.shuffle_buffer:
            yield from it
            return
        # rank 0 draws what a single reader draws; the others their own sequences
        rng = random.Random(self.seed if self.rank == 0 else f"{self.seed}/rank-{self.rank}")
        buf: list[dict[str, Any]] = []
        for raw in it:
            buf.append(raw)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        while buf:
            yield buf.pop(rng.randrange(len(buf)))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.position = self.rank
        since_yield = 0  # positions read since this reader last yielded a sample (or skipped on purpose)
        yielded = False
        for raw in self._shuffled():
            pos = self.position
            self.position += self.world_size
            since_yield += 1
            # two rounds (and then some, for the shuffle buffer) gave this reader nothing: all undecodable.
            # Checked until the first sample only: that sample's shard comes back to this rank (file order
            # cycles, shuffled epochs reach every rank), while a later check could trip on a run of bad
            # shards that per-rank reading makes possible.
            if (
                self.repeat
                and not yielded
                and self._round_len
                and since_yield > 2 * self._round_len + self.shuffle_buffer
            ):
                raise RuntimeError(f"no decodable samples for rank {self.rank}/{self.world_size} in {self.urls}")
            if pos < self.start or pos in self.exclude:
                since_yield = 0  # skipping on purpose is progress
                continue
            raw["__pos__"] = pos  # the per-sample draw's seed (decoders drop "__" fields)
            try:
                sample = self.decode(raw)
            except Exception as exc:  # noqa: BLE001 -- one bad sample must not end a long run
                self.stats["skipped"] += 1
                log.warning("skipping sample %s of %s: %s", raw.get("__key__"), raw.get("__url__"), exc)
                continue
            self.stats["samples"] += 1
            sample["pos"] = pos
            since_yield = 0
            yielded = True
            yield sample


STACKED_FIELDS = ("pixel_values", "input_ids", "latent_mean", "latent_std", "hidden", "pooled")


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
    out = {
        "keys": [s["key"] for s in samples],
        "positions": [s.get("pos", -1) for s in samples],
        "group_names": [list(s.get("group_names") or []) for s in samples],
        "group_masks": torch.stack(masks),
        "spans": torch.stack(spans),
    }
    if "bucket" in samples[0]:
        out["bucket"] = tuple(samples[0]["bucket"])
    # decoded samples carry pixels and ids; latent-cache samples their encodings instead
    for name in STACKED_FIELDS:
        if name in samples[0]:
            out[name] = torch.stack([s[name] for s in samples])
    for name in ("original_size", "crop_top_left"):
        if all(name in s for s in samples):
            out[name] = torch.tensor([list(s[name]) for s in samples], dtype=torch.long)
    return out


def batches(dataset: ShardDataset, batch_size: int) -> Iterator[dict[str, Any]]:
    """Fixed-size batches from a (repeating) dataset; a final short batch is dropped."""
    buf: list[dict[str, Any]] = []
    for sample in dataset:
        buf.append(sample)
        if len(buf) == batch_size:
            yield collate(buf)
            buf = []
