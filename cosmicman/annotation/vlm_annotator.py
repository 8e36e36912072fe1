"""The production AI annotator: a BLIP-2 / InstructBLIP VLM prompted per question, fine-tuned with LoRA.

It implements :class:`cosmicman.annotation.annotator.Annotator` (the light :class:`ProbeAnnotator` is the
embedded default; this is the paper's annotator).

* **Loading.** :meth:`VLMAnnotator.from_pretrained` loads a ``Blip2ForConditionalGeneration`` or an
  ``InstructBlipForConditionalGeneration`` (chosen from the checkpoint's ``model_type``) with its
  tokenizer and image processor from a local directory or the local Hugging Face cache. Nothing is
  downloaded unless ``local_files_only=False``; a missing checkpoint raises
  :class:`VLMWeightsUnavailableError` naming the files needed and how to stage them.
* **Prediction.** For each image and question the language model reads ``[query embeddings]
  [BOS] "Question: {question} Answer:"`` and every answer of the category's vocabulary is scored by
  its log-likelihood under teacher forcing (the answer tokens plus EOS; all answers of all questions of
  a hierarchy level in one batch), so the output is always a vocabulary answer. Questions are asked
  parents first and a child only when its ``requires`` hold on the annotator's *own* answers (as
  :class:`ProbeAnnotator` does). The image side is computed once per image and predict call: BLIP-2's
  vision encoder + Q-Former + projection output is question-independent and cached; InstructBLIP's
  Q-Former reads the instruction, so its vision encoder output is cached and the (small) Q-Former runs
  once per (image, question). Decoder-only (OPT, Llama/Vicuna) and encoder-decoder (Flan-T5) language
  models are supported; for T5 the encoder runs once per (image, question) and is shared by the answers.
* **Fine-tuning.** :meth:`VLMAnnotator.finetune` trains LoRA adapters (``peft``: ``LoraConfig``,
  ``get_peft_model``) on the language model's attention projections (optionally the Q-Former's
  query / key / value) with teacher-forced cross-entropy on the answer tokens of the (image, question,
  answer) triples of the labels. The base weights are frozen and shared; it returns a *new* annotator
  (the parent keeps its adapter and its predictions). Successive rounds continue from the parent's
  adapter. The version is ``vlm-r{round}-{digest}``, the digest covering the base model identity, the
  adapter weights (their safetensors bytes), the round and the inference settings; ``lineage`` names
  the parents.
* **Persistence.** :meth:`VLMAnnotator.save` writes a zip of ``meta.json`` (``"kind": "vlm"``, base
  model id and identity, version, round, lineage, LoRA config, inference settings, training summary),
  ``adapter_model.safetensors`` and a PEFT-style ``adapter_config.json``; the base weights are not in it.
  :meth:`VLMAnnotator.load` needs the base: its id / path (default: the one recorded) or a loaded base.

Several annotators share one :class:`VLMBase` (one copy of the base weights). The LoRA modules are
injected into the base model once per LoRA configuration ("slot"); each annotator keeps its adapter
weights on the CPU and copies them into the slot when it runs (a few MB); the round-0 annotator runs
with the adapters disabled (bit-identical to the plain base). A lock serialises use of the shared model.

:func:`build_tiny_vlm` builds a tiny random BLIP-2 / InstructBLIP (OPT or T5 language model) with the
real CLIP BPE tokenizer from the open-clip wheel and a PIL image processor, all offline, for tests.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cosmicman.annotation.items import LabelRecord, labelled_image_rows
from cosmicman.annotation.vlm_base import VLMBase, build_tiny_vlm_base
from cosmicman.annotation.vlm_lora import (
    DEFAULT_PROMPT,
    FORMAT_VERSION,
    KIND,
    ZIP_DATE,
    LoraAdapter,
    LoraSpec,
    ScoredRow,
    as_image,
    canonical_json,
    sha_hex,
)
from cosmicman.core.protocol import Category, Protocol, load_protocol


# --------------------------------------------------------------------------------------------------
# The annotator
# --------------------------------------------------------------------------------------------------
class VLMAnnotator:
    """BLIP-2 / InstructBLIP annotator with optional LoRA adapter. Immutable; see the module docstring."""

    kind = KIND

    def __init__(
        self,
        base: VLMBase,
        protocol: Protocol | None = None,
        *,
        adapter: LoraAdapter | None = None,
        round: int = 0,
        lineage: Sequence[str] = (),
        prompt: str = DEFAULT_PROMPT,
        length_norm: str = "sum",
        answer_eos: bool = True,
        train_log: Mapping[str, Any] | None = None,
    ):
        if length_norm not in ("sum", "mean"):
            raise ValueError("length_norm must be 'sum' (sequence log-likelihood) or 'mean' (per token)")
        if "{question}" not in prompt:
            raise ValueError("the prompt template must contain {question}")
        self.base = base
        self.protocol = protocol or load_protocol()
        self._adapter = adapter
        self.round = int(round)
        self.lineage = tuple(lineage)
        self.prompt = str(prompt)
        self.length_norm = length_norm
        self.answer_eos = bool(answer_eos)
        self.train_log = dict(train_log or {})
        self._prompt_cache: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._answer_cache: dict[tuple[str, str], tuple[int, ...]] = {}
        digest = sha_hex(
            canonical_json(
                {
                    "base": base.digest,
                    "adapter": adapter.digest if adapter else None,
                    "round": self.round,
                    "inference": self.inference_config,
                }
            )
        )
        self._version = f"vlm-r{self.round}-{digest[:12]}"

    # -- identity ---------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self._version

    @property
    def inference_config(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "length_norm": self.length_norm, "answer_eos": self.answer_eos}

    @property
    def lora_config(self) -> dict[str, Any] | None:
        return self._adapter.spec.to_dict() if self._adapter else None

    @property
    def adapter_digest(self) -> str | None:
        return self._adapter.digest if self._adapter else None

    @property
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """A copy of the LoRA weights (empty for the plain base)."""
        return {k: v.clone() for k, v in self._adapter.state.items()} if self._adapter else {}

    def __repr__(self) -> str:
        return f"VLMAnnotator(version={self.version!r}, base={self.base.model_id!r})"

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        *,
        protocol: Protocol | None = None,
        prompt: str = DEFAULT_PROMPT,
        length_norm: str = "sum",
        answer_eos: bool = True,
        **load_kwargs: Any,
    ) -> VLMAnnotator:
        """Round 0 on a BLIP-2 / InstructBLIP checkpoint; ``load_kwargs`` as :meth:`VLMBase.from_pretrained`
        (``dtype``, ``device``, ``local_files_only``, ``revision``, ...)."""
        base = VLMBase.from_pretrained(model_id_or_path, **load_kwargs)
        return cls(base, protocol, prompt=prompt, length_norm=length_norm, answer_eos=answer_eos)

    def _derive(
        self,
        adapter: LoraAdapter | None,
        round: int,
        lineage: Sequence[str],
        train_log: Mapping[str, Any] | None = None,
    ) -> VLMAnnotator:
        return VLMAnnotator(
            self.base,
            self.protocol,
            adapter=adapter,
            round=round,
            lineage=lineage,
            prompt=self.prompt,
            length_norm=self.length_norm,
            answer_eos=self.answer_eos,
            train_log=train_log,
        )

    # -- text -------------------------------------------------------------------------------------
    def _prompt_ids(self, cat: Category) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if cat.name not in self._prompt_cache:
            self._prompt_cache[cat.name] = self.base.encode_prompt(self.prompt.format(question=cat.question))
        return self._prompt_cache[cat.name]

    def _answer_ids(self, cat: Category, answer: str) -> tuple[int, ...]:
        key = (cat.name, answer)
        if key not in self._answer_cache:
            self._answer_cache[key] = self.base.encode_answer(
                answer.replace("_", " "), self.prompt.format(question=cat.question), eos=self.answer_eos
            )
        return self._answer_cache[key]

    def _row(self, image: int, cat: Category, answer: str) -> ScoredRow:
        prompt, qprompt = self._prompt_ids(cat)
        return ScoredRow(image, prompt, self._answer_ids(cat, answer), qprompt)

    # -- inference --------------------------------------------------------------------------------
    def _scores(self, feats: torch.Tensor, questions: Sequence[tuple[int, Category]]) -> list[np.ndarray]:
        """Answer log-likelihoods (per ``length_norm``) for each (image, category), batched over answers."""
        rows = [self._row(i, cat, a) for i, cat in questions for a in cat.answers]
        flat = np.empty(len(rows), dtype=np.float64)
        step = max(1, self.base.max_rows)
        for s in range(0, len(rows), step):
            logp, mask = self.base.row_logprobs(feats, rows[s : s + step])
            total = logp.sum(1)
            if self.length_norm == "mean":
                total = total / mask.sum(1)
            flat[s : s + step] = total.double().cpu().numpy()
        if not np.isfinite(flat).all():
            raise FloatingPointError("non-finite answer log-likelihoods (dtype overflow or a broken checkpoint?)")
        out, k = [], 0
        for _, cat in questions:
            out.append(flat[k : k + len(cat.answers)])
            k += len(cat.answers)
        return out

    def answer_scores(self, images: Sequence[Image.Image | bytes], category: str) -> np.ndarray:
        """``[n_images, n_answers]`` answer log-likelihoods for one category (asked regardless of hierarchy)."""
        cat = self.protocol.by_name[category]
        imgs = [as_image(x) for x in images]
        if not imgs:
            return np.zeros((0, len(cat.answers)))
        with self.base.using(self._adapter), torch.no_grad():
            feats = self.base.image_features(imgs)
            return np.stack(self._scores(feats, [(i, cat) for i in range(len(imgs))]))

    def predict(
        self, images: Sequence[Image.Image | bytes], categories: Sequence[str] | None = None
    ) -> list[dict[str, str]]:
        """Answers per image to those of ``categories`` that apply per the annotator's own answers.

        Questions go in hierarchy levels (parents before children), all questions of a level for all
        images in one batched pass; the image side is computed once per image.
        """
        categories = [c.name for c in self.protocol.categories] if categories is None else list(categories)
        imgs = [as_image(x) for x in images]
        if not imgs:
            return []
        needed = self.protocol.with_parents(categories)
        preds: list[dict[str, str]] = [{} for _ in imgs]
        with self.base.using(self._adapter), torch.no_grad():
            feats = self.base.image_features(imgs)
            pending = [list(needed) for _ in imgs]
            while any(pending):
                level: list[tuple[int, Category]] = []
                for i in range(len(imgs)):
                    settled = {c.name for c in needed} - {c.name for c in pending[i]}
                    keep = []
                    for cat in pending[i]:
                        if not set(cat.requires) <= settled:
                            keep.append(cat)  # a parent is not answered yet
                        elif cat.applies(preds[i]):
                            level.append((i, cat))
                        # else: skipped, the annotator's own answers rule the question out
                    pending[i] = keep
                if not level:
                    if any(pending):  # unreachable with a valid (acyclic) protocol
                        raise ValueError("category requirements form a cycle")
                    break
                for (i, cat), scores in zip(level, self._scores(feats, level)):
                    preds[i][cat.name] = cat.answers[int(np.argmax(scores))]
        wanted = set(categories)
        return [{k: v for k, v in p.items() if k in wanted} for p in preds]

    # -- training ---------------------------------------------------------------------------------
    def _triples(
        self, labels: Sequence[LabelRecord], images: Mapping[str, Image.Image | bytes]
    ) -> tuple[list[str], list[Image.Image], list[tuple[int, Category, str]]]:
        by_name = self.protocol.by_name
        shas, row = labelled_image_rows(labels, images)
        triples = []
        for lab in labels:
            if lab.category not in by_name:
                raise KeyError(f"label for unknown category {lab.category!r}")
            cat = by_name[lab.category]
            if lab.answer not in cat.answers:
                raise ValueError(f"{lab.category}={lab.answer!r} is not in its vocabulary")
            triples.append((row[lab.image_sha256], cat, lab.answer))
        return shas, [as_image(images[s]) for s in shas], triples

    def loss(self, labels: Sequence[LabelRecord], images: Mapping[str, Image.Image | bytes]) -> float:
        """Teacher-forced cross-entropy per answer token on the labels' triples (eval mode, this adapter)."""
        _, imgs, triples = self._triples(labels, images)
        if not triples:
            return float("nan")
        rows = [self._row(i, cat, a) for i, cat, a in triples]
        nll = n_tok = 0.0
        with self.base.using(self._adapter), torch.no_grad():
            feats = self.base.image_features(imgs)
            for s in range(0, len(rows), self.base.max_rows):
                logp, mask = self.base.row_logprobs(feats, rows[s : s + self.base.max_rows])
                nll -= float(logp.sum())
                n_tok += float(mask.sum())
        return nll / n_tok

    def finetune(
        self,
        labels: Sequence[LabelRecord],
        images: Mapping[str, Image.Image | bytes],
        round: int | None = None,
        *,
        steps: int = 20,
        lr: float = 1e-3,
        batch_size: int = 8,
        rank: int | None = None,
        alpha: float | None = None,
        dropout: float | None = None,
        qformer: bool | None = None,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        seed: int = 0,
    ) -> VLMAnnotator:
        """A new annotator: LoRA trained on the (image, question, answer) triples of ``labels``.

        The first round creates the adapter (``rank`` default 8, ``alpha`` default 2 x rank, ``dropout``
        0.05, ``qformer``: also adapt the Q-Former's attention, default False); later rounds continue from
        the parent's adapter and keep its LoRA setup (asking for another raises ValueError). AdamW on the
        LoRA parameters only, ``steps`` steps of ``batch_size`` triples (a seeded shuffle, epoch after
        epoch). Deterministic in ``seed``. ``self`` is unchanged.
        """
        if not labels:
            return self
        if steps < 1 or batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        from peft import get_peft_model_state_dict

        if self._adapter is not None:
            spec = self._adapter.spec
            asked = {"r": rank, "alpha": alpha, "dropout": dropout, "qformer": qformer}
            clash = {k: v for k, v in asked.items() if v is not None and v != getattr(spec, k)}
            if clash:
                raise ValueError(
                    f"round {self.round + 1} continues the parent's adapter {spec.to_dict()}; cannot change {clash}"
                )
        else:
            r = int(rank) if rank is not None else 8
            spec = LoraSpec(
                r=r,
                alpha=float(alpha) if alpha is not None else 2.0 * r,
                dropout=float(dropout) if dropout is not None else 0.05,
                qformer=bool(qformer) if qformer is not None else False,
            )
        rnd = self.round + 1 if round is None else int(round)
        _, imgs, triples = self._triples(labels, images)
        rows = [self._row(i, cat, a) for i, cat, a in triples]
        base = self.base
        model = base.model
        start = self._adapter if self._adapter is not None else base.fresh_adapter(spec, seed=seed)
        losses: list[float] = []
        with base.lock:
            slot = base._load_slot(start)
            base._slot_owner[slot] = None  # the slot is about to diverge from ``start``
            named = base._lora_params(slot, requires_grad=True)
            params = [p for _, p in named]
            # Frozen image side computed once unless the Q-Former itself is adapted (InstructBLIP's
            # Q-Former output depends on the question: cache the vision encoder output only).
            cache_feats = not spec.qformer or base.model_type == "instructblip"
            with torch.no_grad():
                feats = base.image_features(imgs) if cache_feats else None
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            order_rng = np.random.default_rng([int(seed), rnd])
            order: list[int] = []
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seed) * 1_000_003 + rnd)
                    model.language_model.train()
                    if spec.qformer:
                        model.qformer.train()
                    for _ in range(int(steps)):
                        batch: list[ScoredRow] = []
                        while len(batch) < min(batch_size, len(rows)):
                            if not order:
                                order = list(order_rng.permutation(len(rows)))
                            batch.append(rows[order.pop()])
                        f = feats if feats is not None else base.image_features(imgs)
                        logp, mask = base.row_logprobs(f, batch)
                        loss = -logp.sum() / mask.sum()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        if max_grad_norm:
                            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                        opt.step()
                        losses.append(float(loss.detach()))
            finally:
                model.eval()
                base._lora_params(slot, requires_grad=False)
                opt.zero_grad(set_to_none=True)
            adapter = LoraAdapter.from_state(spec, get_peft_model_state_dict(base._peft, adapter_name=slot))
            base._slot_owner[slot] = adapter.digest
        log = {
            "steps": int(steps),
            "lr": float(lr),
            "batch_size": int(batch_size),
            "seed": int(seed),
            "weight_decay": float(weight_decay),
            "max_grad_norm": float(max_grad_norm),
            "n_labels": len(labels),
            "n_images": len(imgs),
            "losses": losses,
            "trainable": sorted(n for n, _ in named),
            "n_trainable": int(sum(p.numel() for _, p in named)),
        }
        return self._derive(adapter, rnd, self.lineage + (self.version,), log)

    # -- persistence ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        b = self.base
        return {
            "kind": self.kind,
            "format": FORMAT_VERSION,
            "version": self.version,
            "round": self.round,
            "lineage": list(self.lineage),
            "base": {
                "model_id": b.model_id,
                "model_type": b.model_type,
                "digest": b.digest,
                "identity": b.identity,
                "decoder_only": b.decoder_only,
                "dtype": str(b.dtype).removeprefix("torch."),
            },
            "lora": self.lora_config,
            "adapter_sha256": self.adapter_digest,
            "inference": self.inference_config,
            "protocol_version": self.protocol.version,
            "train": {k: v for k, v in self.train_log.items() if k != "trainable"},
        }

    def save(self, path: str | Path | None = None) -> bytes:
        """Zip of ``meta.json`` (+ ``adapter_model.safetensors``, ``adapter_config.json``); no base weights.

        Deterministic: the same annotator always gives the same bytes.
        """
        files = {"meta.json": json.dumps(self.meta(), indent=2, sort_keys=True, default=str).encode()}
        if self._adapter is not None:
            cfg = self._adapter.spec.peft_config().to_dict()
            cfg = json.loads(
                json.dumps(cfg, default=lambda o: sorted(o) if isinstance(o, set) else getattr(o, "value", str(o)))
            )
            files["adapter_config.json"] = json.dumps(cfg, indent=2, sort_keys=True).encode()
            files["adapter_model.safetensors"] = self._adapter.blob
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        data = buf.getvalue()
        if path is not None:
            Path(path).write_bytes(data)
        return data

    @classmethod
    def load(
        cls,
        src: str | os.PathLike | bytes,
        protocol: Protocol | None = None,
        base_model: VLMBase | VLMAnnotator | str | os.PathLike | None = None,
        **base_kwargs: Any,
    ) -> VLMAnnotator:
        """Load a saved VLM annotator onto its base model.

        ``base_model``: a loaded :class:`VLMBase` (or an annotator, whose base is shared), an id / path
        to load (``base_kwargs`` go to :meth:`VLMBase.from_pretrained`), or None for the id recorded in
        ``meta.json``. The base must be the checkpoint the adapter was trained on (identity digest).
        """
        data = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else Path(src).read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            meta = json.loads(zf.read("meta.json"))
            if meta.get("kind") != KIND:
                raise ValueError(f"not a VLM annotator: kind={meta.get('kind')!r}")
            blob = zf.read("adapter_model.safetensors") if meta.get("lora") else None
        if int(meta.get("format", 0)) > FORMAT_VERSION:
            raise ValueError(f"VLM annotator format {meta['format']} is newer than this code ({FORMAT_VERSION})")
        if isinstance(base_model, VLMAnnotator):
            base = base_model.base
        elif isinstance(base_model, VLMBase):
            base = base_model
        elif base_model is None or isinstance(base_model, (str, os.PathLike)):
            base_kwargs.setdefault("dtype", meta["base"].get("dtype"))  # the identity depends on it
            base = VLMBase.from_pretrained(
                meta["base"]["model_id"] if base_model is None else base_model, **base_kwargs
            )
        else:
            raise TypeError(
                "base_model must be a VLMBase, a VLMAnnotator, a model id / path or None "
                f"(a bare model lacks its tokenizer and image processor), got {type(base_model).__name__}"
            )
        if base.digest != meta["base"]["digest"]:
            raise ValueError(
                f"base model mismatch: the annotator was trained on {meta['base']['model_id']!r} "
                f"(identity {meta['base']['digest']}, dtype {meta['base'].get('dtype')}), got {base.model_id!r} "
                f"(identity {base.digest}); load the same checkpoint in the same dtype"
            )
        adapter = None
        if blob is not None:
            if sha_hex(blob) != meta["adapter_sha256"]:
                raise ValueError("corrupt VLM annotator: adapter weights do not match their recorded digest")
            adapter = LoraAdapter.from_bytes(LoraSpec.from_dict(meta["lora"]), blob)
        inf = meta["inference"]
        ann = cls(
            base,
            protocol,
            adapter=adapter,
            round=meta["round"],
            lineage=meta["lineage"],
            prompt=inf["prompt"],
            length_norm=inf["length_norm"],
            answer_eos=inf["answer_eos"],
            train_log=meta.get("train"),
        )
        if ann.version != meta["version"]:
            raise ValueError(f"corrupt VLM annotator: version {ann.version} != recorded {meta['version']}")
        return ann


def build_tiny_vlm(
    seed: int = 0,
    *,
    family: str = "blip-2",
    language: str = "opt",
    protocol: Protocol | None = None,
    image_size: int = 32,
    hidden: int = 32,
    num_query_tokens: int = 4,
    dtype: Any = None,
    device: str | torch.device | None = None,
    **annotator_kwargs: Any,
) -> VLMAnnotator:
    """An annotator on :func:`~cosmicman.annotation.vlm_base.build_tiny_vlm_base` (tests, local runs)."""
    base = build_tiny_vlm_base(
        seed,
        family=family,
        language=language,
        image_size=image_size,
        hidden=hidden,
        num_query_tokens=num_query_tokens,
        dtype=dtype,
        device=device,
    )
    return VLMAnnotator(base, protocol, **annotator_kwargs)
