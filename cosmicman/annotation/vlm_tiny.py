"""A tiny random BLIP-2 / InstructBLIP built from configs, for tests and local runs: nothing downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from cosmicman.annotation.vlm_lora import SUPPORTED_MODEL_TYPES, TINY_SCHEME, resolve_dtype


@dataclass(frozen=True)
class TinyVlmParts:
    """What :class:`~cosmicman.annotation.vlm_base.VLMBase` wraps: the model, its tokenizers and processors."""

    model: Any
    tokenizer: Any
    image_processor: Any
    qformer_tokenizer: Any
    processor: Any
    model_id: str


@cache
def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from cosmicman.core.tokenizer import clip_vocab_and_merges

    return clip_vocab_and_merges()


def _clip_tokenizer():
    """A fresh (mutable) CLIP BPE tokenizer from the open-clip wheel's vocabulary; no hub."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=512,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def build_tiny_vlm_parts(
    seed: int = 0,
    *,
    family: str = "blip-2",
    language: str = "opt",
    image_size: int = 32,
    hidden: int = 32,
    num_query_tokens: int = 4,
    dtype: Any = None,
    device: str | torch.device | None = None,
) -> TinyVlmParts:
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
    processor: Any
    config: Any
    model_cls: Any
    if family == "blip-2":
        processor = Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=num_query_tokens)
    else:
        processor = InstructBlipProcessor(
            image_processor=image_processor, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=num_query_tokens
        )
    vocab = len(tok)  # the processor added <image>
    image_token = tok.convert_tokens_to_ids("<image>")
    heads = 2
    vision = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=image_size // 4,
        attention_dropout=0.0,
        initializer_range=0.1,
    )
    qformer = dict(
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        encoder_hidden_size=hidden,
        vocab_size=len(qtok) if qtok is not None else vocab,
        pad_token_id=tok.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=128,
    )
    if language == "opt":
        text = dict(
            model_type="opt",
            hidden_size=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=heads,
            vocab_size=vocab,
            word_embed_proj_dim=hidden,
            max_position_embeddings=128,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            init_std=0.2,
        )
    else:
        text = dict(
            model_type="t5",
            d_model=hidden,
            d_ff=2 * hidden,
            d_kv=hidden // heads,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=heads,
            vocab_size=vocab,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id,
        )
    config_cls, model_cls = (
        (Blip2Config, Blip2ForConditionalGeneration)
        if family == "blip-2"
        else (InstructBlipConfig, InstructBlipForConditionalGeneration)
    )
    config = config_cls(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text,
        num_query_tokens=num_query_tokens,
        image_token_index=image_token,
        initializer_range=0.3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model: Any = model_cls(config)
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
        model = model.to(device=dev, dtype=resolve_dtype(dtype, torch.device("cpu")))
    model_id = f"{TINY_SCHEME}family={family},language={language},seed={int(seed)}"
    return TinyVlmParts(model.eval(), tok, image_processor, qtok, processor, model_id)
