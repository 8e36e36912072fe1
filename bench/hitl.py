"""Annotate Anyone's labelling loop on the synthetic world, from scratch: how much the annotator gains,
at what share of a full manual labelling pass.

    .venv/bin/python bench/hitl.py            # here: the probe annotator and the simulated human

Round 0 is the probe annotator pretrained on noisy, biased labels (a generic VLM's knowledge). The rounds
follow ``cosmicman.annotation.rounds`` (the rules the Dagster assets apply), driven in memory by
``cosmicman.annotation.loop``: people (the simulated human, 5 % wrong answers) answer every category in
round 1 (the paper; ``--first-round below_threshold`` for the threshold from round 1), then the
categories under 85 % on I_e, on a fresh sample I_r of the pool each round, until every category
passes, a round brings no gain, or the round limit. The pool's people have known truth, so a full
manual pass costs exactly the applicable questions of each; only the sampled ones are rendered.

Ends with  hitl_gain_points: <last round minus round 0, mean accuracy in points>
           hitl_manual_share: <labels asked of humans / labels of a full manual pass>
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmicman.annotation.accuracy import mean_accuracy, per_category_accuracy  # noqa: E402
from cosmicman.annotation.loop import run_hitl_loop  # noqa: E402
from cosmicman.annotation.rounds import DEFAULT_THRESHOLD, HitlRules  # noqa: E402
from cosmicman.core.protocol import load_protocol  # noqa: E402
from cosmicman.simulation.oracle import SimulatedOracle  # noqa: E402
from cosmicman.simulation.people import synthetic_people, synthetic_pool  # noqa: E402
from cosmicman.simulation.pretraining import pretrained_probe  # noqa: E402

FIRST_ROUND_RULES = {"all": "all categories (paper)", "below_threshold": "categories below the threshold"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--pool", type=int, default=30_000, help="pool size (people with truth; rendered when sampled)")
    p.add_argument("--eval", type=int, default=150, help="I_e size")
    p.add_argument("--pretrain", type=int, default=150, help="round-0 pretraining images (noisy labels)")
    p.add_argument("--sample", type=int, default=400, help="I_r: pool images sent to humans per round")
    p.add_argument("--max-rounds", type=int, default=8)
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    p.add_argument(
        "--first-round",
        choices=sorted(FIRST_ROUND_RULES),
        default="all",
        help="who answers in round 1: all categories (the paper) or those below the threshold",
    )
    p.add_argument("--error-rate", type=float, default=0.05, help="the simulated human's wrong-answer rate")
    p.add_argument("--json", type=Path, help="also write the per-round records here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    protocol = load_protocol()
    rules = HitlRules(
        threshold=args.threshold, sample_size=args.sample, max_rounds=args.max_rounds, first_round=args.first_round
    )
    eval_items = synthetic_people(10_000, args.eval)
    pre = synthetic_people(20_000, args.pretrain)
    pool = synthetic_pool(1, args.pool)
    base = pretrained_probe([it.image for it in pre], [it.attributes or {} for it in pre], seed=5)
    oracle = SimulatedOracle(args.error_rate, seed=7)
    t_setup = time.perf_counter() - t0
    final, history, reason = run_hitl_loop(base, eval_items, pool, oracle, rules, protocol=protocol)
    t_loop = time.perf_counter() - t0 - t_setup
    full = oracle.applicable_category_count(pool)
    acc0 = per_category_accuracy(base, eval_items, protocol=protocol)
    acc_final = per_category_accuracy(final, eval_items, protocol=protocol)
    asked = sum(h.labels_asked for h in history)
    print(
        f"protocol v{protocol.version}: {len(protocol.categories)} categories; I_e {args.eval} people; pool "
        f"{args.pool} people, a full manual pass = {full} labels; I_r {args.sample} per round"
    )
    print(f"round-1 rule: {FIRST_ROUND_RULES[rules.first_round]}")
    print(
        f"{'round':>5} {'sent':>5} {'acc before':>10} {'acc after':>9} {'gain pts':>8} {'labels':>7} "
        f"{'round share':>11} {'adopted':>7}"
    )
    for h in history:
        print(
            f"{h.round:>5} {len(h.categories_sent):>5} {h.mean_accuracy_before:>10.3f} {h.mean_accuracy_after:>9.3f} "
            f"{100 * h.gain:>8.1f} {h.labels_asked:>7} {h.cost_share:>11.4f} {'yes' if h.adopted else 'no':>7}"
        )
    tags: dict[str, list[tuple[float, float]]] = {}
    for name, a in acc_final.items():
        tags.setdefault(protocol.by_name[name].tag, []).append((acc0[name], a))
    print(
        "by tag (round 0 -> final): "
        + ", ".join(
            f"{t} {sum(x for x, _ in v) / len(v):.3f} -> {sum(y for _, y in v) / len(v):.3f}"
            for t, v in sorted(tags.items())
        )
    )
    print(f"stop: {reason}; setup {t_setup:.0f}s, loop {t_loop:.0f}s")
    out = {
        "gain_points": 100 * (mean_accuracy(acc_final) - mean_accuracy(acc0)),
        "manual_share": asked / full,
        "first_round": rules.first_round,
        "rounds": [h.to_json() for h in history],
        "stop": reason,
        "full_manual_labels": full,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    print(f"hitl_gain_points: {out['gain_points']:.1f}")
    print(f"hitl_manual_share: {out['manual_share']:.4f}")
    return out


if __name__ == "__main__":
    main()
