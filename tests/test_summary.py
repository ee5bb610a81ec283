"""``clinical_r1.summary``: a study folder's numbers, read from its files, with targets that can fail.

    .venv/bin/pytest tests/test_summary.py -q

The folder is written with the project's own writers (``generate`` sidecars, ``evaluate``, ``textmetrics``) on
hand-made answers with known scores, and TRL-shaped training logs with known trends.
"""

from __future__ import annotations

import json

import pytest

from clinical_r1.data import load_sample
from clinical_r1.files import write_json, write_jsonl
from clinical_r1.evaluate import evaluate
from clinical_r1.formats import CRPO
from clinical_r1.textmetrics import summarize_generations
from clinical_r1.summary import SUMMARY_JSON, SUMMARY_MD, bootstrap_diff, build_summary, write_summary

ITEMS = [dict(r) for r in load_sample()][:4]
GOOD = "Impression: thyroid storm with TSH 0.01 mU/L. Key finding: fever. Options: A rejected."


def _answers(d, method, prompt, texts):
    gen = d / method / "sample.jsonl"
    write_jsonl([{"id": it["id"], "sample": 0, "text": t, "n_tokens": len(t.split()), "finish_reason": "stop",
                  "dataset": "sample", "model": method, "prompt_kind": prompt} for it, t in zip(ITEMS, texts)], gen)
    write_json({"model": method, "dataset": "sample", "prompt_kind": prompt, "temperature": 0.0, "top_p": 1.0,
                "max_new_tokens": 64, "n": 1, "seed": 0, "backend": "transformers"}, gen.with_name(gen.name + ".meta.json"))
    evaluate(gen, ITEMS, out_path=gen.with_suffix(".metrics.json"), n_boot=100, dataset_name="sample")
    write_json({"method": method, "benchmark": "sample", **summarize_generations(gen, ITEMS)},
               gen.with_suffix(".textmetrics.json"))


def _train_log(run, rewards, zero_std, preset="crpo"):
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"stage: crpo\nreward:\n  preset: {preset}\n")
    write_jsonl([{"step": i + 1, "reward": r, "frac_reward_zero_std": z, "loss": 0.01 * (i + 1), "grad_norm": 0.1,
                  "rewards/accuracy/mean": r / 10} for i, (r, z) in enumerate(zip(rewards, zero_std))],
                run / "metrics.jsonl")


@pytest.fixture
def study(tmp_path):
    d = tmp_path / "demo"
    (d / "data" / "eval").mkdir(parents=True)
    write_jsonl(ITEMS, d / "data" / "eval" / "sample.jsonl")
    write_json({"eval": {"sample": {"path": "eval/sample.jsonl"}}}, d / "data" / "manifest.json")
    write_json({"recipe": "demo", "provenance": {"commit": "abc", "dirty": False},
                "stages": {"03_sft": {"duration_s": 100.0}, "04_crpo": {"duration_s": 50.5}}}, d / "pipeline.json")
    well = [CRPO.render(GOOD, f"Thyroid storm with TSH 0.01 mU/L. \\boxed{{{it['answer']}}}") for it in ITEMS]
    _answers(d, "sft", "crpo", well[:3] + ["no tags \\boxed{A}"])  # 3 of 4 well-formed
    _answers(d, "baseline_crpo_prompt", "crpo", ["free text"] * 4)
    write_jsonl([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0, "eval_loss": 1.5}], (d / "sft") / "metrics.jsonl")
    _train_log(d / "cold_start_crpo", [1, 1, 1, 5, 5, 5, 9, 9, 9], [0.2] * 9)
    grid = d / "ablations" / "cold_start_grpo-s0-1234abcd"
    _train_log(grid / "train", [9, 9, 9, 9, 5, 5, 1, 1, 1], [0.9] * 9, preset="grpo")
    write_json({"run_id": grid.name, "variant": "cold_start_grpo"}, grid / "done.json")
    return d


def test_numbers_per_stage_and_method(study):
    s = build_summary(study)
    assert s["provenance"]["commit"] == "abc" and s["stages_seconds"] == {"03_sft": 100.0, "04_crpo": 50.5}
    assert s["total_seconds"] == 150.5
    assert s["sft"]["loss_first"] == 2.0 and s["sft"]["loss_last"] == 1.0 and s["sft"]["dev_loss_best"] == 1.5
    ev = {r["method"]: r for r in s["evaluation"]}
    assert ev["sft"]["crpo_format"] == 0.75 and ev["sft"]["accuracy"] == 75.0 and ev["sft"]["valid_ratio"] == 1.0
    assert ev["baseline_crpo_prompt"]["crpo_format"] == 0.0 and ev["baseline_crpo_prompt"]["valid_ratio"] == 0.0


