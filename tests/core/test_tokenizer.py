"""The real CLIP tokenizer built from open-clip-torch's shipped BPE file (no hub, no open_clip import)."""

import subprocess
import sys

import pytest

from cosmicman.core.tokenizer import (
    BOS_ID,
    EOS_ID,
    MODEL_MAX_LENGTH,
    VOCAB_SIZE,
    bpe_vocab_path,
    clip_vocab_and_merges,
    load_clip_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


def test_vocab_and_special_tokens(tok):
    assert (len(tok), VOCAB_SIZE, MODEL_MAX_LENGTH) == (49408, 49408, 77)
    assert tok.model_max_length == 77
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407) == (BOS_ID, EOS_ID, EOS_ID)
    assert tok.convert_ids_to_tokens([320, 1125, 2368, 49406, 49407]) == [
        "a</w>",
        "photo</w>",
        "cat</w>",
        "<|startoftext|>",
        "<|endoftext|>",
    ]


@pytest.mark.parametrize(
    "text, ids",
    [
        # as openai/clip-vit-large-patch14 (SD-1.5's tokenizer) encodes them
        ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
        ("a photo of a dog", [49406, 320, 1125, 539, 320, 1929, 49407]),
        ("hello world", [49406, 3306, 1002, 49407]),
        ("A Photo  OF a Cat", [49406, 320, 1125, 539, 320, 2368, 49407]),  # lower-cased, whitespace folded
    ],
)
def test_known_ids(tok, text, ids):
    assert tok(text).input_ids == ids


def test_padding_and_truncation(tok):
    ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and set(ids[7:]) == {49407}
    long = tok(" ".join(["cat"] * 200), padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407


def test_roundtrip_punctuation(tok):
    ids = tok("red striped long-sleeved top, blue long pants").input_ids
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "redstripedlong-sleevedtop,bluelongpants"


def test_vocab_file_and_cache(tok):
    path = bpe_vocab_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.parent.name == "open_clip"
    vocab, merges = clip_vocab_and_merges(path)
    assert len(vocab) == 49408 and len(merges) == 48894 and vocab["<|endoftext|>"] == 49407
    assert load_clip_tokenizer() is tok


def test_open_clip_never_imported():
    code = (
        "import sys; from cosmicman.core.tokenizer import load_clip_tokenizer; load_clip_tokenizer(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('open_clip', 'torchvision')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"  # the modules it imported from either package
