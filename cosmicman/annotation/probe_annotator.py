"""The light embedded annotator (:class:`ProbeAnnotator`): a fixed, weight-free vision backbone
(:class:`~cosmicman.annotation.probe_backbone.PersonRegionBackbone`) plus one part-aware, class-balanced
head per category (:mod:`cosmicman.annotation.probe_heads`). :meth:`ProbeAnnotator.train` builds round 0
from labelled images; :meth:`ProbeAnnotator.finetune` retrains only the heads of the labelled categories
and returns a new, separately versioned annotator; annotators are immutable."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cosmicman.annotation.items import LabelRecord, labelled_image_rows
from cosmicman.annotation.probe_backbone import PersonRegionBackbone
from cosmicman.annotation.probe_heads import Head, HeadFit, fit_heads
from cosmicman.core.protocol import Protocol, load_protocol


class ProbeAnnotator:
    """Fixed backbone + one small MLP head per category. Immutable; see the module docstring.

    ``finetune`` retrains the heads of the labelled categories only (L-BFGS on the human labels, from
    the previous head with a weak L2 pull towards it, so a few labels do not erase what was known),
    keeps the other heads, and returns a new annotator whose version names its parent and round.
    """

    kind = "probe"

    def __init__(
        self,
        heads: Mapping[str, Head],
        mean: np.ndarray,
        std: np.ndarray,
        backbone_config: Mapping[str, Any] | None = None,
        lineage: Sequence[str] = (),
        round: int = 0,
        protocol: Protocol | None = None,
        l2: float = 1e-2,
        prior_l2: float = 1e-3,
    ):
        self.protocol = protocol or load_protocol()
        self.backbone = PersonRegionBackbone(**(backbone_config or {}))
        self._heads = dict(heads)
        self._mean = np.array(mean, dtype=np.float32, copy=True)
        self._std = np.array(std, dtype=np.float32, copy=True)
        self._mean.setflags(write=False)
        self._std.setflags(write=False)
        self.lineage = tuple(lineage)
        self.round = int(round)
        self.l2, self.prior_l2 = float(l2), float(prior_l2)
        h = hashlib.sha256()
        h.update(json.dumps(self.backbone.config, sort_keys=True).encode())
        for name in sorted(self._heads):
            h.update(name.encode())
            h.update(self._heads[name].cols.tobytes())
            h.update(self._heads[name].params.tobytes())
        self._digest = h.hexdigest()[:10]

    # -- identity ---------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return f"probe-r{self.round}-{self._digest}"

    @property
    def heads(self) -> Mapping[str, np.ndarray]:
        """Each category's head parameters, flattened (read-only)."""
        return {k: h.params for k, h in self._heads.items()}

    def __repr__(self) -> str:
        return f"ProbeAnnotator(version={self.version!r}, heads={len(self._heads)})"

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        images: Sequence[Image.Image | bytes],
        labels: Sequence[Mapping[str, str]],
        protocol: Protocol | None = None,
        backbone_config: Mapping[str, Any] | None = None,
        l2: float = 1e-2,
        prior_l2: float = 1e-3,
    ) -> ProbeAnnotator:
        """Round 0 from scratch: features of ``images``; ``labels[i]`` answers some categories of image i."""
        protocol = protocol or load_protocol()
        backbone = PersonRegionBackbone(**(backbone_config or {}))
        feats = backbone(list(images))
        mean = feats.mean(0)
        std = feats.std(0) + 1e-3
        x = (feats - mean) / std
        fits = []
        for cat in protocol.categories:
            idx = [i for i, lab in enumerate(labels) if cat.name in lab]
            if idx:
                y = np.array([cat.answers.index(labels[i][cat.name]) for i in idx])
                fits.append(HeadFit(cat.name, np.array(idx), y, len(cat.answers), backbone.columns(cat.name)))
        heads = fit_heads(x, fits, l2)
        return cls(heads, mean, std, backbone.config, lineage=(), round=0, protocol=protocol, l2=l2, prior_l2=prior_l2)

    # -- inference --------------------------------------------------------------------------------
    def features(self, images: Sequence[Image.Image | bytes], keys: Sequence[str] | None = None) -> np.ndarray:
        """Standardised backbone features; ``keys`` as for :meth:`PersonRegionBackbone.__call__`."""
        return (self.backbone(list(images), keys) - self._mean) / self._std

    def predict_proba(self, images: Sequence[Image.Image | bytes], category: str) -> np.ndarray:
        return self._proba(self.features(images), category)

    def _proba(self, x: np.ndarray, category: str) -> np.ndarray:
        z = self._heads[category].logits(x)
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(
        self, images: Sequence[Image.Image | bytes], categories: Sequence[str] | None = None
    ) -> list[dict[str, str]]:
        categories = [c.name for c in self.protocol.categories] if categories is None else list(categories)
        if not len(images):
            return []
        x = self.features(images)
        needed = self.protocol.with_parents(categories)
        answers: dict[str, np.ndarray] = {}
        for cat in needed:
            if cat.name in self._heads:
                answers[cat.name] = self._proba(x, cat.name).argmax(1)
        wanted = set(categories)
        out = []
        for i in range(len(images)):
            pred: dict[str, str] = {}
            for cat in needed:
                if cat.name in answers and cat.applies(pred):
                    pred[cat.name] = cat.answers[int(answers[cat.name][i])]
            out.append({k: v for k, v in pred.items() if k in wanted})
        return out

    # -- fine-tuning ------------------------------------------------------------------------------
    def finetune(
        self, labels: Sequence[LabelRecord], images: Mapping[str, Image.Image | bytes], round: int | None = None
    ) -> ProbeAnnotator:
        """New annotator whose heads for the labelled categories are retrained on ``labels``.

        ``images`` maps every label's ``image_sha256`` to the image (or its bytes). Several labels for
        the same (image, category) are all used (disagreeing humans become soft targets).
        """
        if not labels:
            return self
        by_name = self.protocol.by_name
        shas, row = labelled_image_rows(labels, images)
        x = self.features([images[s] for s in shas], keys=shas)
        new_heads = dict(self._heads)
        by_cat: dict[str, list[LabelRecord]] = {}
        for lab in labels:
            if lab.category not in by_name:
                raise KeyError(f"label for unknown category {lab.category!r}")
            if lab.answer not in by_name[lab.category].answers:
                raise ValueError(f"{lab.category}={lab.answer!r} is not in its vocabulary")
            by_cat.setdefault(lab.category, []).append(lab)
        fits = [
            HeadFit(
                name,
                np.array([row[lab.image_sha256] for lab in labs]),
                np.array([by_name[name].answers.index(lab.answer) for lab in labs]),
                len(by_name[name].answers),
                self.backbone.columns(name),
                self._heads.get(name),
            )
            for name, labs in sorted(by_cat.items())
        ]
        new_heads.update(fit_heads(x, fits, self.l2, self.prior_l2))
        rnd = self.round + 1 if round is None else int(round)
        return ProbeAnnotator(
            new_heads,
            self._mean,
            self._std,
            self.backbone.config,
            lineage=self.lineage + (self.version,),
            round=rnd,
            protocol=self.protocol,
            l2=self.l2,
            prior_l2=self.prior_l2,
        )

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> bytes:
        """A zip of ``meta.json`` + ``arrays.npz`` (no pickle). Written to ``path`` if given."""
        meta = {
            "kind": self.kind,
            "version": self.version,
            "round": self.round,
            "lineage": list(self.lineage),
            "backbone": self.backbone.config,
            "l2": self.l2,
            "prior_l2": self.prior_l2,
            "protocol_version": self.protocol.version,
            "heads": sorted(self._heads),
        }
        arrays: dict[str, Any] = {"mean": self._mean, "std": self._std}
        arrays.update({f"head/{k}/{part}": a for k, h in self._heads.items() for part, a in h.arrays().items()})
        npz = io.BytesIO()
        np.savez(npz, **arrays)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(meta, indent=2, sort_keys=True))
            zf.writestr("arrays.npz", npz.getvalue())
        data = buf.getvalue()
        if path is not None:
            Path(path).write_bytes(data)
        return data

    @classmethod
    def load(cls, src: str | Path | bytes, protocol: Protocol | None = None) -> ProbeAnnotator:
        data = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            meta = json.loads(zf.read("meta.json"))
            npz = np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False)
            arrays = {k: npz[k] for k in npz.files}
        if meta.get("kind") != cls.kind:
            raise ValueError(f"not a probe annotator: kind={meta.get('kind')!r}")
        parts: dict[str, dict[str, np.ndarray]] = {}
        for k, v in arrays.items():
            if k.startswith("head/"):
                _, name, part = k.split("/")
                parts.setdefault(name, {})[part] = v
        heads = {name: Head(**p) for name, p in parts.items()}
        ann = cls(
            heads,
            arrays["mean"],
            arrays["std"],
            meta["backbone"],
            lineage=meta["lineage"],
            round=meta["round"],
            protocol=protocol,
            l2=meta["l2"],
            prior_l2=meta["prior_l2"],
        )
        if ann.version != meta["version"]:
            raise ValueError(f"corrupt annotator: version {ann.version} != recorded {meta['version']}")
        return ann
