"""The judge of semantic accuracy: answers yes/no questions about an image.

The judge is configured on its own (:class:`JudgeSpec`: its name, its local path), never taken from the
flywheel's annotator: an annotator that labelled the training data and then grades the model trained on
it would grade its own biases. Every result records the judge's name and version.

Production judge (:class:`VQAJudge`): an image-text-to-text VQA model (BLIP-2, InstructBLIP, LLaVA and
the other ``AutoModelForImageTextToText`` families) loaded with ``AutoProcessor`` from a local folder;
nothing is downloaded. It is asked "<question> Answer yes or no." and its answer is read from the first
generated token, restricted to yes and no: the larger of the two next-token logits wins (VQAScore's
reading, Lin et al. 2024), so a model that would ramble past the answer still gives one, and the
probability of yes is kept beside it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from cosmicman.evaluation.questions import NO, YES, Question

VQA_KIND = "vqa"
DEFAULT_QUESTION_TEMPLATE = "Question: {question} Answer yes or no. Answer:"
# files hashed whole into a VQA judge's version (configs, tokenizers); larger ones (weights) by name,
# size and their first and last MiB, so that a version costs milliseconds and not a pass over 15 GB
_WHOLE_FILE_LIMIT = 4 << 20
_EDGE = 1 << 20


@runtime_checkable
class Judge(Protocol):
    """Answers yes/no questions about images. ``name`` / ``version`` identify it in every result."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def answer(self, images: Sequence[Image.Image], questions: Sequence[Sequence[Question]]) -> list[list[str]]:
        """``"yes"`` / ``"no"`` to each of ``questions[i]`` about ``images[i]``."""
        ...


@dataclass(frozen=True)
class JudgeSpec:
    """How to build the production judge: ``kind`` (``"vqa"``), ``path`` (a local model folder) and the
    ``name`` results show (default: the folder's name). Separate from the annotator's settings."""

    kind: str
    path: str
    name: str = ""
    device: str | None = None
    dtype: str | None = None
    question_template: str = DEFAULT_QUESTION_TEMPLATE

    @property
    def display_name(self) -> str:
        return self.name or f"{self.kind}:{Path(self.path).name}"


def load_judge(spec: JudgeSpec) -> Judge:
    """The production judge ``spec`` names; one-line errors for an unknown kind or an absent model."""
    if spec.kind != VQA_KIND:
        raise ValueError(
            f"unknown judge kind {spec.kind!r}: production builds {VQA_KIND!r} (a local VQA model folder); "
            "the local environment brings its own judge"
        )
    return VQAJudge.load(spec)


def folder_version(path: str | os.PathLike) -> str:
    """A content fingerprint of a model folder (see ``_WHOLE_FILE_LIMIT``): 16 hex digits."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= _WHOLE_FILE_LIMIT:
                h.update(fh.read())
            else:
                h.update(fh.read(_EDGE))
                fh.seek(size - _EDGE)
                h.update(fh.read(_EDGE))
    return h.hexdigest()[:16]


def _answer_token_ids(tokenizer: Any, word: str) -> set[int]:
    """First-token ids of the word's spellings (lower / capitalised, with or without a leading space)."""
    ids = set()
    for spelling in (word, word.capitalize(), f" {word}", f" {word.capitalize()}"):
        tokens = tokenizer(spelling, add_special_tokens=False).input_ids
        if tokens:
            ids.add(int(tokens[0]))
    return ids


class VQAJudge:
    """A local VQA model as the judge (see the module docstring). Build with :meth:`load`."""

    def __init__(self, model: Any, processor: Any, spec: JudgeSpec, version: str, batch_size: int = 32):
        import torch

        self.model, self.processor, self.spec = model.eval(), processor, spec
        self._version = version
        self.batch_size = int(batch_size)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # decoder-only models continue the last position of every row
        self._yes = sorted(_answer_token_ids(tokenizer, YES))
        self._no = sorted(_answer_token_ids(tokenizer, NO))
        if not self._yes or not self._no or set(self._yes) & set(self._no):
            raise ValueError(f"the judge's tokenizer does not tell yes {self._yes} from no {self._no}")
        self._device = torch.device(spec.device) if spec.device else next(model.parameters()).device

    @classmethod
    def load(cls, spec: JudgeSpec) -> VQAJudge:
        """Load processor and model from ``spec.path`` (local files only)."""
        path = Path(spec.path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no VQA judge model at {str(path)!r} (no config.json): put a saved image-text-to-text model "
                "(e.g. BLIP-2, InstructBLIP, LLaVA) there or set the judge path; nothing is downloaded"
            )
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = getattr(torch, spec.dtype) if spec.dtype else torch.float32
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model: Any = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype)
        if spec.device:
            model = model.to(spec.device)
        return cls(model, processor, spec, folder_version(path))

    @property
    def name(self) -> str:
        return self.spec.display_name

    @property
    def version(self) -> str:
        return self._version

    def prompt(self, question: Question) -> str:
        return self.spec.question_template.format(question=question.text)

    def p_yes(self, image: Image.Image, questions: Sequence[Question]) -> list[float]:
        """P(yes | yes or no) of each question about ``image``, from the first answer token's logits."""
        import torch

        out: list[float] = []
        image = image.convert("RGB")
        for start in range(0, len(questions), self.batch_size):
            chunk = questions[start : start + self.batch_size]
            inputs = self.processor(
                images=[image] * len(chunk), text=[self.prompt(q) for q in chunk], return_tensors="pt", padding=True
            ).to(self._device)
            with torch.no_grad():
                generated = self.model.generate(
                    **inputs, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True
                )
            logits = generated.scores[0].float()
            yes = logits[:, self._yes].max(dim=1).values
            no = logits[:, self._no].max(dim=1).values
            out += torch.sigmoid(yes - no).tolist()
        return out

    def answer(self, images: Sequence[Image.Image], questions: Sequence[Sequence[Question]]) -> list[list[str]]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} question lists")
        return [[YES if p > 0.5 else NO for p in self.p_yes(img, qs)] for img, qs in zip(images, questions)]
