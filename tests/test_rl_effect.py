"""RL moves the policy toward its reward, on held-out questions, and the opposite reward moves it the other way.

    .venv/bin/pytest tests/test_rl_effect.py -q          # ~4 min on 2 cores

This is the test that catches RL wired wrong: an advantage with the wrong sign, or LoRA weights that are updated
but never used for generation or evaluation, would leave the trained policy where it started or move it the wrong
way (measured with the sign flipped inside TRL: both direction tests fail). Advantages shuffled across completions
can still move both runs their own way by chance (measured: README, "The wiring test"), so the runs also record
what TRL's loss trains on, and each completion's advantage must be its own reward, recomputed from its text
(``test_each_completion_is_trained_with_its_own_reward``). The real path runs end to end: ``crpo.run_crpo``
(TRL's ``GRPOTrainer`` on the embedded model, from a training config) and ``rleffect.measure_run`` (the same
held-out probe the demo reports: the run's cold start against its trained policy, same seeds, paired by
question).

The reward is one a 135M model learns in a few CPU steps: answer length (``rewards.completion_length``, words),
beside a user's reward named by import path (``clinical_r1.examples.rewards:concise_answer``, 1 for at most 30
words), so the same runs show that a researcher's own reward trains, is logged and moves on held-out questions.
Under the short ``direct`` prompt the base model's answers are bimodal (about half stop within 40 tokens, the
rest run to the 64-token cap), so both directions have room. One run rewards shorter answers, the other, with
both weights negated, longer ones; each must move the held-out length and the concise share its own way with a 95%
CI that excludes 0.
"""

from __future__ import annotations

import pytest

from clinical_r1 import study
from clinical_r1.crpo import run_crpo
from clinical_r1.files import read_jsonl, read_yaml
from clinical_r1.rleffect import measure_run

pytestmark = pytest.mark.slow

STEPS = 5  # optimiser steps of 2 prompts x G 4 (8 steps moved the held-out length by ~30 words, CI +-4)
PROBE = 16  # held-out questions, 4 samples each
CONCISE = "clinical_r1.examples.rewards:concise_answer"  # a user's reward, by import path
# Different training seeds for the two directions: with one seed the runs draw the same answers, so their advantages
# are exact negatives and any bug that scrambles them (rewards shuffled across completions) still moves the two runs
# in exactly opposite, random directions, which pass both tests half the time. Measured with advantages shuffled
# inside TRL's trainer and one seed: shorter -11.6 [-16.2, -7.7] words, longer +8.5 [+3.7, +12.9], all tests passed.
SEEDS = {-1.0: 0, 1.0: 1}


def rewards(sign: float) -> dict[str, float]:
    """sign -1: shorter answers and more concise ones; +1: both weights negated."""
    return {"completion_length": sign, CONCISE: -sign}


def train(root, splits, sign: float):
    return run_crpo("configs/cpu_demo_crpo.yaml", {
        "output_root": str(root), "run_name": "longer" if sign > 0 else "shorter", "seed": SEEDS[sign],
        "model.init_adapter": None, "data.name": "split", "data.path": str(splits), "data.split": "rl",
        "data.limit": None, "reward.preset": None, "reward.prompt": "direct",  # the reward alone, no preset
        "reward.functions": rewards(sign), "reward.k": None,
        "trainer.max_steps": STEPS, "trainer.learning_rate": 1e-3, "trainer.max_completion_length": 64,
        "trainer.beta": 0.0, "trainer.entropy_coef": 0.0, "trainer.save_strategy": "no",
        "trainer.per_device_train_batch_size": 8, "trainer.num_generations": 4, "trainer.temperature": 1.0})


def _recording_loss(seen: list):
    """TRL's loss, recording what it trains on: each completion's text and the advantage it is pushed with."""
    from trl import GRPOTrainer

    original = GRPOTrainer._compute_loss

    def record(self, model, inputs):
        mask = inputs["completion_mask"].bool()
        texts = [self.processing_class.decode(ids[m], skip_special_tokens=True)
                 for ids, m in zip(inputs["completion_ids"], mask)]
        prompts = [tuple(ids[m].tolist()) for ids, m in zip(inputs["prompt_ids"], inputs["prompt_mask"].bool())]
        seen.append((prompts, texts, inputs["advantages"].detach().float().tolist()))
        return original(self, model, inputs)

    return record


