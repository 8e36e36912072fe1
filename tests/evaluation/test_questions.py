"""DSG questions from a test prompt: wording, expected answers, parents, tags, implied parents, errors."""

from __future__ import annotations

import numpy as np
import pytest

from cosmicman.core.protocol import load_protocol
from cosmicman.evaluation.questions import (
    ROOT_ID,
    Question,
    check_prompt,
    prompt_questions,
    prompt_set_questions,
    question_text,
)

PROTOCOL = load_protocol()
PROMPT = {
    "gender": "woman",
    "hat_exists": "no",
    "hair_exists": "yes",
    "hair_style": "bun",
    "top_exists": "yes",
    "top_color": "red",
    "top_pattern": "striped",
}


def by_id(questions: list[Question]) -> dict[str, Question]:
    return {q.id: q for q in questions}


def test_the_chain_person_top_colour():
    qs = by_id(prompt_questions(PROMPT))
    root, top, colour = qs[ROOT_ID], qs["top_exists"], qs["top_color"]
    assert (root.text, root.expected, root.parents, root.tag) == ("Is there a person in the image?", "yes", (), "obj")
    assert (top.text, top.expected, top.parents) == ("Is the person wearing a top (not a dress)?", "yes", (ROOT_ID,))
    assert (colour.text, colour.expected, colour.parents) == ("Is the top red?", "yes", ("top_exists",))
    assert qs["top_pattern"].text == "Is the top striped?"


def test_a_no_answer_is_expected_where_the_prompt_says_no_and_both_requirements_are_parents():
    qs = by_id(prompt_questions(PROMPT))
    assert (qs["hat_exists"].text, qs["hat_exists"].expected) == ("Is the person wearing a hat?", "no")
    assert qs["hair_style"].parents == ("hair_exists", "hat_exists")
    assert qs["hair_style"].text == "Is the hair worn in a bun?"


def test_one_question_per_attribute_plus_the_root_parents_first_tags_from_the_protocol():
    qs = prompt_questions(PROMPT)
    assert [q.id for q in qs][0] == ROOT_ID and len(qs) == len(PROMPT) + 1
    seen: set[str] = set()
    for q in qs:
        assert set(q.parents) <= seen, f"{q.id} before its parents"
        seen.add(q.id)
        if q.category is not None:
            assert q.tag == PROTOCOL.by_name[q.category].tag and q.value == PROMPT[q.category]


def test_a_required_category_the_prompt_leaves_out_is_asked_as_implied():
    qs = by_id(prompt_questions({"hat_color": "blue"}))
    assert set(qs) == {ROOT_ID, "hat_exists", "hat_color"}
    assert qs["hat_exists"].implied and qs["hat_exists"].expected == "yes"
    assert not qs["hat_color"].implied and qs["hat_color"].text == "Is the hat blue?"


def test_every_protocol_category_and_value_has_a_distinct_yes_no_question():
    for cat in PROTOCOL.categories:
        texts = {question_text(PROTOCOL, cat.name, v)[0] for v in cat.answers}
        if cat.answers == ("yes", "no"):
            assert texts == {cat.question}
        else:
            assert len(texts) == len(cat.answers), cat.name
            assert all(t.endswith("?") for t in texts)


def test_the_worlds_people_give_questions_of_all_four_tags():
    from cosmicman.simulation.prompts import synthetic_test_attributes

    qs = [q for p in synthetic_test_attributes(5, 8) for q in prompt_questions(p)]
    assert {q.tag for q in qs} == {"obj", "tex", "shape", "global"}
    assert not any(q.implied for q in qs)  # the world answers every requirement itself


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"hat_colour": "red"}, "unknown attribute 'hat_colour'"),
        ({"top_color": "teal"}, "top_color='teal' is not in its vocabulary"),
        ({"hat_exists": "no", "hat_color": "red"}, "hat_color='red' requires hat_exists='yes'"),
    ],
)
def test_bad_prompts_are_one_line_errors(prompt, message):
    with pytest.raises(ValueError, match=message) as err:
        check_prompt(PROTOCOL, prompt)
    assert "\n" not in str(err.value)


def test_a_bad_prompt_in_a_set_is_named_by_its_index():
    with pytest.raises(ValueError, match=r"^test prompt 1: "):
        prompt_set_questions([PROMPT, {"top_color": "teal"}])


def test_question_ids_are_unique_per_prompt():
    rng = np.random.default_rng(0)
    from cosmicman.simulation.attributes import random_attributes

    for _ in range(20):
        ids = [q.id for q in prompt_questions(random_attributes(PROTOCOL, rng))]
        assert len(ids) == len(set(ids))
