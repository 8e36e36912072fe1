"""The production judge's wiring: a tiny random BLIP-2 saved to a folder and loaded back by the judge's own
transformers code (its answers are random, the loading, prompting, yes/no reading and versioning are real)."""

from __future__ import annotations

import pytest
from PIL import Image

from cosmicman.evaluation.judge import (
    DEFAULT_QUESTION_TEMPLATE,
    Judge,
    JudgeSpec,
    VQAJudge,
    folder_version,
    load_judge,
)
from cosmicman.evaluation.questions import prompt_questions
from cosmicman.evaluation.semantic_accuracy import judge_semantic_accuracy

PROMPT = {"gender": "woman", "top_exists": "yes", "top_color": "red", "hat_exists": "no"}


@pytest.fixture(scope="module")
def tiny_vqa_folder(tmp_path_factory):
    from cosmicman.annotation.vlm_tiny import build_tiny_vlm_parts

    parts = build_tiny_vlm_parts(seed=3)
    folder = tmp_path_factory.mktemp("tiny-vqa")
    parts.model.save_pretrained(folder)
    parts.processor.save_pretrained(folder)
    return folder


def images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (40, 80), (30 * i, 200 - 30 * i, 90)) for i in range(n)]


def test_loads_from_a_local_folder_and_answers_yes_or_no_to_every_question(tiny_vqa_folder):
    judge = load_judge(JudgeSpec(kind="vqa", path=str(tiny_vqa_folder), name="tiny-blip2"))
    assert isinstance(judge, VQAJudge) and isinstance(judge, Judge)
    qs = [prompt_questions(PROMPT)] * 3
    answers = judge.answer(images(3), qs)
    assert [len(a) for a in answers] == [len(PROMPT) + 1] * 3
    assert {x for a in answers for x in a} <= {"yes", "no"}
    p = judge.p_yes(images(1)[0], qs[0])
    assert all(0.0 < x < 1.0 for x in p) and len(set(p)) > 1  # the image and the question reach the answer
    assert answers[0] == ["yes" if x > 0.5 else "no" for x in p]


def test_the_prompt_asks_for_yes_or_no(tiny_vqa_folder):
    judge = VQAJudge.load(JudgeSpec(kind="vqa", path=str(tiny_vqa_folder)))
    q = prompt_questions(PROMPT)[3]
    assert judge.prompt(q) == f"Question: {q.text} Answer yes or no. Answer:"
    assert DEFAULT_QUESTION_TEMPLATE.format(question="Q?").endswith("Answer yes or no. Answer:")


def test_the_result_names_the_judge_and_its_version(tiny_vqa_folder):
    judge = load_judge(JudgeSpec(kind="vqa", path=str(tiny_vqa_folder), name="tiny-blip2"))
    result = judge_semantic_accuracy(judge, images(2), [PROMPT, PROMPT], prompt_set_version="ps-test-n2")
    record = result.record()
    assert record["judge_name"] == "tiny-blip2"
    assert record["judge_version"] == folder_version(tiny_vqa_folder) == judge.version
    assert record["prompt_set_version"] == "ps-test-n2"
    assert 0.0 <= record["acc_all"] <= 1.0


def test_the_version_follows_the_folders_content(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    v1 = folder_version(tmp_path)
    assert folder_version(tmp_path) == v1 and len(v1) == 16
    (tmp_path / "config.json").write_text('{"a": 2}')
    assert folder_version(tmp_path) != v1


def test_an_absent_model_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no VQA judge model at .*nothing is downloaded") as err:
        load_judge(JudgeSpec(kind="vqa", path=str(tmp_path / "absent")))
    assert "\n" not in str(err.value)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match=r"unknown judge kind 'annotator'"):
        load_judge(JudgeSpec(kind="annotator", path="x"))
