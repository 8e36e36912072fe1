"""Semantic accuracy: DSG-style questions per test prompt, averaged into Acc_obj / tex / shape / all.

Dagster-free. The Fréchet distance, KID and the feature extractors moved to
:mod:`cosmicman.evaluation.frechet` and :mod:`cosmicman.evaluation.features`.

* :func:`semantic_accuracy` is the paper's DSG-style semantic accuracy: one question per attribute of
  each test prompt, answered by a VQA backend on the generated image, averaged into
  Acc_obj / Acc_tex / Acc_shape (by the protocol's category tag) and Acc_all (every question, global
  ones included).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["semantic_accuracy", "semantic_accuracy_details"]


# --------------------------------------------------------------------------------------------------
# Semantic accuracy
# --------------------------------------------------------------------------------------------------
_TAG_KEYS = {"obj": "acc_obj", "tex": "acc_tex", "shape": "acc_shape"}


def semantic_accuracy_details(
    answers_pred: Sequence[Mapping[str, str]],
    answers_true: Sequence[Mapping[str, str]],
    protocol=None,
    dependency: bool = True,
) -> dict[str, dict[str, int]]:
    """Correct / total question counts per tag (obj, tex, shape, global) and ``all``.

    One question per attribute in each test prompt (``answers_true[i]``); the VQA answers for the image
    generated from that prompt are ``answers_pred[i]`` (a missing answer is wrong). With ``dependency``
    (DSG's rule), a question whose category ``requires`` parent answers counts as correct only if the
    VQA answer to each parent matches the requirement too (a red hat on an image with no hat is wrong).
    """
    if protocol is None:
        from cosmicman.core.protocol import load_protocol

        protocol = load_protocol()
    if len(answers_pred) != len(answers_true):
        raise ValueError(f"{len(answers_pred)} predictions for {len(answers_true)} prompts")
    by_name = protocol.by_name
    counts = {k: {"correct": 0, "total": 0} for k in ("obj", "tex", "shape", "global", "all")}
    for pred, truth in zip(answers_pred, answers_true):
        for cat_name, true_answer in truth.items():
            cat = by_name.get(cat_name)
            if cat is None:
                raise ValueError(f"unknown category {cat_name!r} in a test prompt")
            ok = pred.get(cat_name) == true_answer
            if ok and dependency:
                ok = all(pred.get(p) == v for p, v in cat.requires.items())
            for key in (cat.tag, "all"):
                counts[key]["total"] += 1
                counts[key]["correct"] += int(ok)
    return counts


def semantic_accuracy(
    answers_pred: Sequence[Mapping[str, str]],
    answers_true: Sequence[Mapping[str, str]],
    protocol=None,
    dependency: bool = True,
) -> dict[str, float]:
    """``{"acc_obj", "acc_tex", "acc_shape", "acc_all"}`` in [0, 1] (see :func:`semantic_accuracy_details`).

    Acc_obj / Acc_tex / Acc_shape average the questions whose category is tagged obj / tex / shape;
    Acc_all averages every question, global ones included. A tag with no question gives NaN.
    """
    counts = semantic_accuracy_details(answers_pred, answers_true, protocol, dependency)
    out = {}
    for tag, key in list(_TAG_KEYS.items()) + [("all", "acc_all")]:
        c = counts[tag]
        out[key] = c["correct"] / c["total"] if c["total"] else float("nan")
    return out
