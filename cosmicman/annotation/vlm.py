"""The production AI annotator: a BLIP-2 / InstructBLIP VLM prompted per question, fine-tuned with LoRA.

It implements :class:`cosmicman.annotation.annotation.Annotator` (the light :class:`ProbeAnnotator` is the
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

import hashlib
import inspect
import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cosmicman.annotation.annotation import LabelRecord, labelled_image_rows
from cosmicman.core.imageio import decode_image
from cosmicman.core.protocol import Category, Protocol, load_protocol

__all__ = [
    "DEFAULT_PROMPT",
    "SUPPORTED_MODEL_TYPES",
    "VLMWeightsUnavailableError",
    "LoraSpec",
    "VLMBase",
    "VLMAnnotator",
    "build_tiny_vlm",
]

KIND = "vlm"
FORMAT_VERSION = 1
DEFAULT_PROMPT = "Question: {question} Answer:"
SUPPORTED_MODEL_TYPES = ("blip-2", "instructblip")
TINY_SCHEME = "tiny-vlm:"
# Attention projection names of the language models BLIP-2 / InstructBLIP ship with (OPT, Llama /
# Vicuna, T5) and a few common others; only Linear layers inside an attention block are matched.
LM_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "q", "k", "v", "o",
                            "query", "key", "value", "qkv_proj", "c_attn", "Wqkv")
QFORMER_ATTENTION_PROJECTIONS = ("query", "key", "value")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_FULL_FINGERPRINT_MAX_PARAMS = 50_000_000
_SKETCH = 4096
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class VLMWeightsUnavailableError(FileNotFoundError):
    """The VLM checkpoint (weights, tokenizer, image processor) is not available locally."""


def _needs_message(src: str, reason: str) -> str:
    return (
        f"VLM annotator weights for {src!r} are not available locally: {reason.strip().rstrip('.')}. "
        "It needs a BLIP-2 or InstructBLIP checkpoint in a local directory (or the local Hugging Face "
        "cache, HF_HOME / HF_HUB_CACHE): config.json with model_type 'blip-2' or 'instructblip', the "
        "weights (model.safetensors, or model-*.safetensors shards with model.safetensors.index.json), "
        "the language model's tokenizer files, preprocessor_config.json and, for InstructBLIP, the "
        "qformer_tokenizer/ folder. There is no model hub access here: stage the checkpoint where the hub "
        "is reachable (e.g. `huggingface-cli download Salesforce/blip2-opt-2.7b --local-dir "
        "/models/blip2-opt-2.7b`, or `save_pretrained` of model and processor) and pass that directory; "
        "pass local_files_only=False only where the hub is reachable."
    )


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _as_image(x: Image.Image | bytes) -> Image.Image:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return decode_image(bytes(x))
    if isinstance(x, Image.Image):
        return x if x.mode == "RGB" else x.convert("RGB")
    raise TypeError(f"expected a PIL image or encoded image bytes, got {type(x).__name__}")


def _resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.float16
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(table)}")
    return table[name]


_CONFIG_NOISE = {"transformers_version", "dtype", "torch_dtype", "architectures", "name_or_path",
                 "output_attentions", "output_hidden_states", "return_dict", "use_cache"}


def _clean_config(obj: Any) -> Any:
    """A model config dict without the keys that vary with how it was loaded (dtype, paths, versions)."""
    if isinstance(obj, dict):
        return {k: _clean_config(v) for k, v in obj.items() if not str(k).startswith("_") and k not in _CONFIG_NOISE}
    if isinstance(obj, (list, tuple)):
        return [_clean_config(v) for v in obj]
    return obj


def base_identity(model: torch.nn.Module) -> dict[str, Any]:
    """Checkpoint identity of a (LoRA-free) base model, independent of device and of its path / id.

    ``config_sha``: the architecture config (load-time keys removed). ``weights_sha``: every parameter
    (name, shape, values as float32) for models up to 50M parameters; for larger ones a sketch (the
    first and last 4096 values of each tensor), cheap even for a multi-billion-parameter model on GPU.
    Loading in another dtype than the checkpoint's changes values, hence the identity (an adapter is
    tied to the numbers it was trained on).
    """
    cfg = _clean_config(model.config.to_dict())
    params = sorted((n, p) for n, p in model.named_parameters() if "lora_" not in n)
    n_params = int(sum(p.numel() for _, p in params))
    full = n_params <= _FULL_FINGERPRINT_MAX_PARAMS
    h = hashlib.sha256()
    for name, p in params:
        h.update(f"{name}:{tuple(p.shape)};".encode())
        t = p.detach().reshape(-1)
        if not full and t.numel() > 2 * _SKETCH:
            t = torch.cat([t[:_SKETCH], t[-_SKETCH:]])
        h.update(t.to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return {"config_sha": _sha(_json(cfg)), "weights_sha": h.hexdigest(),
            "weights_hashed": "full" if full else "sketch", "n_params": n_params}


def _state_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


# --------------------------------------------------------------------------------------------------
# LoRA configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraSpec:
    """The LoRA setup of an adapter lineage: rank, alpha, dropout, and which projections it adapts."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    projections: tuple[str, ...] = LM_ATTENTION_PROJECTIONS
    qformer: bool = False

    def __post_init__(self):
        if self.r < 1:
            raise ValueError("LoRA rank must be >= 1")
        object.__setattr__(self, "projections", tuple(self.projections))

    @property
    def target_regex(self) -> str:
        """Full module names (relative to the BLIP-2 / InstructBLIP model) that get LoRA (``re.fullmatch``)."""
        lm = "|".join(sorted(set(self.projections)))
        pattern = rf"language_model\.(?:.*\.)?[^.]*(?:attn|attention|Attention)[^.]*\.(?:{lm})"
        if self.qformer:
            qf = "|".join(QFORMER_ATTENTION_PROJECTIONS)
            pattern = rf"(?:{pattern}|qformer\.(?:.*\.)?attention\.(?:{qf}))"
        return pattern

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["projections"] = list(self.projections)
        d["target_modules"] = self.target_regex
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoraSpec:
        return cls(int(d["r"]), float(d["alpha"]), float(d["dropout"]), tuple(d["projections"]), bool(d["qformer"]))

    @property
    def digest(self) -> str:
        return _sha(_json(self.to_dict()))[:12]

    @property
    def slot(self) -> str:
        return f"lora_{self.digest}"

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_regex, bias="none", init_lora_weights=True)


