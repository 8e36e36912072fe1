"""DSG scoring: the parent rule's edge, per-tag accuracies by the protocol's tags, the result record."""

from __future__ import annotations

import math

import pytest

from cosmicman.evaluation.questions import ROOT_ID, prompt_questions
from cosmicman.evaluation.semantic_accuracy import METRIC_KEYS, score_answers, semantic_accuracy

PROMPT = {
    "gender": "woman",  # global
    "skin_tone": "dark",  # tex, parent: the root
    "hat_exists": "no",  # obj, expected no
    "hair_exists": "yes",  # obj
    "hair_style": "bun",  # shape, parents: hair_exists (yes) and hat_exists (no)
    "top_exists": "yes",  # obj
    "top_color": "red",  # tex, parent: top_exists
}
QS = prompt_questions(PROMPT)
IDS = [q.id for q in QS]


def faithful() -> dict[str, str]:
    return {q.id: q.expected for q in QS}


def scores(answers: dict[str, str]) -> dict[str, int]:
    return dict(zip(IDS, score_answers(QS, [answers[i] for i in IDS])))


def test_a_faithful_image_scores_every_question():
    assert set(scores(faithful()).values()) == {1}


def test_a_no_parent_zeroes_its_child_whatever_the_child_answer():
    answers = faithful() | {"top_exists": "no"}  # "no top", yet "the top is red" answered yes
    s = scores(answers)
    assert s["top_exists"] == 0 and s["top_color"] == 0
    assert s["skin_tone"] == 1 and s["gender"] == 1  # their parent is the root, answered yes


def test_a_parent_expected_no_that_is_answered_yes_zeroes_its_child():
    s = scores(faithful() | {"hat_exists": "yes"})
    assert s["hat_exists"] == 0 and s["hair_style"] == 0 and s["hair_exists"] == 1


def test_a_no_to_the_person_zeroes_everything():
    assert set(scores(faithful() | {ROOT_ID: "no"}).values()) == {0}


def test_a_wrong_child_does_not_touch_its_parent():
    s = scores(faithful() | {"top_color": "no"})
    assert s["top_color"] == 0 and s["top_exists"] == 1


def test_accuracies_by_the_protocols_tags():
    # one prompt answered faithfully, one with the top missing (top_exists and top_color wrong) and
    # skin tone wrong: obj 4/4 + 3/4, tex 2/2 + 0/2, shape 1/1 + 1/1, global 1/1 + 1/1
    bad = faithful() | {"top_exists": "no", "skin_tone": "no"}
    result = semantic_accuracy(
        [QS, QS],
        [[faithful()[i] for i in IDS], [bad[i] for i in IDS]],
        judge_name="j",
        judge_version="v1",
        prompt_set_version="ps-x-n2",
    )
    assert result.counts == {"obj": (7, 8), "tex": (2, 4), "shape": (2, 2), "global": (2, 2), "all": (13, 16)}
    assert result.metrics() == {"acc_obj": 7 / 8, "acc_tex": 0.5, "acc_shape": 1.0, "acc_all": 13 / 16}
    assert set(result.metrics()) == set(METRIC_KEYS.values())
    record = result.record()
    assert (record["judge_name"], record["judge_version"], record["prompt_set_version"]) == ("j", "v1", "ps-x-n2")
    assert record["n_prompts"] == 2 and record["acc_global"] == 1.0
    rows = result.table()
    assert len(rows) == 2 * len(QS)
    assert rows[len(QS) + IDS.index("top_color")] | {} == {
        "prompt": 1,
        "question": "top_color",
        "text": "Is the top red?",
        "tag": "tex",
        "expected": "yes",
        "answer": "yes",
        "score": 0,
        "implied": False,
    }


def test_a_tag_without_questions_is_nan_not_zero():
    qs = prompt_questions({"hat_exists": "no"})
    result = semantic_accuracy([qs], [["yes", "no"]], judge_name="j", judge_version="v", prompt_set_version="p")
    assert result.metrics()["acc_obj"] == 1.0 and math.isnan(result.metrics()["acc_tex"])


