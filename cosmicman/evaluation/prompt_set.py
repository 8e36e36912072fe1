"""The versioned test prompt set: people described by their protocol attributes, one per generated image.

A prompts file is JSON lines (any fsspec URL), one ``{attribute: value}`` object per line, blank lines
skipped. The paper evaluates on 2,048 such prompts (:data:`PAPER_PROMPT_COUNT`); the local environment
uses a small set. The version is a hash of the prompts' content in order (each prompt as canonical JSON,
so key order and spacing in the file do not count) plus their count: ``ps-<12 hex>-n<count>``. The same
prompts give the same version wherever they are read from; any changed, added, removed or reordered
prompt gives another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from cosmicman.core.protocol import Protocol, load_protocol
from cosmicman.evaluation.questions import check_prompt

PAPER_PROMPT_COUNT = 2048


def prompt_set_version(prompts: Sequence[Mapping[str, str]]) -> str:
    """``ps-<first 12 hex of sha256 over the canonical prompts>-n<count>``."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps(dict(p), sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")
    return f"ps-{h.hexdigest()[:12]}-n{len(prompts)}"


@dataclass(frozen=True)
class PromptSet:
    """Test prompts (each a person's attributes), their version and where they were read from."""

    prompts: tuple[dict[str, str], ...]
    version: str
    source: str

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_prompts(
        cls, prompts: Sequence[Mapping[str, str]], source: str, protocol: Protocol | None = None
    ) -> PromptSet:
        """A set from attributes in memory (checked against the protocol like a file's lines)."""
        protocol = protocol or load_protocol()
        checked = []
        for i, p in enumerate(prompts):
            checked.append(_checked_prompt(p, f"{source}: prompt {i}", protocol))
        if not checked:
            raise ValueError(f"{source}: no test prompts")
        return cls(tuple(checked), prompt_set_version(checked), source)


def _checked_prompt(raw: Any, where: str, protocol: Protocol) -> dict[str, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{where}: expected a non-empty {{attribute: value}} object, got {type(raw).__name__}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise ValueError(f"{where}: every attribute and value must be a string")
    prompt = dict(raw)
    try:
        check_prompt(protocol, prompt)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return prompt


def read_prompt_set(
    url: str,
    *,
    limit: int | None = None,
    expected_count: int | None = None,
    protocol: Protocol | None = None,
    **storage_options: Any,
) -> PromptSet:
    """The first ``limit`` prompts (all when None) of the JSON-lines file at ``url``.

    ``expected_count`` (e.g. :data:`PAPER_PROMPT_COUNT` in production) makes a set of another size an
    error. Every error is one line naming the file and the line.
    """
    protocol = protocol or load_protocol()
    try:
        with fsspec.open(url, "rt", encoding="utf-8", **storage_options) as f:
            lines = list(f)
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(
            f"cannot read the test prompts file {url!r} ({type(exc).__name__}): name a JSON-lines file "
            "with one {attribute: value} object per line"
        ) from None
    prompts: list[dict[str, str]] = []
    for number, line in enumerate(lines, start=1):
        if limit is not None and len(prompts) >= limit:
            break
        if not line.strip():
            continue
        where = f"{url} line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        prompts.append(_checked_prompt(raw, where, protocol))
    if not prompts:
        raise ValueError(f"{url} holds no test prompts: one {{attribute: value}} object per line")
    if expected_count is not None and len(prompts) != expected_count:
        raise ValueError(f"{url} holds {len(prompts)} test prompts, {expected_count} expected")
    return PromptSet(tuple(prompts), prompt_set_version(prompts), url)


def write_prompt_set(prompts: Sequence[Mapping[str, str]], url: str, **storage_options: Any) -> str:
    """Write ``prompts`` as JSON lines to ``url``; returns their version."""
    with fsspec.open(url, "wt", encoding="utf-8", **storage_options) as f:
        for p in prompts:
            f.write(json.dumps(dict(p), sort_keys=True) + "\n")
    return prompt_set_version(prompts)
