"""The versioned test prompt set: the version follows the prompts' content and nothing else; errors in one line."""

from __future__ import annotations

import json

import pytest

from cosmicman.evaluation.prompt_set import (
    PAPER_PROMPT_COUNT,
    PromptSet,
    prompt_set_version,
    read_prompt_set,
    write_prompt_set,
)
from cosmicman.simulation.prompts import synthetic_test_attributes

PROMPTS = synthetic_test_attributes(30_000, 6)


def test_written_and_read_back_the_same_prompts_and_version(tmp_path):
    url = str(tmp_path / "prompts.jsonl")
    version = write_prompt_set(PROMPTS, url)
    ps = read_prompt_set(url)
    assert ps.prompts == tuple(PROMPTS) and ps.version == version and ps.source == url and len(ps) == 6
    assert version.startswith("ps-") and version.endswith("-n6")


def test_the_version_changes_when_one_prompt_changes_and_not_otherwise(tmp_path):
    base = prompt_set_version(PROMPTS)
    changed = [dict(p) for p in PROMPTS]
    changed[3]["lighting"] = "dim" if changed[3]["lighting"] == "bright" else "bright"
    assert prompt_set_version(changed) != base
    assert prompt_set_version(PROMPTS[::-1]) != base  # order pairs prompts with images and seeds
    assert prompt_set_version(PROMPTS[:5]) != base
    # key order, spacing, blank lines and the file's place do not count
    url = tmp_path / "shuffled.jsonl"
    lines = [json.dumps(dict(reversed(list(p.items()))), indent=None, separators=(" , ", " : ")) for p in PROMPTS]
    url.write_text("\n\n".join(lines) + "\n\n", encoding="utf-8")
    assert read_prompt_set(str(url)).version == base
    assert PromptSet.from_prompts(PROMPTS, "memory").version == base


def test_limit_reads_the_first_prompts_and_versions_those(tmp_path):
    url = str(tmp_path / "p.jsonl")
    write_prompt_set(PROMPTS, url)
    ps = read_prompt_set(url, limit=4)
    assert ps.prompts == tuple(PROMPTS[:4]) and ps.version == prompt_set_version(PROMPTS[:4])


def test_any_fsspec_url(tmp_path):
    url = "memory://prompt-set-test/p.jsonl"
    write_prompt_set(PROMPTS, url)
    assert read_prompt_set(url).version == prompt_set_version(PROMPTS)


def test_production_count_is_the_papers_and_is_enforced_when_asked(tmp_path):
    assert PAPER_PROMPT_COUNT == 2048
    url = str(tmp_path / "p.jsonl")
    write_prompt_set(PROMPTS, url)
    with pytest.raises(ValueError, match="holds 6 test prompts, 2048 expected"):
        read_prompt_set(url, expected_count=PAPER_PROMPT_COUNT)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"gender": "man"}\n{"gender": \n', r"line 2: not JSON"),
        ('["gender", "man"]\n', r"line 1: expected a non-empty \{attribute: value\} object, got list"),
        ('{"gender": 1}\n', r"line 1: every attribute and value must be a string"),
        ('{"gender": "robot"}\n', r"line 1: gender='robot' is not in its vocabulary"),
        ("\n\n", r"holds no test prompts"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_line(tmp_path, text, message):
    url = tmp_path / "bad.jsonl"
    url.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as err:
        read_prompt_set(str(url))
    assert "\n" not in str(err.value)


def test_a_missing_file_says_what_to_set(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot read the test prompts file .*one \{attribute: value\}"):
        read_prompt_set(str(tmp_path / "absent.jsonl"))