def test_rising_and_falling_rewards_are_reported_as_they_are(study):
    rl = build_summary(study)["rl"]
    up, down = rl["cold_start_crpo"], rl["cold_start_grpo"]  # the grid arm is named by its variant
    assert (up["reward_first_third"], up["reward_last_third"], up["reward_diff"]) == (1.0, 9.0, 8.0)
    assert down["reward_diff"] == -8.0 and down["reward_diff_ci"][1] < 0  # a falling curve stays falling
    assert up["frac_reward_zero_std_mean"] == pytest.approx(0.2) and up["steps_with_nonzero_loss"] == 9
    assert up["preset"] == "crpo" and down["preset"] == "grpo"


def test_targets_hold_or_fail_on_the_measured_values(study):
    t = {x["target"]: x for x in build_summary(study)["targets"]}
    assert t["SFT crpo format on held-out questions"]["holds"] is False  # 0.75 < 0.8
    assert t["SFT crpo format, all held-out sets pooled"]["value"] == 0.75  # one set here: the same number
    assert t["base model crpo format, same prompt"]["holds"] is True
    assert t["cold_start_crpo: mean frac_reward_zero_std"]["holds"] is True
    assert t["cold_start_grpo: mean frac_reward_zero_std"]["holds"] is False  # 0.9 > 0.5
    assert t["cold_start_crpo: training steps"]["holds"] is True


def test_written_files(study):
    write_summary(study)
    s = json.loads((study / SUMMARY_JSON).read_text())
    md = (study / SUMMARY_MD).read_text()
    assert s["recipe"] == "demo" and "| sft | sample | 4 | 75.0 [" in md and "**no**" in md


def test_a_study_inside_the_repository_names_no_machine_folder(study, monkeypatch):
    """Committed summaries name folders relative to the repository (here: the study's parent as the root)."""
    from clinical_r1 import records

    monkeypatch.setattr(records, "REPO_ROOT", study.parent.resolve())
    write_summary(study)
    text = (study / SUMMARY_JSON).read_text()
    assert str(study.parent.resolve()) not in text
    s = json.loads(text)
    assert s["out"] == "demo" and s["sft"]["run"] == "demo/sft" and s["rl"]["cold_start_crpo"]["run"] == "demo/cold_start_crpo"


def test_bootstrap_difference_interval():
    lo, hi = bootstrap_diff([1.0, 1.2, 0.8], [3.0, 3.1, 2.9])
    assert 1.5 < lo < 2.0 < hi < 2.5
    lo, hi = bootstrap_diff([1.0, 3.0, 2.0], [2.0, 1.0, 3.0])
    assert lo < 0 < hi


def test_each_rl_run_reports_its_mean_advantage_shares_and_alarms(study):
    run = study / "cold_start_crpo"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r.update({"advantage_share/accuracy": 0.8 + 0.1 * (i % 2), "reward_varies/accuracy": 0.5})
        if i != 4:  # a step with no varying group logs no share
            r["advantage_share/clinical_reasoning"] = 0.2 - 0.1 * (i % 2)
    write_jsonl(rows, run / "metrics.jsonl")
    write_json({"alarms": [{"monitor": "truncation_rate", "step": 3, "value": 0.4, "threshold": 0.3}]},
               run / "metrics.json")
    s = write_summary(study)
    up, down = s["rl"]["cold_start_crpo"], s["rl"]["cold_start_grpo"]
    assert up["advantage_share_mean"] == pytest.approx({"accuracy": (5 * 0.8 + 4 * 0.9) / 9,
                                                        "clinical_reasoning": (4 * 0.2 + 4 * 0.1) / 8})
    assert up["reward_varies_mean"] == {"accuracy": 0.5} and up["alarms"][0]["step"] == 3
    assert down["advantage_share_mean"] == {} and down["alarms"] is None  # a run from before the monitors
    assert "alarms: truncation_rate at step 3" in (study / SUMMARY_MD).read_text()
