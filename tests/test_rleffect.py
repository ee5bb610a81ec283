"""The held-out RL-effect measurement (clinical_r1.rleffect) on hand-made answers: scores, pairing, CIs, errors,
the summary's targets and the figure. The effect of real training is tests/test_rl_effect.py."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from clinical_r1 import rleffect, summary
from clinical_r1.files import write_json
from clinical_r1.formats import CRPO, GRPO
from clinical_r1.rewards import crpo_weights

ITEM = {"id": "q1", "question": "A 30-year-old has TSH 12 mU/L. Diagnosis?",
        "options": ["Hypothyroidism", "Hyperthyroidism", "Cushing syndrome", "Addison disease"], "answer": "A"}
GOOD = CRPO.render("TSH 12 mU/L is high, so primary hypothyroidism fits; the other options do not.",
                   "The raised TSH 12 mU/L decides it: primary hypothyroidism. \\boxed{A}")
WRONG = CRPO.render("TSH 12 mU/L is high.", "Hyperthyroidism. \\boxed{B}")
BROKEN = "I think it is A maybe"


def test_scores_each_weighted_reward_and_the_totals():
    w = crpo_weights()
    s = rleffect.score_answers([[GOOD, WRONG, BROKEN]], [ITEM], w, "accuracy", "crpo")
    assert s["accuracy"].tolist() == [[1.0, 0.0, 0.0]]
    assert s["clinical_reasoning"][0, 0] == 1.5 and s["clinical_reasoning"][0, 2] == 0.0
    assert set(s) == {"accuracy", "clinical_reasoning", "consistency", "reward", "reward_without_accuracy", "valid"}
    np.testing.assert_allclose(s["reward"], 10 * s["accuracy"] + s["clinical_reasoning"] + 0.5 * s["consistency"])
    np.testing.assert_allclose(s["reward_without_accuracy"], s["reward"] - 10 * s["accuracy"])
    assert s["valid"].tolist() == [[1.0, 1.0, 0.0]]  # a boxed letter; the free text has none


def test_the_grpo_arm_is_scored_in_its_own_format():
    good = GRPO.render("TSH 12 mU/L is high.", "Primary hypothyroidism. \\boxed{A}")
    s = rleffect.score_answers([[good, GOOD]], [ITEM], {"accuracy": 10.0, "format": 1.0}, "accuracy", "grpo")
    assert s["format"].tolist() == [[1.0, 0.0]]
    assert s["reward_without_accuracy"].tolist() == [[1.0, 0.0]]


def test_paired_difference_and_ci():
    rng = np.random.default_rng(0)
    before = {"x": rng.normal(0, 1, (40, 4))}
    after = {"x": before["x"] + 0.5 + rng.normal(0, 0.1, (40, 4))}
    e = rleffect.paired_effect(before, after, n_boot=500)["x"]
    assert e["diff"] == pytest.approx(0.5, abs=0.05)
    assert 0.4 < e["ci"][0] < 0.5 < e["ci"][1] < 0.6  # pairing removes the between-question spread
    flat = rleffect.paired_effect(before, before, n_boot=200)["x"]
    assert flat["diff"] == 0 and flat["ci"] == [0.0, 0.0]
    with pytest.raises(rleffect.EffectError, match="pair the same probe set"):
        rleffect.paired_effect(before, {"x": before["x"][:10]})


def test_run_spec_reads_the_run_and_refuses_what_is_not_one(tmp_path):
    with pytest.raises(rleffect.EffectError, match="no config.yaml"):
        rleffect.run_spec(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"stage": "sft"}))
    with pytest.raises(rleffect.EffectError, match="not 'crpo'"):
        rleffect.run_spec(tmp_path)
    from clinical_r1.config import load_config

    cfg = load_config("configs/cpu_demo_crpo.yaml", ["reward.k=2", "model.init_adapter=/x/sft/adapter"], stage="crpo")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(rleffect.EffectError, match="has not finished"):
        rleffect.run_spec(tmp_path)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    spec = rleffect.run_spec(tmp_path)
    assert spec.start == "/x/sft/adapter" and spec.prompt == "crpo" and spec.weights["accuracy"] == 2.0
    assert spec.temperature == cfg["trainer"]["temperature"]
    assert spec.max_new_tokens == cfg["trainer"]["max_completion_length"]


def effect(diff: float, lo: float, hi: float, valid_hi: float = 0.05) -> dict:
    comp = lambda d, a, b: {"before": 1.0, "after": 1.0 + d, "diff": d, "ci": [a, b], "n_questions": 24, "n_samples": 4}
    return {"run": "cold_start_crpo", "prompt": "crpo", "weights": crpo_weights(), "accuracy_reward": "accuracy",
            "cold_start": "results/demo/sft/adapter", "temperature": 1.0, "max_new_tokens": 160, "n": 4, "seed": 0,
            "probe_ids": [f"q{i}" for i in range(24)],
            "components": {"accuracy": comp(0.01, -0.1, 0.1), "reward_without_accuracy": comp(diff, lo, hi),
                           "valid": comp(0.0, -0.05, valid_hi)}}


@pytest.mark.parametrize("lo, holds", [(0.02, True), (-0.01, False)])
def test_summary_targets_read_the_ci(lo, holds):
    s = {"evaluation": [], "rl": {}, "judge": [], "rl_effect": {"cold_start_crpo": summary.effect_summary(effect(0.1, lo, 0.2))}}
    t = {x["target"]: x for x in summary.targets(s)}
    assert t["cold_start_crpo: held-out reward without accuracy, paired difference CI low"]["holds"] is holds
    assert t["cold_start_crpo: held-out valid ratio does not fall (difference CI high)"]["holds"] is True
    md = summary.to_markdown({"recipe": "demo", "out": "x", "provenance": {}, "stages_seconds": {"04": 60.0},
                              "total_seconds": 60.0, "sft": None, **s, "targets": list(t.values())})
    assert "| cold_start_crpo | reward_without_accuracy |" in md and "24 questions × 4 samples" in md


def test_effects_are_collected_from_the_runs_and_drawn(tmp_path):
    from clinical_r1.plots import plot_rl_effect
    from clinical_r1.results import collect_rl_effects, effect_table

    run = tmp_path / "cold_start_crpo"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"stage": "crpo", "reward": {"preset": "crpo"}}))
    write_json(effect(0.1, 0.02, 0.2), run / "rl_effect" / "effect.json")
    found = collect_rl_effects(tmp_path)
    assert list(found) == ["cold_start_crpo"]
    t = effect_table(found)
    assert len(t) == 3 and t.loc[t["component"] == "accuracy", "weight"].item() == 10.0
    fig = plot_rl_effect(found)
    labels = [tl.get_text() for tl in fig.axes[0].get_yticklabels()]
    assert any("1.00 → 1.10" in x for x in labels)


def test_a_probe_batch_below_one_is_refused_naming_the_parameter(tmp_path):
    from clinical_r1 import study
    from clinical_r1.errors import UsageError

    with pytest.raises(UsageError, match="probe_batch_size=0"):
        study.measure_rl_effects(["{out}/run"], tmp_path, tmp_path, batch_size=0)
