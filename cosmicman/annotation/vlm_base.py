"""The shared, frozen BLIP-2 / InstructBLIP base model (:class:`VLMBase`) and a tiny offline one for tests."""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cosmicman.annotation.vlm_lora import (
    SUPPORTED_MODEL_TYPES,
    TINY_SCHEME,
    WEIGHT_FILES,
    LoraAdapter,
    LoraSpec,
    ScoredRow,
    VLMWeightsUnavailableError,
    base_identity,
    canonical_json,
    resolve_dtype,
    scatter_logprobs,
    sha_hex,
    weights_needed_message,
)
from cosmicman.annotation.vlm_tiny import build_tiny_vlm_parts


# --------------------------------------------------------------------------------------------------
# The shared base model
# --------------------------------------------------------------------------------------------------
class VLMBase:
    """A loaded BLIP-2 / InstructBLIP model with its tokenizer(s) and image processor, frozen and shared.

    ``model_id`` is what it was loaded from (hub id, path, or a ``tiny-vlm:`` builder spec); ``identity``
    / ``digest`` identify the checkpoint (see :func:`base_identity`). Holds the LoRA slots injected by
    fine-tuning and a lock that serialises use of the model.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        model_id: str,
        qformer_tokenizer: Any = None,
        max_rows: int = 64,
        image_batch_size: int = 16,
    ):
        model_type = getattr(model.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported VLM model_type {model_type!r}; expected one of {SUPPORTED_MODEL_TYPES}")
        if model_type == "instructblip" and qformer_tokenizer is None:
            raise ValueError("InstructBLIP needs its qformer_tokenizer")
        self.model: Any = model.eval()
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
        self.digest = sha_hex(canonical_json(self.identity))[:16]
        self.lock = threading.RLock()
        self._peft: Any = None
        self.processor: Any = None
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
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        *,
        dtype: Any = None,
        device: str | torch.device | None = None,
        local_files_only: bool = True,
        revision: str | None = None,
        max_rows: int = 64,
        image_batch_size: int = 16,
        **model_kwargs: Any,
    ) -> VLMBase:
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
            return _tiny_from_id(src, dtype=dtype, device=device)
        path = Path(src).expanduser()
        is_local = path.exists()
        if not is_local and (
            src.startswith(("/", ".", "~")) or src.count("/") > 1 or "\\" in src or isinstance(model_id_or_path, Path)
        ):
            raise VLMWeightsUnavailableError(weights_needed_message(src, "no such local directory"))
        if is_local:
            if not path.is_dir():
                raise VLMWeightsUnavailableError(weights_needed_message(src, "the path is not a directory"))
            if not (path / "config.json").is_file():
                raise VLMWeightsUnavailableError(weights_needed_message(src, "the directory has no config.json"))
            if not any((path / f).is_file() for f in WEIGHT_FILES):
                raise VLMWeightsUnavailableError(weights_needed_message(src, "the directory has no model weights"))
            src = str(path)
        hub: dict[str, Any] = dict(local_files_only=local_files_only, revision=revision)
        try:
            config = AutoConfig.from_pretrained(src, **hub)
        except (OSError, ValueError) as exc:
            raise VLMWeightsUnavailableError(weights_needed_message(src, f"{type(exc).__name__}: {exc}")) from exc
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"{src!r} is a {model_type!r} model; the VLM annotator loads {SUPPORTED_MODEL_TYPES}")
        model_cls = Blip2ForConditionalGeneration if model_type == "blip-2" else InstructBlipForConditionalGeneration
        dev = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        try:
            model: Any = model_cls.from_pretrained(src, dtype=resolve_dtype(dtype, dev), **hub, **model_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(src, **hub)
            image_processor = AutoImageProcessor.from_pretrained(src, **hub)
            qformer_tokenizer = (
                AutoTokenizer.from_pretrained(src, subfolder="qformer_tokenizer", **hub)
                if model_type == "instructblip"
                else None
            )
        except OSError as exc:
            raise VLMWeightsUnavailableError(weights_needed_message(src, f"{type(exc).__name__}: {exc}")) from exc
        if "device_map" not in model_kwargs:
            model = model.to(dev)
        return cls(
            model,
            tokenizer,
            image_processor,
            model_id=os.fspath(model_id_or_path),
            qformer_tokenizer=qformer_tokenizer,
            max_rows=max_rows,
            image_batch_size=image_batch_size,
        )

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

    def fresh_adapter(self, spec: LoraSpec, seed: int = 0) -> LoraAdapter:
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
            return LoraAdapter.from_state(spec, get_peft_model_state_dict(self._peft, adapter_name=slot))

    def _load_slot(self, adapter: LoraAdapter) -> str:
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
    def using(self, adapter: LoraAdapter | None) -> Iterator[None]:
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
                if joint[: len(head)] == head:
                    ids = joint[len(head) :]
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
            pv = self.pixel_values(images[i : i + self.image_batch_size])
            if self.model_type == "blip-2":
                out.append(self.model.get_image_features(pixel_values=pv, return_dict=True).pooler_output)
            else:
                out.append(self.model.vision_model(pixel_values=pv, return_dict=True).last_hidden_state)
        return torch.cat(out)

    def _queries(self, feats: torch.Tensor, rows: Sequence[ScoredRow]) -> torch.Tensor:
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
                qids[i, : len(ids)] = torch.tensor(ids)
                qmask[i, : len(ids)] = 1
            vis = feats.index_select(0, torch.tensor([k[0] for k in keys], device=feats.device))
            tokens = self.model.query_tokens.expand(len(keys), -1, -1)
            nq = tokens.shape[1]
            attn = torch.cat([torch.ones(tokens.shape[:2], dtype=torch.long, device=feats.device), qmask], 1)
            out = self.model.qformer(
                input_ids=qids,
                attention_mask=attn,
                query_embeds=tokens,
                encoder_hidden_states=vis,
                encoder_attention_mask=torch.ones(vis.shape[:2], dtype=torch.long, device=feats.device),
                return_dict=True,
            )
            qk = proj(out[0][:, :nq].to(proj.weight.dtype))
            q = qk.index_select(0, torch.tensor([where[(r.image, r.qprompt)] for r in rows], device=feats.device))
        return q

    # -- teacher-forced answer log-likelihoods ----------------------------------------------------------
    def row_logprobs(self, feats: torch.Tensor, rows: Sequence[ScoredRow]) -> tuple[torch.Tensor, torch.Tensor]:
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
            qpos[i, off : off + nq] = True
            ids[i, off + nq : nq + p_len] = torch.tensor(r.prompt)
            ids[i, nq + p_len : nq + p_len + len(r.answer)] = torch.tensor(r.answer)
            mask[i, off : nq + p_len + len(r.answer)] = 1
            labels[i, : len(r.answer)] = torch.tensor(r.answer)
            amask[i, : len(r.answer)] = True
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
            keep[:, nq + p_len - 1 : nq + p_len - 1 + a_len] = amask
            try:
                out = lm(**kwargs, logits_to_keep=keep).logits
                if out.ndim == 2 and out.shape[0] == n_true:
                    logits = out
            except (TypeError, IndexError):
                logits = None
            if logits is None:  # a model without mask support: keep the last a_len + 1 positions
                logits = lm(**kwargs, logits_to_keep=a_len + 1).logits[:, -(a_len + 1) : -1][amask]
        else:
            logits = lm(**kwargs).logits[:, -(a_len + 1) : -1][amask]
        return scatter_logprobs(logits, labels, amask), amask

    def _encoder_decoder_logprobs(self, feats, rows):
        from transformers.modeling_outputs import BaseModelOutput

        lm = self.model.language_model
        dev = self.device
        keys = list(dict.fromkeys((r.image, r.prompt, r.qprompt) for r in rows))
        where = {k: i for i, k in enumerate(keys)}
        uniq = [ScoredRow(k[0], k[1], (), k[2]) for k in keys]
        q = self._queries(feats, uniq)
        n_keys, nq = q.shape[0], q.shape[1]
        p_len = max(len(k[1]) for k in keys)
        ids = torch.full((n_keys, nq + p_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_keys, nq + p_len), dtype=torch.long)
        mask[:, :nq] = 1
        for i, k in enumerate(keys):
            ids[i, nq : nq + len(k[1])] = torch.tensor(k[1])
            mask[i, nq : nq + len(k[1])] = 1
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
            labels[i, : len(r.answer)] = torch.tensor(r.answer)
            dec[i, 0] = self.decoder_start_id
            dec[i, 1 : len(r.answer)] = torch.tensor(r.answer[:-1])
            amask[i, : len(r.answer)] = True
        labels, dec, amask = labels.to(dev), dec.to(dev), amask.to(dev)
        out = lm(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc.index_select(0, sel)),
            attention_mask=mask.index_select(0, sel),
            decoder_input_ids=dec,
            decoder_attention_mask=amask.long(),
            use_cache=False,
            return_dict=True,
        )
        return scatter_logprobs(out.logits[amask], labels, amask), amask


# --------------------------------------------------------------------------------------------------
# The tiny offline model (tests, local runs)
# --------------------------------------------------------------------------------------------------
def _tiny_from_id(model_id: str, **kwargs: Any) -> VLMBase:
    try:
        spec = dict(kv.split("=", 1) for kv in model_id[len(TINY_SCHEME) :].split(",") if kv)
        seed, family, language = int(spec["seed"]), spec["family"], spec["language"]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"bad tiny VLM id {model_id!r}") from exc
    return build_tiny_vlm_base(seed=seed, family=family, language=language, **kwargs)


def build_tiny_vlm_base(seed: int = 0, **kwargs: Any) -> VLMBase:
    """:class:`VLMBase` over :func:`~cosmicman.annotation.vlm_tiny.build_tiny_vlm_parts` (same arguments);
    its ``model_id`` lets :meth:`VLMAnnotator.load` rebuild it."""
    parts = build_tiny_vlm_parts(seed, **kwargs)
    base = VLMBase(
        parts.model,
        parts.tokenizer,
        parts.image_processor,
        model_id=parts.model_id,
        qformer_tokenizer=parts.qformer_tokenizer,
    )
    base.processor = parts.processor  # what a Hugging Face pipeline over this base would use
    return base
