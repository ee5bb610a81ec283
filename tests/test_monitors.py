"""Inside a multi-objective run: the advantage decomposition (hand-made groups with known answers, and TRL's own
advantages on a real GRPOTrainer), the reward-hacking monitors (each fires on a crafted case and stays quiet on
a clean one), the alarms, and a real CRPO and GRPO run that log all of it.

    .venv/bin/pytest tests/test_monitors.py -q                  # ~1 min on 2 cores
    .venv/bin/pytest tests/test_monitors.py -q -m "not slow"    # seconds
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clinical_r1 import monitors as M
from clinical_r1.advantage import advantage_parts, advantage_shares
from clinical_r1.config import ConfigError, load_config
from clinical_r1.rewards import cross_reference_report, cross_references

REPO = Path(__file__).resolve().parents[1]
MODES = list(itertools.product(("sum_then_normalize", "normalize_then_sum"), ("group", "batch", "none")))
OPTIONS = ["Graves disease", "Primary hypothyroidism due to Hashimoto thyroiditis", "Secondary hypothyroidism",
           "Subacute thyroiditis"]
DX = "Fatigue, cold intolerance and weight gain. TSH 12 mU/L is high with low free T4, so the thyroid itself fails."
CLEAN = (f"<dx>{DX}</dx>\n<conclusion>Cold intolerance and weight gain with TSH 12 mU/L point to primary "
         "hypothyroidism. \\boxed{B}</conclusion>")


def shares(rewards, weights, g, agg="sum_then_normalize", scale="group"):
    parts, adv = advantage_parts(torch.tensor(rewards, dtype=torch.float64), weights, g, agg, scale)
    s, n = advantage_shares(parts, g)
    return s.numpy(), n, parts, adv


# ---------------------------------------------------------------------------------------------------
# The decomposition on hand-made groups
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg, scale", MODES)
def test_only_accuracy_varies_so_accuracy_has_the_whole_advantage(agg, scale):
    # columns: accuracy (w 10), format (w 1, constant), diagnostic (w 0, varies but unweighted)
    r = [[1, 1, 30], [0, 1, 10], [0, 1, 20], [0, 1, 40]]
    s, n, parts, adv = shares(r, [10, 1, 0], 4, agg, scale)
    assert n == 1 and s == pytest.approx([1, 0, 0], abs=1e-12)
    assert torch.allclose(parts.sum(1), adv) and (parts[:, 1:] == 0).all()


@pytest.mark.parametrize("agg, scale", MODES)
def test_two_uncorrelated_rewards_share_by_their_weighted_variance(agg, scale):
    # accuracy [1,1,0,0] (w 10) and format [1,0,1,0] (w 1) are uncorrelated within the group
    r = [[1, 1], [1, 0], [0, 1], [0, 0]]
    s, n, _, _ = shares(r, [10, 1], 4, agg, scale)
    # sum_then_normalize: Var(10 acc) : Var(fmt) = 100 : 1; GDPO standardises each reward first: also 100 : 1
    assert n == 1 and s == pytest.approx([100 / 101, 1 / 101], abs=1e-9)


def test_a_reward_pulling_against_the_total_gets_a_negative_share():
    r = [[1, 0], [0, 1], [1, 0], [0, 1]]  # format exactly where accuracy is not: A = 9 * d
    s, n, _, _ = shares(r, [10, 1], 4)
    assert n == 1 and s == pytest.approx([10 / 9, -1 / 9]) and s.sum() == pytest.approx(1)


def test_groups_without_signal_are_left_out_and_the_rest_averaged():
    flat = [[1, 1]] * 4                         # nothing varies: no advantage, no share
    acc = [[1, 1], [0, 1], [0, 1], [0, 1]]      # accuracy only
    fmt = [[0, 1], [0, 0], [0, 0], [0, 0]]      # format only
    s, n, _, _ = shares(flat + acc + fmt, [10, 1], 4)
    assert n == 2 and s == pytest.approx([0.5, 0.5])
    s, n, _, adv = shares(flat, [10, 1], 4)
    assert n == 0 and np.isnan(s).all() and (adv == 0).all()
    mon = M.StepMonitor(["accuracy", "format"], [10, 1], 4)
    assert mon.metrics(np.array(flat + acc + fmt, float))["reward_varies/accuracy"] == pytest.approx(1 / 3)
    assert "advantage_share/accuracy" not in mon.metrics(np.array(flat, float))  # undefined: not logged


def test_unscored_rows_get_no_advantage_and_a_missing_reward_counts_zero():
    nan = math.nan
    r = [[1, 1], [nan, nan], [0, nan], [0, 1]]
    parts, adv = advantage_parts(torch.tensor(r), [10, 1], 4)
    assert adv[1] == 0 and (parts[1] == 0).all()
    # scored rows: totals 11, 0, 1 (the missing format counts 0) -> mean 4, group std of (11, 0, 1)
    total = torch.tensor([11.0, 0.0, 1.0])
    expected = (total - total.mean()) / (total.std() + 1e-4)
    assert torch.allclose(adv[[0, 2, 3]], expected.double(), atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# TRL's own advantages on a real GRPOTrainer
# ---------------------------------------------------------------------------------------------------


_DRAWS = np.random.default_rng(0)


def lumpy(completions, **_):
    """A 0/1 reward that varies in most groups (a draw per completion; the test reads TRL's logged values)."""
    return [float(v) for v in _DRAWS.integers(0, 2, len(completions))]


def graded(completions, **_):
    return [float(v) for v in _DRAWS.integers(0, 3, len(completions)) / 2]


def smooth(completions, **_):
    return [float(v) for v in _DRAWS.random(len(completions))]


@pytest.mark.slow
def test_parts_sum_to_the_advantages_trl_computes_in_every_mode(tmp_path, embedded_model_dir):
    """One real GRPOTrainer on the embedded model; for each aggregation x scale mode, one generation batch is
    scored through TRL's own ``_generate_and_score_completions``; the tapped decomposition must sum to the
    advantages TRL logged for those completions."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from clinical_r1.models import load_tokenizer

    g, weights = 4, [10.0, 1.0, 0.5]
    tok = load_tokenizer(str(embedded_model_dir), padding_side="left")
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Say a number near {i}."}]} for i in range(4)])
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=g,
                      max_completion_length=6, reward_weights=weights, report_to="none", use_cpu=True,
                      logging_steps=1, max_steps=1)
    mon = M.StepMonitor(["lumpy", "graded", "smooth"], weights, g)
    seen = []
    mon.metrics = lambda rewards, *a, **k: seen.append(np.array(rewards)) or {}  # keep the table TRL scored
    trainer = GRPOTrainer(model=str(embedded_model_dir), reward_funcs=mon.wrap([lumpy, graded, smooth]), args=args,
                          train_dataset=ds, processing_class=tok)
    assert trainer.reward_func_names == ["lumpy", "graded", "smooth"]
    batch = [dict(ds[i // g]) for i in range(8)]
    for agg, scale in MODES:
        trainer.multi_objective_aggregation, trainer.scale_rewards = agg, scale
        trainer._generate_and_score_completions(batch)
        rewards = seen[-1]
        logged = np.column_stack([list(trainer._logs["rewards"][n])[-8:] for n in ("lumpy", "graded", "smooth")])
        assert np.array_equal(rewards, logged)  # the tap saw exactly what TRL scored
        trl_adv = torch.tensor(list(trainer._logs["advantages"])[-8:], dtype=torch.float64)
        parts, adv = advantage_parts(torch.tensor(rewards), weights, g, agg, scale)
        assert torch.allclose(parts.sum(1), adv)
        varied = M.varies(torch.tensor(rewards), g).any(1).repeat_interleave(g)
        assert varied.any()
        assert torch.allclose(adv[varied], trl_adv[varied], atol=1e-4, rtol=1e-4), (agg, scale, adv, trl_adv)


# ---------------------------------------------------------------------------------------------------
# Reward-hacking monitors: each fires on a crafted case, stays quiet on a clean one
# ---------------------------------------------------------------------------------------------------


def test_cross_reference_report_agrees_with_the_reward():
    cases = [(DX, "TSH 12 mU/L with low free T4: primary hypothyroidism. \\boxed{B}"), (DX, DX), (DX, "Unrelated."),
             ("Hashimoto thyroiditis causing hypothyroidism here.", "Primary hypothyroidism due to Hashimoto "
              "thyroiditis. \\boxed{B}"), ("", "x"), (DX, DX[:60])]
    for dx, cc in cases:
        for opts in (OPTIONS, None):
            assert cross_reference_report(dx, cc, opts)["ok"] == cross_references(dx, cc, opts), (dx, cc)


def crpo(dx: str, conclusion: str) -> str:
    return f"<dx>{dx}</dx>\n<conclusion>{conclusion}</conclusion>"


CRAFTED = {
    "near_copy_rate": crpo(DX, DX + " \\boxed{B}"),
    "option_only_rate": crpo("Likely primary hypothyroidism due to Hashimoto thyroiditis in this woman.",
                             "Primary hypothyroidism due to Hashimoto thyroiditis. \\boxed{B}"),
    "box_outside_rate": f"<dx>{DX} \\boxed{{A}}</dx>\n<conclusion>TSH 12 mU/L: primary. \\boxed{{B}}</conclusion>",
    "repetition": crpo(DX + " the thyroid fails" * 30, "TSH 12 mU/L. \\boxed{B}"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_each_completion_monitor_fires_on_its_case_and_not_on_a_clean_one(name):
    t = load_config(REPO / "configs/cpu_demo_crpo.yaml")["monitors"][name]
    hot = M.completion_monitors([CRAFTED[name]] * 4, "crpo", [OPTIONS] * 4)
    cold = M.completion_monitors([CLEAN] * 4, "crpo", [OPTIONS] * 4)
    assert hot[f"monitor/{name}"] > t >= cold[f"monitor/{name}"], (hot, cold)
    assert cross_references(DX, CLEAN.split("<conclusion>")[1], OPTIONS)  # the clean one earns the bonus


def test_box_outside_follows_the_presets_format():
    assert M.box_outside("<think>so \\boxed{A}</think><answer>\\boxed{B}</answer>", "grpo")
    assert not M.box_outside("<think>so A</think><answer>\\boxed{B}</answer>", "grpo")
    assert not M.box_outside("plain \\boxed{B}", "cot")
    assert "monitor/near_copy_rate" not in M.completion_monitors(["<think>a</think><answer>b</answer>"], "grpo")


def test_length_drift_is_the_spearman_correlation_of_length_and_total_reward():
    mon = M.StepMonitor(["accuracy", "format"], [10, 1], 4)
    r = np.array([[1, 1], [0, 1], [1, 0], [0, 0]] * 2, float)
    total = r @ [10, 1]
    hot = mon.metrics(r, lengths=total * 7 + 50)  # longer answers paid more
    cold = mon.metrics(r, lengths=[120, 118, 119, 121, 121, 119, 118, 120][::-1])
    assert hot["monitor/length_drift"] == pytest.approx(1.0)
    assert abs(cold["monitor/length_drift"]) < 0.5
    assert "monitor/length_drift" not in mon.metrics(r, lengths=[100] * 8)  # constant length: undefined


def rows_with(format_rates, accuracies, **extra):
    return [{"step": i + 1, "rewards/crpo_format/mean": f, "rewards/accuracy/mean": a, **extra}
            for i, (f, a) in enumerate(zip(format_rates, accuracies))]


def test_format_accuracy_divergence_needs_format_up_and_accuracy_down():
    hot = rows_with([0.5, 0.6, 0.7, 0.8], [0.6, 0.5, 0.4, 0.3])
    assert M.divergence(hot, 4) == pytest.approx(0.1)
    assert M.divergence(rows_with([0.5, 0.6, 0.7, 0.8], [0.3, 0.4, 0.5, 0.6]), 4) < 0  # both rise: healthy
    assert M.divergence(rows_with([0.8, 0.7, 0.6, 0.5], [0.6, 0.5, 0.4, 0.3]), 4) < 0  # both fall: not hacking
    assert M.divergence(hot[:3], 4) is None  # window not full yet


def test_alarms_warn_once_per_crossing_and_name_the_step(caplog):
    thresholds = {**{k: None for k in M.MONITORS}, "truncation_rate": 0.2, "format_accuracy_divergence": 0.02,
                  "window": 3}
    watch = M.AlarmWatch(thresholds)
    clipped = [0.0, 0.3, 0.4, 0.1, 0.25]  # crosses at step 2, stays up at 3, falls, crosses again at 5
    rows = rows_with([0.5, 0.6, 0.7, 0.8, 0.9], [0.6, 0.5, 0.4, 0.3, 0.2])
    with caplog.at_level(logging.WARNING, logger="clinical_r1.monitors"):
        fired = [a for r, c in zip(rows, clipped) for a in watch.observe({**r, "completions/clipped_ratio": c})]
    assert [(a["monitor"], a["step"]) for a in fired] == [("truncation_rate", 2), ("format_accuracy_divergence", 3),
                                                          ("truncation_rate", 5)]
    warned = [r.getMessage() for r in caplog.records if "alarm" in r.getMessage()]
    assert len(warned) == 3 and "at step 2: monitor/truncation_rate" in warned[0]
    assert M.crossings(watch.history, thresholds) == fired  # metrics.json's alarms: the same crossings
    quiet = M.AlarmWatch(thresholds)
    assert not [a for r in rows_with([0.5] * 5, [0.5] * 5, **{"completions/clipped_ratio": 0.1}) for a in quiet.observe(r)]


def test_thresholds_live_in_the_recipe_and_are_checked(tmp_path):
    for name in ("cpu_demo_crpo", "paper_3b_crpo", "t4_16gb_crpo"):
        m = load_config(REPO / f"configs/{name}.yaml")["monitors"]
        assert set(m) == {*M.MONITORS, "window"} and all(isinstance(m[k], (int, float)) for k in M.MONITORS), name
    with pytest.raises(ConfigError, match="monitors.window"):
        load_config(REPO / "configs/cpu_demo_crpo.yaml", {"monitors.window": 1})
    with pytest.raises(ConfigError, match="monitors.repetition"):
        load_config(REPO / "configs/cpu_demo_crpo.yaml", {"monitors.repetition": "high"})
    assert load_config(REPO / "configs/cpu_demo_crpo.yaml", {"monitors.repetition": None})["monitors"]["repetition"] is None


# ---------------------------------------------------------------------------------------------------
# A real run logs it all
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["crpo", "grpo"])
def test_a_real_run_logs_shares_monitors_and_alarms(tmp_path, embedded_model_dir, preset):
    """Two steps of the demo recipe (base model, tiny questions) through ``run_crpo``. The untrained model rarely
    earns a paper reward, so the length diagnostic gets a small weight to give the groups variance."""
    from clinical_r1.crpo import run_crpo
    from clinical_r1.rewards import get_preset

    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"id": f"t{i}", "question": f"Woman, {30 + i}, tired; TSH 12 mU/L. Diagnosis?",
                                      "options": OPTIONS, "answer": "B"}) + "\n" for i in range(4)))
    over = {"output_root": str(tmp_path), "run_name": preset, "data.name": "jsonl", "data.path": str(qs),
            "data.limit": None, "model.init_adapter": None, "reward.preset": preset, "lora.r": 4,
            "reward.weights": {"completion_length": 0.1}, "trainer.max_steps": 2, "trainer.save_strategy": "no",
            "trainer.per_device_train_batch_size": 4, "trainer.num_generations": 2,
            "trainer.max_completion_length": 16, "monitors.truncation_rate": 0.0}
    run = run_crpo(REPO / "configs/cpu_demo_crpo.yaml", over)
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]
    weighted = [n for n, w in {**get_preset(preset).weights, "completion_length": 0.1}.items() if w]
    for r in rows:
        assert {f"reward_varies/{n}" for n in weighted} <= set(r)
        assert sum(r[f"advantage_share/{n}"] for n in weighted) == pytest.approx(1, abs=1e-6)
        assert r["reward_varies/completion_length"] > 0
        monitors = {"box_outside_rate", "repetition", "truncation_rate"} | \
            ({"near_copy_rate", "option_only_rate"} if preset == "crpo" else set())
        assert {f"monitor/{m}" for m in monitors} <= set(r), sorted(r)
    metrics = json.loads((run / "metrics.json").read_text())
    # 16-token completions are all cut: the truncation alarm (threshold 0 here) fires once, at step 1
    assert [(a["monitor"], a["step"]) for a in metrics["alarms"] if a["monitor"] == "truncation_rate"] == \
        [("truncation_rate", 1)]
    assert metrics["alarm_thresholds"]["truncation_rate"] == 0.0
