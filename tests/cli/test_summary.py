"""What ``make run`` prints last (cosmicman.cli.summary.print_summary): the variants with their seeds, each
figure's mean ± sd, the untuned base model's row, and HOLA's attention gain with its spread."""

from cosmicman.cli.summary import print_summary

FIGURES = {
    "acc_obj": 0.5,
    "acc_tex": 0.4,
    "acc_shape": 0.3,
    "acc_all": 0.45,
    "frechet_distance": 12.5,
    "kid": 0.0123,
    "clip_score": 21.0,
    "hpsv2": 0.2,
}


def _variant(seeds: list[int], spread: bool) -> dict:
    sd = {"acc_all_sd": 0.012, "frechet_distance_sd": 0.5, "attention_in_mask_sd": 0.01, "loss_last_sd": 0.002}
    return {
        **FIGURES,
        "loss_first": 1.0,
        "loss_last": 0.1234,
        "steps": 30,
        "output_url": "/store/models/daring_unet/v0001-abc",
        "reused": False,
        "attention_in_mask": 0.2,
        "seeds": seeds,
        "ceiling_acc_all": 0.9,
        "judge": "pixel parser (1)",
        "feature_extractor": "random conv",
        "prompt_set_version": "p1",
        "n_prompts": 16,
        **(sd if spread else {}),
    }


def _summary(**changes) -> dict:
    return {
        "batches": {"batch-00000": {"raw": 10, "kept": 8, "parsed": 8}},
        "rejections": {"too_small": 2},
        "unparsed": {},
        "hitl": {
            "rounds": 1,
            "curve": [],
            "mean_accuracy_round0": 0.5,
            "mean_accuracy_final": 0.6,
            "labels_asked": 4,
            "manual_share": 0.1,
            "stop_reason": "all pass",
        },
        "dataset": {"version": "v0001", "samples": 8, "reused": False, "stats": {}},
        "variants": {"baseline": _variant([0, 1, 2], True), "hola-gelu": _variant([0], False)},
        "base": dict(FIGURES, acc_all=0.31),
        "ablation_rows": 2,
        "ablation": {
            "hola_attention_gain": 0.0523,
            "hola_attention_gain_sd": 0.0101,
            "hola_attention_gain_seeds": 3,
            "hola_attention_in_mask": 0.183,
            "baseline_attention_in_mask": 0.1307,
            "attention_in_mask_chance": 0.131,
        },
        "runs": {"launched": 3, "by": {"automation": 3}},
        "seconds": 12.0,
        "daemon_log": "/tmp/daemon.log",
        **changes,
    }


def test_the_summary_names_the_seeds_and_prints_spreads_the_base_row_and_the_gain(capsys):
    print_summary(_summary())
    out = capsys.readouterr().out
    assert "training seeds: baseline x3, hola-gelu x1" in out
    # the variants this turn left out are named, with how to add them
    assert "not trained in this turn: hola, hola-mish, hola-relu, hola-leaky_relu, hola-mp_silu (add them" in out
    (baseline,) = [line for line in out.splitlines() if line.strip().startswith("baseline")]
    assert "0.450 ± 0.012" in baseline and "12.500 ± 0.500" in baseline and "0.200 ± 0.010" in baseline
    (gelu,) = [line for line in out.splitlines() if line.strip().startswith("hola-gelu")]
    assert "±" not in gelu and " 0.450 " in gelu  # one seed: the mean alone
    (base,) = [line for line in out.splitlines() if line.strip().startswith("base (no fine-tune)")]
    assert " 0.310 " in base and base.split()[4] == "-"  # no training seeds, no loss
    assert "HOLA attention gain: 0.052 ± 0.010 over 3 seeds (hola 0.183 vs noise-only 0.131, chance 0.131)" in out


def test_a_missing_base_row_or_gain_is_said(capsys):
    print_summary(_summary(base={}, ablation={"hola_attention_gain_note": "not measured: needs baseline and hola"}))
    out = capsys.readouterr().out
    assert "base (no fine-tune): not evaluated (base_model_evaluation has no materialization)" in out
    assert "HOLA attention gain: not measured: needs baseline and hola" in out
