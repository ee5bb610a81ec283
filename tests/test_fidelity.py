"""The paper recipe against the authors' verl run, and the KL form every recipe states.

Facts of the authors' run (scripts/grpo/run_qwen-3B_after-deepseek-distil-on-medqa_seq_balance_medqa.sh in
the public repository BoyangGu1/Clinical-R1-3B, with verl's defaults where the script sets nothing). The
README's fidelity table lists what still differs, and why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clinical_r1 import config as C

REPO = Path(__file__).resolve().parents[1]
CRPO_RECIPES = sorted((REPO / "configs").glob("*_crpo.yaml"))

AUTHORS = {
    "learning_rate": 1e-6,  # actor.optim.lr
    "lr_scheduler_type": "constant",  # verl warmup_style constant, no warmup
    "weight_decay": 0.01,  # verl's AdamW default
    "max_grad_norm": 1.0,  # actor.grad_clip
    "num_generations": 5,  # rollout.n
    "temperature": 0.6,  # rollout.temperature
    "beta": 0.001,  # actor.kl_loss_coef
    "use_bias_correction_kl": False,  # low_var_kl: plain k3, no importance-ratio factor
    "entropy_coef": 0.001,  # actor.entropy_coeff default, not overridden
    "epsilon": 0.2,  # actor.clip_ratio
    "num_iterations": 1,  # actor.ppo_epochs
    "max_completion_length": 4096,  # data.max_response_length
    "num_train_epochs": 20,  # trainer.total_epochs
    "scale_rewards": "group",  # GRPO advantage divided by the group std
    "loss_type": "bnpo",  # masked_mean over each micro-batch: a token mean, not a sequence mean
    "vllm_importance_sampling_correction": False,  # verl corrects no vLLM-vs-trainer log-prob mismatch
}
PROMPTS_PER_ROLLOUT = 512  # data.train_batch_size
PROMPTS_PER_UPDATE = 16  # actor.ppo_mini_batch_size


def test_paper_recipe_has_the_authors_settings():
    cfg = C.load_config(REPO / "configs/paper_3b_crpo.yaml")
    args = C.trainer_args(cfg, cpu_safe=True)
    for key, want in AUTHORS.items():
        assert getattr(args, key) == want, key
    g = args.num_generations
    per_update = args.per_device_train_batch_size * args.gradient_accumulation_steps
    per_rollout = args.per_device_train_batch_size * args.steps_per_generation
    assert per_update == PROMPTS_PER_UPDATE * g and per_rollout == PROMPTS_PER_ROLLOUT * g
    assert args.generation_batch_size == PROMPTS_PER_ROLLOUT * g
    assert cfg["max_prompt_length"] == 1024


@pytest.mark.parametrize("path", CRPO_RECIPES, ids=lambda p: p.name)
def test_every_recipe_with_a_kl_states_its_form(path):
    """beta > 0 sets the KL form explicitly, false (verl's k3), on a line whose comment says why."""
    trainer = yaml.safe_load(path.read_text())["trainer"]
    if trainer.get("beta", 0) > 0:
        assert trainer.get("use_bias_correction_kl") is False, f"{path.name}: the paper's plain k3 KL"
        line = next(ln for ln in path.read_text().splitlines() if ln.strip().startswith("use_bias_correction_kl:"))
        assert "#" in line and "k3" in line.split("#", 1)[1], line


def test_check_config_warns_when_the_kl_form_is_left_to_trl(tmp_path, caplog):
    from clinical_r1.cli import main

    raw = yaml.safe_load((REPO / "configs/cpu_demo_crpo.yaml").read_text())
    raw["trainer"]["beta"] = 0.001  # the paper's KL (the CPU demo turns it off)
    assert C.config_warnings(C.load_config(raw)) == []
    del raw["trainer"]["use_bias_correction_kl"]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert any("use_bias_correction_kl" in w for w in C.config_warnings(C.load_config(raw)))
    with caplog.at_level("WARNING"):
        assert main(["check-config", str(tmp_path / "r.yaml")]) == 0
    assert any("use_bias_correction_kl left to TRL's default" in r.getMessage() for r in caplog.records)
    raw["trainer"]["beta"] = 0.0
    assert C.config_warnings(C.load_config(raw)) == []