def test_answers_must_be_yes_or_no_and_match_the_questions():
    with pytest.raises(ValueError, match=r"answer 'maybe' to 'person' is neither"):
        score_answers(QS, ["maybe"] * len(QS))
    with pytest.raises(ValueError, match=r"^test prompt 0: 2 answers for 8 questions$"):
        semantic_accuracy([QS], [["yes", "yes"]], judge_name="j", judge_version="v", prompt_set_version="p")
    with pytest.raises(ValueError, match="comes before its parents"):
        score_answers(QS[::-1], ["yes"] * len(QS))


# -- acceptance: the local judge on renders of the world ------------------------------------------------
N_PROMPTS = 48


def truthful_answers(questions, attributes):
    """What a judge that sees the image's own attributes perfectly answers: the chance level's yardstick."""
    from cosmicman.core.protocol import load_protocol

    by_name = load_protocol().by_name
    out = []
    for q in questions:
        if q.category is None:
            out.append("yes")
        elif by_name[q.category].answers == ("yes", "no"):
            out.append(attributes.get(q.category, "no"))
        else:
            out.append("yes" if attributes.get(q.category) == q.value else "no")
    return out


@pytest.fixture(scope="module")
def local_renders():
    from cosmicman.evaluation.prompt_set import PromptSet
    from cosmicman.simulation.prompts import synthetic_test_attributes
    from cosmicman.simulation.region_judge import RegionReaderJudge, render_prompts

    prompt_set = PromptSet.from_prompts(synthetic_test_attributes(30_000, N_PROMPTS), "synthetic:30000")
    images, parsing = render_prompts(prompt_set.prompts, seed=31_000)
    return prompt_set, images, RegionReaderJudge.load(parsing)


def derangement(n: int, seed: int = 0) -> list[int]:
    """A permutation without fixed points: no image keeps its own prompt."""
    import numpy as np

    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return [int(i) for i in perm]


@pytest.mark.slow  # end to end over rendered images; the scoring rule's edges are the unit tests above
def test_renders_of_the_prompts_own_attributes_score_at_least_095(local_renders):
    from cosmicman.evaluation.semantic_accuracy import judge_semantic_accuracy

    prompt_set, images, judge = local_renders
    result = judge_semantic_accuracy(judge, images, prompt_set.prompts, prompt_set.version)
    metrics = result.metrics()
    assert metrics["acc_all"] >= 0.95, metrics
    assert min(metrics.values()) >= 0.9, metrics
    record = result.record()
    assert record["judge_name"] == "synthetic-region-reader" and record["judge_version"] == judge.version
    assert record["prompt_set_version"] == prompt_set.version and record["n_prompts"] == N_PROMPTS


@pytest.mark.slow  # end to end over rendered images; the scoring rule's edges are the unit tests above
def test_shuffled_prompt_image_pairs_fall_to_chance(local_renders):
    from cosmicman.evaluation.questions import prompt_set_questions
    from cosmicman.evaluation.semantic_accuracy import judge_semantic_accuracy

    prompt_set, images, judge = local_renders
    perm = derangement(N_PROMPTS)
    shuffled = [prompt_set.prompts[j] for j in perm]
    own = judge_semantic_accuracy(judge, images, prompt_set.prompts, prompt_set.version).metrics()["acc_all"]
    measured = judge_semantic_accuracy(judge, images, shuffled, "shuffled").metrics()["acc_all"]
    # chance: the same shuffled pairs scored by a judge that sees every image's own attributes perfectly
    questions = prompt_set_questions(shuffled)
    truthful = [truthful_answers(qs, prompt_set.prompts[i]) for i, qs in enumerate(questions)]
    chance = semantic_accuracy(questions, truthful, judge_name="truth", judge_version="-", prompt_set_version="-")
    level = chance.metrics()["acc_all"]
    # the judge errs on a share (1 - own) of questions; on shuffled pairs it may move the score by about
    # that much either way, and a "no" parent may drag a few children with it
    band = 2.0 * (1.0 - own) + 0.02
    assert abs(measured - level) <= band, (measured, level, band)
    assert own - measured >= 0.25, (own, measured)
