"""Semantic accuracy (the paper's Acc_obj / Acc_tex / Acc_shape / Acc_all) from a judge's yes/no answers.

Scoring is DSG's: a question scores 1 when the judge gives the answer a faithful image gives
(``Question.expected``) *and* every parent question scored 1, so a "no" to "Is the person wearing a
top?" zeroes "Is the top red?" whatever the judge says about the colour. Acc_<tag> is the mean score of
the questions with that protocol tag; Acc_all the mean over every question. The result names the judge
(name and version) and the test prompt set version it was measured with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from cosmicman.core.protocol import Protocol
from cosmicman.evaluation.judge import Judge
from cosmicman.evaluation.questions import NO, YES, Question, prompt_set_questions

TAGS = ("obj", "tex", "shape", "global")
# the paper's four figures: three tags and every question
METRIC_KEYS = {"obj": "acc_obj", "tex": "acc_tex", "shape": "acc_shape", "all": "acc_all"}


def score_answers(questions: Sequence[Question], answers: Sequence[str]) -> list[int]:
    """DSG scores (0 / 1) of one prompt's questions, given the judge's ``answers`` in the same order.

    ``questions`` lists parents before children (as :func:`~cosmicman.evaluation.questions.prompt_questions`
    does); an answer other than yes / no is an error, never a silent no.
    """
    if len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
    scores: dict[str, int] = {}
    for q, answer in zip(questions, answers):
        if answer not in (YES, NO):
            raise ValueError(f"answer {answer!r} to {q.id!r} is neither {YES!r} nor {NO!r}")
        missing = [p for p in q.parents if p not in scores]
        if missing:
            raise ValueError(f"question {q.id!r} comes before its parents {missing}")
        scores[q.id] = int(answer == q.expected and all(scores[p] for p in q.parents))
    return [scores[q.id] for q in questions]


@dataclass(frozen=True)
class QuestionRow:
    """One question of one prompt, as the per-question table shows it."""

    prompt: int
    question: str
    text: str
    tag: str
    expected: str
    answer: str
    score: int
    implied: bool


@dataclass(frozen=True)
class SemanticAccuracy:
    """Acc per tag and overall, the question counts behind them, every question's row, and what measured it."""

    accuracy: Mapping[str, float]
    counts: Mapping[str, tuple[int, int]]
    judge_name: str
    judge_version: str
    prompt_set_version: str
    n_prompts: int
    rows: tuple[QuestionRow, ...] = field(repr=False)

    def metrics(self) -> dict[str, float]:
        """``{"acc_obj", "acc_tex", "acc_shape", "acc_all"}`` (NaN for a tag without questions)."""
        return {key: self.accuracy[tag] for tag, key in METRIC_KEYS.items()}

    def record(self) -> dict[str, Any]:
        """A JSON-able summary: the metrics, Acc_global, per-tag counts, the judge and the prompt set."""
        return {
            **self.metrics(),
            "acc_global": self.accuracy["global"],
            "correct_total": {tag: list(c) for tag, c in self.counts.items()},
            "judge_name": self.judge_name,
            "judge_version": self.judge_version,
            "prompt_set_version": self.prompt_set_version,
            "n_prompts": self.n_prompts,
        }

    def table(self) -> list[dict[str, Any]]:
        """The per-question rows as dicts (one per question of every prompt)."""
        return [vars(r).copy() for r in self.rows]


def semantic_accuracy(
    questions: Sequence[Sequence[Question]],
    answers: Sequence[Sequence[str]],
    *,
    judge_name: str,
    judge_version: str,
    prompt_set_version: str,
) -> SemanticAccuracy:
    """Score every prompt's questions against the judge's answers (``answers[i][j]`` answers ``questions[i][j]``)."""
    if len(answers) != len(questions):
        raise ValueError(f"answers for {len(answers)} prompts, questions for {len(questions)}")
    rows: list[QuestionRow] = []
    for i, (qs, ans) in enumerate(zip(questions, answers)):
        try:
            scores = score_answers(qs, ans)
        except ValueError as exc:
            raise ValueError(f"test prompt {i}: {exc}") from None
        rows += [QuestionRow(i, q.id, q.text, q.tag, q.expected, a, s, q.implied) for q, a, s in zip(qs, ans, scores)]
    counts: dict[str, tuple[int, int]] = {}
    for tag in (*TAGS, "all"):
        mine = [r.score for r in rows if tag in (r.tag, "all")]
        counts[tag] = (sum(mine), len(mine))
    accuracy = {tag: (c / n if n else math.nan) for tag, (c, n) in counts.items()}
    return SemanticAccuracy(
        accuracy, counts, judge_name, judge_version, prompt_set_version, len(questions), tuple(rows)
    )


def judge_semantic_accuracy(
    judge: Judge,
    images: Sequence[Image.Image],
    prompts: Sequence[Mapping[str, str]],
    prompt_set_version: str,
    protocol: Protocol | None = None,
) -> SemanticAccuracy:
    """Ask ``judge`` each prompt's questions about the image generated from it (``images[i]`` from
    ``prompts[i]``) and score the answers."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    questions = prompt_set_questions(prompts, protocol)
    answers = judge.answer(images, questions)
    return semantic_accuracy(
        questions,
        answers,
        judge_name=judge.name,
        judge_version=judge.version,
        prompt_set_version=prompt_set_version,
    )