@dataclass(frozen=True, eq=False)
class _Adapter:
    """Immutable adapter weights (CPU) of one annotator version."""

    spec: LoraSpec
    state: Mapping[str, torch.Tensor]
    blob: bytes  # safetensors serialisation (what is saved and hashed)

    @classmethod
    def from_state(cls, spec: LoraSpec, state: Mapping[str, torch.Tensor]) -> _Adapter:
        frozen = {k: v.detach().to("cpu").clone() for k, v in state.items()}
        return cls(spec, frozen, _state_bytes(frozen))

    @classmethod
    def from_bytes(cls, spec: LoraSpec, blob: bytes) -> _Adapter:
        from safetensors.torch import load

        return cls(spec, load(blob), blob)

    @property
    def digest(self) -> str:
        return _sha(self.blob)


@dataclass(frozen=True)
class _Row:
    """One teacher-forced sequence: an image, a prompt (LM ids, Q-Former ids) and a candidate answer."""

    image: int
    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    qprompt: tuple[int, ...] = ()


def _scatter_logprobs(logits: torch.Tensor, labels: torch.Tensor, amask: torch.Tensor) -> torch.Tensor:
    """``[n_true, V]`` logits at the answer positions -> ``[R, A]`` token log-probabilities (0 on padding)."""
    logits = logits.float()
    target = labels[amask]
    vals = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    return torch.zeros(amask.shape, dtype=vals.dtype, device=vals.device).masked_scatter(amask, vals)