@pytest.fixture(scope="module")
def effects(tmp_path_factory):
    from trl import GRPOTrainer

    root = tmp_path_factory.mktemp("rl_effect")
    splits = root / "data"
    study.prepare_data(splits, train_benchmark="sample", split_sizes={"sft": 4, "rl": 16, "dev": 2, "test": PROBE},
                       seed=0)
    probe = study.probe_items(splits, ["sample"])
    out = {}
    for sign in (-1.0, 1.0):
        seen: list = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(GRPOTrainer, "_compute_loss", _recording_loss(seen))
            run = train(root, splits, sign)
        out[sign] = measure_run(run, probe, n=4, batch_size=PROBE, seed=0, n_boot=2000)
        out[sign]["dir"], out[sign]["trained_on"] = run, seen
    return out


def test_each_completion_is_trained_with_its_own_reward(effects):
    """At TRL's loss, each completion's advantage is its own reward, recomputed here from its text, standardised
    among the G completions of its prompt (``scale_rewards: group``; TRL shuffles a generation batch before the loss,
    so groups are found by prompt): rewards aligned to the wrong completions (shuffled) or with the wrong sign fail
    here whatever the held-out moves do (a shuffled run can still drift its own way by chance)."""
    import numpy as np

    from clinical_r1.examples.rewards import concise_answer
    from clinical_r1.rewards import completion_length

    for sign, e in effects.items():
        assert len(e["trained_on"]) == STEPS
        w = rewards(sign)
        for prompts, texts, adv in e["trained_on"]:
            r = (w["completion_length"] * np.array(completion_length(texts))
                 + w[CONCISE] * np.array(concise_answer(texts)))
            want = np.zeros(len(texts))
            groups = {}
            for i, p in enumerate(prompts):
                groups.setdefault(p, []).append(i)
            assert sorted(len(g) for g in groups.values()) == [4, 4], "2 prompts x G 4 a step"
            for g in groups.values():
                want[g] = (r[g] - r[g].mean()) / (r[g].std(ddof=1) + 1e-4)
            assert np.allclose(adv, want, atol=1e-3), (sign, texts, adv, want.tolist())


def test_probe_questions_are_held_out(effects):
    for e in effects.values():
        assert len(e["probe_ids"]) == PROBE and all(i.startswith("sample/") for i in e["probe_ids"])
        assert e["cold_start"] == "embedded:smollm2-135m-instruct"


def test_rewarding_shorter_answers_shortens_held_out_answers(effects):
    c = effects[-1.0]["components"]
    assert c["completion_length"]["ci"][1] < 0, c["completion_length"]
    assert c["concise_answer"]["ci"][0] > 0, c["concise_answer"]  # the user's reward moved too
    assert c["reward"]["ci"][0] > 0, c["reward"]


def test_the_negated_reward_lengthens_them(effects):
    c = effects[1.0]["components"]
    assert c["completion_length"]["ci"][0] > 0, c["completion_length"]
    assert c["concise_answer"]["ci"][1] < 0, c["concise_answer"]
    assert c["reward"]["ci"][0] > 0, c["reward"]


def test_the_user_reward_is_trained_logged_and_named_by_import_path(effects):
    """The run's config.yaml keeps the import path; TRL's logs carry the reward and its advantage share."""
    run = effects[-1.0]["dir"]
    assert read_yaml(run / "config.yaml", "config")["reward"]["functions"] == rewards(-1.0)
    rows = read_jsonl(run / "metrics.jsonl")
    for key in ("rewards/concise_answer/mean", "advantage_share/concise_answer", "advantage_share/completion_length"):
        assert any(key in r for r in rows), key
    assert effects[-1.0]["weights"] == {"completion_length": -1.0, "concise_answer": 1.0}


def test_both_runs_start_from_the_same_answers(effects):
    """Same cold start, seeds and probe: the two baselines are the same samples, so the moves are comparable."""
    a, b = (effects[s]["components"]["completion_length"]["before"] for s in (-1.0, 1.0))
    assert a == pytest.approx(b)
