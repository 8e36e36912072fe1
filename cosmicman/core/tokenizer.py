"""The real CLIP BPE tokenizer (as SD-1.5 / SDXL use it), built without a model hub.

The BPE merges ship inside the ``open-clip-torch`` wheel as ``open_clip/bpe_simple_vocab_16e6.txt.gz``.
``open_clip`` itself is never imported (its ``__init__`` needs torch/torchvision): the file is located
through the import system's spec only, which reads the package's location without executing it.

The vocabulary is rebuilt exactly as open_clip's ``SimpleTokenizer`` (and OpenAI's CLIP) do: 256 byte
symbols, the same with ``</w>``, the first 48894 merges, then ``<|startoftext|>`` (49406) and
``<|endoftext|>`` (49407) — 49408 ids, identical to ``openai/clip-vit-large-patch14``'s ``vocab.json``.

transformers 5.x note: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently ignores those keywords
and gives a 3-token tokenizer; the vocabulary and merges must go in as ``vocab=`` / ``merges=``.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import cache
from pathlib import Path

from transformers import CLIPTokenizer

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = 49406, 49407
PAD_ID = EOS_ID  # SD-1.5's tokenizer pads with <|endoftext|>
_N_MERGES = 49152 - 256 - 2  # as in OpenAI CLIP / open_clip


def bpe_vocab_path() -> Path:
    """Path of the BPE merges file shipped by open-clip-torch, found without importing ``open_clip``."""
    spec = importlib.util.find_spec("open_clip")  # a top-level spec: the package is not executed
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{VOCAB_FILENAME} not found; install the CLIP vocabulary with `pip install --no-deps open-clip-torch==3.3.0`"
    )


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_and_merges(path: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP ``vocab`` (token -> id) and ordered ``merges`` from the gzipped BPE file."""
    with gzip.open(path or bpe_vocab_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    pairs = [line.split() for line in lines[1 : _N_MERGES + 1]]
    if len(pairs) != _N_MERGES or any(len(p) != 2 for p in pairs):
        raise ValueError("unexpected BPE merges file layout")
    merges = [(p[0], p[1]) for p in pairs]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab, merges


@cache
def load_clip_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer of SD-1.5 (vocab 49408, max length 77, BOS 49406, EOS = PAD 49407). Cached."""
    vocab, merges = clip_vocab_and_merges()
    # transformers annotates merges as list[str], but its tokenizers.BPE backend takes only (a, b) pairs
    tok = CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        model_max_length=MODEL_MAX_LENGTH,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
    )
    if (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) != (VOCAB_SIZE, BOS_ID, EOS_ID, PAD_ID):
        raise RuntimeError("CLIPTokenizer did not take the CLIP vocabulary (transformers API change?)")
    return tok