# --------------------------------------------------------------------------------------------------
# The shared base model
# --------------------------------------------------------------------------------------------------
class VLMBase:
    """A loaded BLIP-2 / InstructBLIP model with its tokenizer(s) and image processor, frozen and shared.

    ``model_id`` is what it was loaded from (hub id, path, or a ``tiny-vlm:`` builder spec); ``identity``
    / ``digest`` identify the checkpoint (see :func:`base_identity`). Holds the LoRA slots injected by
    fine-tuning and a lock that serialises use of the model.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, model_id: str,
                 qformer_tokenizer: Any = None, max_rows: int = 64, image_batch_size: int = 16):
        model_type = getattr(model.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported VLM model_type {model_type!r}; expected one of {SUPPORTED_MODEL_TYPES}")
        if model_type == "instructblip" and qformer_tokenizer is None:
            raise ValueError("InstructBLIP needs its qformer_tokenizer")
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.model_type = model_type
        self.tokenizer = tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        self.image_processor = image_processor
        self.model_id = str(model_id)
        self.max_rows = int(max_rows)
        self.image_batch_size = int(image_batch_size)
        self.decoder_only = bool(model.config.use_decoder_only_language_model)
        self.identity = base_identity(model)
        self.digest = _sha(_json(self.identity))[:16]
        self.lock = threading.RLock()
        self._peft = None
        self._slot_owner: dict[str, str | None] = {}
        lm = self.model.language_model
        self._keep_logits = "logits_to_keep" in inspect.signature(lm.forward).parameters
        self._takes_positions = "position_ids" in inspect.signature(lm.forward).parameters
        tok = self.tokenizer
        self.bos_id = tok.bos_token_id if self.decoder_only else None
        self.eos_id = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        self.pad_id = int(pad if pad is not None else 0)
        if not self.decoder_only:
            start = getattr(self.model.config.text_config, "decoder_start_token_id", None)
            self.decoder_start_id = int(start if start is not None else self.pad_id)

    def __repr__(self) -> str:
        return f"VLMBase({self.model_id!r}, {self.model_type}, digest={self.digest})"

    @property
    def device(self) -> torch.device:
        return self.model.language_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The language model's dtype (what the base was loaded as)."""
        return self.model.language_model.get_input_embeddings().weight.dtype

    @property
    def vision_dtype(self) -> torch.dtype:
        return next(self.model.vision_model.parameters()).dtype

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_id_or_path: str | os.PathLike, *, dtype: Any = None,
                        device: str | torch.device | None = None, local_files_only: bool = True,
                        revision: str | None = None, max_rows: int = 64, image_batch_size: int = 16,
                        **model_kwargs: Any) -> VLMBase:
        """Load model + tokenizer(s) + image processor; raises :class:`VLMWeightsUnavailableError`.

        ``dtype`` defaults to float32 on CPU and float16 elsewhere; ``device`` to CUDA when available.
        ``model_kwargs`` go to the model's ``from_pretrained`` (e.g. ``attn_implementation``).
        """
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoTokenizer,
            Blip2ForConditionalGeneration,
            InstructBlipForConditionalGeneration,
        )

        src = os.fspath(model_id_or_path)
        if src.startswith(TINY_SCHEME):
            return _tiny_from_id(src, dtype=dtype, device=device).base
        path = Path(src).expanduser()
        is_local = path.exists()
        if not is_local and (src.startswith(("/", ".", "~")) or src.count("/") > 1 or "\\" in src
                             or isinstance(model_id_or_path, Path)):
            raise VLMWeightsUnavailableError(_needs_message(src, "no such local directory"))
        if is_local:
            if not path.is_dir():
                raise VLMWeightsUnavailableError(_needs_message(src, "the path is not a directory"))
            if not (path / "config.json").is_file():
                raise VLMWeightsUnavailableError(_needs_message(src, "the directory has no config.json"))
            if not any((path / f).is_file() for f in _WEIGHT_FILES):
                raise VLMWeightsUnavailableError(_needs_message(src, "the directory has no model weights"))
            src = str(path)
        hub = dict(local_files_only=local_files_only, revision=revision)
        try:
            config = AutoConfig.from_pretrained(src, **hub)
        except (OSError, ValueError) as exc:
            raise VLMWeightsUnavailableError(_needs_message(src, f"{type(exc).__name__}: {exc}")) from exc
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{src!r} is a {model_type!r} model; the VLM annotator loads {SUPPORTED_MODEL_TYPES}")
        model_cls = Blip2ForConditionalGeneration if model_type == "blip-2" else InstructBlipForConditionalGeneration
        dev = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = model_cls.from_pretrained(src, dtype=_resolve_dtype(dtype, dev), **hub, **model_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(src, **hub)
            image_processor = AutoImageProcessor.from_pretrained(src, **hub)
            qformer_tokenizer = AutoTokenizer.from_pretrained(src, subfolder="qformer_tokenizer", **hub) \
                if model_type == "instructblip" else None
        except OSError as exc:
            raise VLMWeightsUnavailableError(_needs_message(src, f"{type(exc).__name__}: {exc}")) from exc
        if "device_map" not in model_kwargs:
            model = model.to(dev)
        return cls(model, tokenizer, image_processor, model_id=os.fspath(model_id_or_path),
                   qformer_tokenizer=qformer_tokenizer, max_rows=max_rows, image_batch_size=image_batch_size)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write model, tokenizer(s) and image processor so :meth:`from_pretrained` can load them (staging)."""
        if self._peft is not None:
            raise RuntimeError("save the base before fine-tuning: LoRA modules are injected into this model")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        if self.qformer_tokenizer is not None:
            self.qformer_tokenizer.save_pretrained(path / "qformer_tokenizer")
        return path

    # -- LoRA slots -------------------------------------------------------------------------------
    def _ensure_slot(self, spec: LoraSpec) -> str:
        from peft import get_peft_model

        name = spec.slot
        with torch.random.fork_rng(devices=[]):  # peft's initialisation must not move the global RNG
            if self._peft is None:
                self._peft = get_peft_model(self.model, spec.peft_config(), adapter_name=name)
            elif name not in self._peft.peft_config:
                self._peft.add_adapter(name, spec.peft_config())
        self.model.eval()  # new LoRA dropout modules start in training mode
        if name not in self._slot_owner:
            self._slot_owner[name] = None
            self._lora_params(name, requires_grad=False)
        return name

    def _lora_params(self, slot: str, requires_grad: bool | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        out = []
        for n, p in self._peft.named_parameters():
            if "lora_" in n and f".{slot}." in f"{n}.":
                out.append((n, p))
        if requires_grad is not None:
            mine = {n for n, _ in out}
            for n, p in self._peft.named_parameters():
                p.requires_grad_(bool(requires_grad) and n in mine)
        return out

    def fresh_adapter(self, spec: LoraSpec, seed: int = 0) -> _Adapter:
        """A newly initialised adapter (LoRA A: Kaiming-uniform from ``seed``; B: zeros, so a no-op)."""
        from peft import get_peft_model_state_dict
        from peft.tuners.lora import LoraLayer

        with self.lock:
            slot = self._ensure_slot(spec)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                for module in self._peft.modules():
                    if isinstance(module, LoraLayer) and slot in module.lora_A:
                        module.reset_lora_parameters(slot, True)
            self._slot_owner[slot] = None
            return _Adapter.from_state(spec, get_peft_model_state_dict(self._peft, adapter_name=slot))

    def _load_slot(self, adapter: _Adapter) -> str:
        from peft import set_peft_model_state_dict

        slot = self._ensure_slot(adapter.spec)
        if self._slot_owner.get(slot) != adapter.digest:
            res = set_peft_model_state_dict(self._peft, dict(adapter.state), adapter_name=slot)
            unexpected = getattr(res, "unexpected_keys", None) or []
            if unexpected:
                raise ValueError(f"adapter does not fit this base model: unexpected keys {unexpected[:3]}")
            self._slot_owner[slot] = adapter.digest
        self._peft.set_adapter(slot)
        self._lora_params(slot, requires_grad=False)
        return slot

    @contextmanager
    def using(self, adapter: _Adapter | None) -> Iterator[None]:
        """Hold the model with ``adapter`` active (``None``: the plain base, adapters disabled)."""
        with self.lock:
            try:
                if adapter is None:
                    with self._peft.disable_adapter() if self._peft is not None else nullcontext():
                        yield
                else:
                    self._load_slot(adapter)
                    yield
            finally:
                self._freeze()  # peft re-enables requires_grad on the active adapter when re-enabling it

    def _freeze(self) -> None:
        if self._peft is not None:
            for p in self._peft.parameters():
                p.requires_grad_(False)

    # -- text ---------------------------------------------------------------------------------------
    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(language-model prompt ids, Q-Former instruction ids) for a prompt text."""
        ids = self.encode(text)
        ids = ((self.bos_id,) if self.bos_id is not None else ()) + ids
        if not self.decoder_only and self.eos_id is not None:
            ids = ids + (self.eos_id,)  # T5 encoder input ends with </s>, as its tokenizer writes it
        qids: tuple[int, ...] = ()
        if self.qformer_tokenizer is not None:
            qids = tuple(self.qformer_tokenizer(text, add_special_tokens=True)["input_ids"])
        return ids, qids

    def encode_answer(self, text: str, prompt_text: str | None = None, eos: bool = True) -> tuple[int, ...]:
        """Answer ids (+ EOS). Decoder-only: the tokens the answer adds after ``prompt_text + " "``
        (tokenised jointly, so BPE / SentencePiece word boundaries are as in running text); T5: the
        decoder target, tokenised alone."""
        ids: tuple[int, ...] = ()
        if self.decoder_only:
            if prompt_text is not None:
                head = self.encode(prompt_text)
                joint = self.encode(f"{prompt_text} {text}")
                if joint[:len(head)] == head:
                    ids = joint[len(head):]
            if not ids:
                ids = self.encode(" " + text)
        else:
            ids = self.encode(text)
        if eos and self.eos_id is not None:
            ids = ids + (self.eos_id,)
        if not ids:
            raise ValueError(f"answer {text!r} tokenizes to nothing")
        return ids

    # -- images -----------------------------------------------------------------------------------
    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pv = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pv.to(self.device, self.vision_dtype)

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Per image, once: BLIP-2 -> projected query embeddings ``[n, q, H_lm]`` (question-independent);
        InstructBLIP -> vision encoder output ``[n, patches, H_v]`` (its Q-Former reads the question)."""
        out = []
        for i in range(0, len(images), self.image_batch_size):
            pv = self.pixel_values(images[i:i + self.image_batch_size])
            if self.model_type == "blip-2":
                out.append(self.model.get_image_features(pixel_values=pv, return_dict=True).pooler_output)
            else:
                out.append(self.model.vision_model(pixel_values=pv, return_dict=True).last_hidden_state)
        return torch.cat(out)

    def _queries(self, feats: torch.Tensor, rows: Sequence[_Row]) -> torch.Tensor:
        """Projected query embeddings per row ``[R, q, H_lm]``."""
        proj = self.model.language_projection
        if self.model_type == "blip-2":
            idx = torch.tensor([r.image for r in rows], device=feats.device)
            q = feats.index_select(0, idx)
        else:  # InstructBLIP: the Q-Former once per distinct (image, instruction)
            keys = list(dict.fromkeys((r.image, r.qprompt) for r in rows))
            where = {k: i for i, k in enumerate(keys)}
            width = max(len(k[1]) for k in keys)
            qpad = self.qformer_tokenizer.pad_token_id or 0
            qids = torch.full((len(keys), width), qpad, dtype=torch.long, device=feats.device)
            qmask = torch.zeros((len(keys), width), dtype=torch.long, device=feats.device)
            for i, (_, ids) in enumerate(keys):
                qids[i, :len(ids)] = torch.tensor(ids)
                qmask[i, :len(ids)] = 1
            vis = feats.index_select(0, torch.tensor([k[0] for k in keys], device=feats.device))
            tokens = self.model.query_tokens.expand(len(keys), -1, -1)
            nq = tokens.shape[1]
            attn = torch.cat([torch.ones(tokens.shape[:2], dtype=torch.long, device=feats.device), qmask], 1)
            out = self.model.qformer(input_ids=qids, attention_mask=attn, query_embeds=tokens,
                                     encoder_hidden_states=vis,
                                     encoder_attention_mask=torch.ones(vis.shape[:2], dtype=torch.long,
                                                                       device=feats.device),
                                     return_dict=True)
            qk = proj(out[0][:, :nq].to(proj.weight.dtype))
            q = qk.index_select(0, torch.tensor([where[(r.image, r.qprompt)] for r in rows], device=feats.device))
        return q

    # -- teacher-forced answer log-likelihoods ----------------------------------------------------------
    def row_logprobs(self, feats: torch.Tensor, rows: Sequence[_Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of each row's answer tokens: ``(logp [R, A], mask [R, A])`` (differentiable)."""
        if self.decoder_only:
            return self._decoder_only_logprobs(feats, rows)
        return self._encoder_decoder_logprobs(feats, rows)

    def _decoder_only_logprobs(self, feats, rows):
        # Layout per row: [left pad][query][BOS prompt][answer][right pad]; every prompt ends at the same
        # column, so the answer positions are the last A + 1 of the sequence for all rows.
        lm = self.model.language_model
        dev = self.device
        q = self._queries(feats, rows)
        n_rows, nq = q.shape[0], q.shape[1]
        p_len = max(len(r.prompt) for r in rows)
        a_len = max(len(r.answer) for r in rows)
        total = nq + p_len + a_len
        ids = torch.full((n_rows, total), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, total), dtype=torch.long)
        qpos = torch.zeros((n_rows, total), dtype=torch.bool)
        labels = torch.full((n_rows, a_len), self.pad_id, dtype=torch.long)
        amask = torch.zeros((n_rows, a_len), dtype=torch.bool)
        for i, r in enumerate(rows):
            off = p_len - len(r.prompt)
            qpos[i, off:off + nq] = True
            ids[i, off + nq:nq + p_len] = torch.tensor(r.prompt)
            ids[i, nq + p_len:nq + p_len + len(r.answer)] = torch.tensor(r.answer)
            mask[i, off:nq + p_len + len(r.answer)] = 1
            labels[i, :len(r.answer)] = torch.tensor(r.answer)
            amask[i, :len(r.answer)] = True
        ids, mask, qpos, labels, amask = (t.to(dev) for t in (ids, mask, qpos, labels, amask))
        embeds = lm.get_input_embeddings()(ids)
        embeds = embeds.masked_scatter(qpos.unsqueeze(-1), q.to(embeds.dtype))
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": mask, "use_cache": False}
        if self._takes_positions:
            kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        # Logits only where an answer token is predicted (the LM head over the whole vocabulary is the
        # costly part): a boolean ``logits_to_keep`` gives them flattened, row-major like ``labels[amask]``.
        n_true = int(amask.sum())
        logits = None
        if self._keep_logits:
            keep = torch.zeros((n_rows, total), dtype=torch.bool, device=dev)
            keep[:, nq + p_len - 1:nq + p_len - 1 + a_len] = amask
            try:
                out = lm(**kwargs, logits_to_keep=keep).logits
                if out.ndim == 2 and out.shape[0] == n_true:
                    logits = out
            except (TypeError, IndexError):
                logits = None
            if logits is None:  # a model without mask support: keep the last a_len + 1 positions
                logits = lm(**kwargs, logits_to_keep=a_len + 1).logits[:, -(a_len + 1):-1][amask]
        else:
            logits = lm(**kwargs).logits[:, -(a_len + 1):-1][amask]
        return _scatter_logprobs(logits, labels, amask), amask

    def _encoder_decoder_logprobs(self, feats, rows):
        from transformers.modeling_outputs import BaseModelOutput

        lm = self.model.language_model
        dev = self.device
        keys = list(dict.fromkeys((r.image, r.prompt, r.qprompt) for r in rows))
        where = {k: i for i, k in enumerate(keys)}
        uniq = [_Row(k[0], k[1], (), k[2]) for k in keys]
        q = self._queries(feats, uniq)
        n_keys, nq = q.shape[0], q.shape[1]
        p_len = max(len(k[1]) for k in keys)
        ids = torch.full((n_keys, nq + p_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_keys, nq + p_len), dtype=torch.long)
        mask[:, :nq] = 1
        for i, k in enumerate(keys):
            ids[i, nq:nq + len(k[1])] = torch.tensor(k[1])
            mask[i, nq:nq + len(k[1])] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        embeds = lm.get_input_embeddings()(ids)
        embeds = torch.cat([q.to(embeds.dtype), embeds[:, nq:]], 1)
        enc = lm.get_encoder()(inputs_embeds=embeds, attention_mask=mask, return_dict=True).last_hidden_state
        sel = torch.tensor([where[(r.image, r.prompt, r.qprompt)] for r in rows], device=dev)
        a_len = max(len(r.answer) for r in rows)
        labels = torch.full((len(rows), a_len), self.pad_id, dtype=torch.long)
        dec = torch.full((len(rows), a_len), self.pad_id, dtype=torch.long)
        amask = torch.zeros((len(rows), a_len), dtype=torch.bool)
        for i, r in enumerate(rows):
            labels[i, :len(r.answer)] = torch.tensor(r.answer)
            dec[i, 0] = self.decoder_start_id
            dec[i, 1:len(r.answer)] = torch.tensor(r.answer[:-1])
            amask[i, :len(r.answer)] = True
        labels, dec, amask = labels.to(dev), dec.to(dev), amask.to(dev)
        out = lm(encoder_outputs=BaseModelOutput(last_hidden_state=enc.index_select(0, sel)),
                 attention_mask=mask.index_select(0, sel), decoder_input_ids=dec,
                 decoder_attention_mask=amask.long(), use_cache=False, return_dict=True)
        return _scatter_logprobs(out.logits[amask], labels, amask), amask


# --------------------------------------------------------------------------------------------------
# The annotator
# --------------------------------------------------------------------------------------------------
class VLMAnnotator:
    """BLIP-2 / InstructBLIP annotator with optional LoRA adapter. Immutable; see the module docstring."""

    kind = KIND

    def __init__(self, base: VLMBase, protocol: Protocol | None = None, *, adapter: _Adapter | None = None,
                 round: int = 0, lineage: Sequence[str] = (), prompt: str = DEFAULT_PROMPT,
                 length_norm: str = "sum", answer_eos: bool = True,
                 train_log: Mapping[str, Any] | None = None):
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
        digest = _sha(_json({"base": base.digest, "adapter": adapter.digest if adapter else None,
                             "round": self.round, "inference": self.inference_config}))
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
    def from_pretrained(cls, model_id_or_path: str | os.PathLike, *, protocol: Protocol | None = None,
                        prompt: str = DEFAULT_PROMPT, length_norm: str = "sum", answer_eos: bool = True,
                        **load_kwargs: Any) -> VLMAnnotator:
        """Round 0 on a BLIP-2 / InstructBLIP checkpoint; ``load_kwargs`` as :meth:`VLMBase.from_pretrained`
        (``dtype``, ``device``, ``local_files_only``, ``revision``, ...)."""
        base = VLMBase.from_pretrained(model_id_or_path, **load_kwargs)
        return cls(base, protocol, prompt=prompt, length_norm=length_norm, answer_eos=answer_eos)

    def _derive(self, adapter: _Adapter | None, round: int, lineage: Sequence[str],
                train_log: Mapping[str, Any] | None = None) -> VLMAnnotator:
        return VLMAnnotator(self.base, self.protocol, adapter=adapter, round=round, lineage=lineage,
                            prompt=self.prompt, length_norm=self.length_norm, answer_eos=self.answer_eos,
                            train_log=train_log)

    # -- text -------------------------------------------------------------------------------------
    def _prompt_ids(self, cat: Category) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if cat.name not in self._prompt_cache:
            self._prompt_cache[cat.name] = self.base.encode_prompt(self.prompt.format(question=cat.question))
        return self._prompt_cache[cat.name]

    def _answer_ids(self, cat: Category, answer: str) -> tuple[int, ...]:
        key = (cat.name, answer)
        if key not in self._answer_cache:
            self._answer_cache[key] = self.base.encode_answer(
                answer.replace("_", " "), self.prompt.format(question=cat.question), eos=self.answer_eos)
        return self._answer_cache[key]

    def _row(self, image: int, cat: Category, answer: str) -> _Row:
        prompt, qprompt = self._prompt_ids(cat)
        return _Row(image, prompt, self._answer_ids(cat, answer), qprompt)

    # -- inference --------------------------------------------------------------------------------
    def _scores(self, feats: torch.Tensor, questions: Sequence[tuple[int, Category]]) -> list[np.ndarray]:
        """Answer log-likelihoods (per ``length_norm``) for each (image, category), batched over answers."""
        rows = [self._row(i, cat, a) for i, cat in questions for a in cat.answers]
        flat = np.empty(len(rows), dtype=np.float64)
        step = max(1, self.base.max_rows)
        for s in range(0, len(rows), step):
            logp, mask = self.base.row_logprobs(feats, rows[s:s + step])
            total = logp.sum(1)
            if self.length_norm == "mean":
                total = total / mask.sum(1)
            flat[s:s + step] = total.double().cpu().numpy()
        if not np.isfinite(flat).all():
            raise FloatingPointError("non-finite answer log-likelihoods (dtype overflow or a broken checkpoint?)")
        out, k = [], 0
        for _, cat in questions:
            out.append(flat[k:k + len(cat.answers)])
            k += len(cat.answers)
        return out

    def answer_scores(self, images: Sequence[Image.Image | bytes], category: str) -> np.ndarray:
        """``[n_images, n_answers]`` answer log-likelihoods for one category (asked regardless of hierarchy)."""
        cat = self.protocol.by_name[category]
        imgs = [_as_image(x) for x in images]
        if not imgs:
            return np.zeros((0, len(cat.answers)))
        with self.base.using(self._adapter), torch.no_grad():
            feats = self.base.image_features(imgs)
            return np.stack(self._scores(feats, [(i, cat) for i in range(len(imgs))]))

    def predict(self, images: Sequence[Image.Image | bytes], categories: Sequence[str] | None = None
                ) -> list[dict[str, str]]:
        """Answers per image to those of ``categories`` that apply per the annotator's own answers.

        Questions go in hierarchy levels (parents before children), all questions of a level for all
        images in one batched pass; the image side is computed once per image.
        """
        categories = [c.name for c in self.protocol.categories] if categories is None else list(categories)
        imgs = [_as_image(x) for x in images]
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
    def _triples(self, labels: Sequence[LabelRecord], images: Mapping[str, Image.Image | bytes]
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
        return shas, [_as_image(images[s]) for s in shas], triples

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
                logp, mask = self.base.row_logprobs(feats, rows[s:s + self.base.max_rows])
                nll -= float(logp.sum())
                n_tok += float(mask.sum())
        return nll / n_tok

    def finetune(self, labels: Sequence[LabelRecord], images: Mapping[str, Image.Image | bytes],
                 round: int | None = None, *, steps: int = 20, lr: float = 1e-3, batch_size: int = 8,
                 rank: int | None = None, alpha: float | None = None, dropout: float | None = None,
                 qformer: bool | None = None, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
                 seed: int = 0) -> VLMAnnotator:
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
                raise ValueError(f"round {self.round + 1} continues the parent's adapter {spec.to_dict()}; "
                                 f"cannot change {clash}")
        else:
            r = int(rank) if rank is not None else 8
            spec = LoraSpec(r=r, alpha=float(alpha) if alpha is not None else 2.0 * r,
                            dropout=float(dropout) if dropout is not None else 0.05,
                            qformer=bool(qformer) if qformer is not None else False)
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
                        batch = []
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
            adapter = _Adapter.from_state(spec, get_peft_model_state_dict(base._peft, adapter_name=slot))
            base._slot_owner[slot] = adapter.digest
        log = {"steps": int(steps), "lr": float(lr), "batch_size": int(batch_size), "seed": int(seed),
               "weight_decay": float(weight_decay), "max_grad_norm": float(max_grad_norm),
               "n_labels": len(labels), "n_images": len(imgs), "losses": losses,
               "trainable": sorted(n for n, _ in named),
               "n_trainable": int(sum(p.numel() for _, p in named))}
        return self._derive(adapter, rnd, self.lineage + (self.version,), log)

    # -- persistence ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        b = self.base
        return {
            "kind": self.kind, "format": FORMAT_VERSION, "version": self.version, "round": self.round,
            "lineage": list(self.lineage),
            "base": {"model_id": b.model_id, "model_type": b.model_type, "digest": b.digest,
                     "identity": b.identity, "decoder_only": b.decoder_only,
                     "dtype": str(b.dtype).removeprefix("torch.")},
            "lora": self.lora_config, "adapter_sha256": self.adapter_digest,
            "inference": self.inference_config, "protocol_version": self.protocol.version,
            "train": {k: v for k, v in self.train_log.items() if k != "trainable"},
        }

    def save(self, path: str | Path | None = None) -> bytes:
        """Zip of ``meta.json`` (+ ``adapter_model.safetensors``, ``adapter_config.json``); no base weights.

        Deterministic: the same annotator always gives the same bytes.
        """
        files = {"meta.json": json.dumps(self.meta(), indent=2, sort_keys=True, default=str).encode()}
        if self._adapter is not None:
            cfg = self._adapter.spec.peft_config().to_dict()
            cfg = json.loads(json.dumps(cfg, default=lambda o: sorted(o) if isinstance(o, set)
                                        else getattr(o, "value", str(o))))
            files["adapter_config.json"] = json.dumps(cfg, indent=2, sort_keys=True).encode()
            files["adapter_model.safetensors"] = self._adapter.blob
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
        data = buf.getvalue()
        if path is not None:
            Path(path).write_bytes(data)
        return data

    @classmethod
    def load(cls, src: str | os.PathLike | bytes, protocol: Protocol | None = None,
             base_model: VLMBase | VLMAnnotator | str | os.PathLike | None = None,
             **base_kwargs: Any) -> VLMAnnotator:
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
            base = VLMBase.from_pretrained(meta["base"]["model_id"] if base_model is None else base_model,
                                           **base_kwargs)
        else:
            raise TypeError("base_model must be a VLMBase, a VLMAnnotator, a model id / path or None "
                            f"(a bare model lacks its tokenizer and image processor), got {type(base_model).__name__}")
        if base.digest != meta["base"]["digest"]:
            raise ValueError(
                f"base model mismatch: the annotator was trained on {meta['base']['model_id']!r} "
                f"(identity {meta['base']['digest']}, dtype {meta['base'].get('dtype')}), got {base.model_id!r} "
                f"(identity {base.digest}); load the same checkpoint in the same dtype")
        adapter = None
        if blob is not None:
            if _sha(blob) != meta["adapter_sha256"]:
                raise ValueError("corrupt VLM annotator: adapter weights do not match their recorded digest")
            adapter = _Adapter.from_bytes(LoraSpec.from_dict(meta["lora"]), blob)
        inf = meta["inference"]
        ann = cls(base, protocol, adapter=adapter, round=meta["round"], lineage=meta["lineage"],
                  prompt=inf["prompt"], length_norm=inf["length_norm"], answer_eos=inf["answer_eos"],
                  train_log=meta.get("train"))
        if ann.version != meta["version"]:
            raise ValueError(f"corrupt VLM annotator: version {ann.version} != recorded {meta['version']}")
        return ann


# --------------------------------------------------------------------------------------------------
# A tiny offline model (tests, local runs)
# --------------------------------------------------------------------------------------------------
@cache
def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from cosmicman.core.tokenizer import clip_vocab_and_merges

    return clip_vocab_and_merges()


def _clip_tokenizer():
    """A fresh (mutable) CLIP BPE tokenizer from the open-clip wheel's vocabulary; no hub."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=512,
                         bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                         unk_token="<|endoftext|>")


def _tiny_from_id(model_id: str, **kwargs: Any) -> VLMAnnotator:
    try:
        spec = dict(kv.split("=", 1) for kv in model_id[len(TINY_SCHEME):].split(",") if kv)
        seed, family, language = int(spec["seed"]), spec["family"], spec["language"]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"bad tiny VLM id {model_id!r}") from exc
    return build_tiny_vlm(seed=seed, family=family, language=language, **kwargs)


def build_tiny_vlm(seed: int = 0, *, family: str = "blip-2", language: str = "opt",
                   protocol: Protocol | None = None, image_size: int = 32, hidden: int = 32,
                   num_query_tokens: int = 4, dtype: Any = None, device: str | torch.device | None = None,
                   **annotator_kwargs: Any) -> VLMAnnotator:
    """A tiny random BLIP-2 / InstructBLIP (``language``: ``"opt"`` decoder-only or ``"t5"``
    encoder-decoder) built from configs, with the CLIP BPE tokenizer (open-clip wheel, vocab 49408 +
    ``<image>``) and a ``BlipImageProcessorPil`` built from arguments (a ``Blip2Processor`` /
    ``InstructBlipProcessor`` is attached as ``base.processor``). Nothing is downloaded.

    Built in float32 on the CPU, then moved to ``dtype`` / ``device`` if given.
    Deterministic in ``seed`` (weights drawn under a forked RNG); its ``model_id``
    (``tiny-vlm:family=...,language=...,seed=...``) lets :meth:`VLMAnnotator.load` rebuild it.
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
    )
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    if family not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"family must be one of {SUPPORTED_MODEL_TYPES}")
    if language not in ("opt", "t5"):
        raise ValueError("language must be 'opt' or 't5'")
    tok = _clip_tokenizer()
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    qtok = _clip_tokenizer() if family == "instructblip" else None
    if family == "blip-2":
        processor = Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=num_query_tokens)
    else:
        processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=tok, qformer_tokenizer=qtok,
                                          num_query_tokens=num_query_tokens)
    vocab = len(tok)  # the processor added <image>
    image_token = tok.convert_tokens_to_ids("<image>")
    heads = 2
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=heads,
                  image_size=image_size, patch_size=image_size // 4, attention_dropout=0.0,
                  initializer_range=0.1)
    qformer = dict(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads, intermediate_size=2 * hidden,
                   encoder_hidden_size=hidden, vocab_size=len(qtok) if qtok is not None else vocab,
                   pad_token_id=tok.pad_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                   max_position_embeddings=128)
    if language == "opt":
        text = dict(model_type="opt", hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=2,
                    num_attention_heads=heads, vocab_size=vocab, word_embed_proj_dim=hidden,
                    max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                    init_std=0.2)
    else:
        text = dict(model_type="t5", d_model=hidden, d_ff=2 * hidden, d_kv=hidden // heads, num_layers=2,
                    num_decoder_layers=2, num_heads=heads, vocab_size=vocab, relative_attention_num_buckets=8,
                    dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                    decoder_start_token_id=tok.pad_token_id)
    if family == "blip-2":
        config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                             num_query_tokens=num_query_tokens, image_token_index=image_token,
                             initializer_range=0.3)
        model_cls = Blip2ForConditionalGeneration
    else:
        config = InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text,
                                    num_query_tokens=num_query_tokens, image_token_index=image_token,
                                    initializer_range=0.3)
        model_cls = InstructBlipForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = model_cls(config)
        with torch.no_grad():
            # HF initialises query_tokens to zeros (a checkpoint fills them): random here, so the
            # queries differ from one another and the image matters.
            model.query_tokens.normal_(0.0, 0.02)
            # Token embeddings (the LM head too where tied) with std 0.3 rather than 0.02: with 0.02 the
            # tiny LM's logits are ~0 for all 49k tokens, a flat answer distribution that LoRA on the
            # attention projections can barely move; 0.3 gives a peaked, learnable one. Likewise the
            # init scales above (BLIP-2's vision default is 1e-10, OPT's 0.02) are raised so that the
            # image reaches the answer scores at all in a random 32-dim model.
            model.language_model.get_input_embeddings().weight.normal_(0.0, 0.3)
    if dtype is not None or device is not None:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        model = model.to(device=dev, dtype=_resolve_dtype(dtype, torch.device("cpu")))
    model_id = f"{TINY_SCHEME}family={family},language={language},seed={int(seed)}"
    base = VLMBase(model.eval(), tok, image_processor, model_id=model_id, qformer_tokenizer=qtok)
    base.processor = processor
    return VLMAnnotator(base, protocol, **annotator_kwargs)
