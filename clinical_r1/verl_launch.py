"""The paper's run past one GPU: a verl 0.9 launch (parquet prompts + ``launch.sh``) from a training config.

    python -m clinical_r1 verl-launch --recipe paper_3b --splits data/splits --out results/verl_paper_3b
    NNODES=1 NGPUS_PER_NODE=8 MODEL=results/paper_3b_sft/merged bash results/verl_paper_3b/launch.sh
    bash results/verl_paper_3b/launch.sh --cfg job          # Hydra prints the composed config; nothing runs
    PRINT_OVERRIDES=1 bash results/verl_paper_3b/launch.sh  # the override list, one a line (what the tests compose)

    python -m clinical_r1 verl-launch --recipe smoke --splits data/splits --out results/verl_smoke   # 1 GPU, 0.5B, 3 steps
    python -m clinical_r1 verl-launch --recipe paper_3b --lora      # LoRA instead of full-parameter training
    python -m clinical_r1 verl-launch --recipe paper_3b --gdpo      # ablation: verl's GDPO (not the paper's method)

The authors trained full-parameter Qwen2.5-3B with verl on 8 GPUs (BoyangGu1/Clinical-R1-3B
``scripts/grpo/*.sh``, early-2025 verl). Their values are the :data:`AUTHORS` table; what our training config
says (``configs/paper_3b_crpo.yaml``: the same run on one GPU with TRL) is translated into verl 0.9 keys by
:func:`from_config`; every override in the script carries a comment naming its source, and the header lists
what was dropped or translated from the authors' scripts and why (:data:`DROPPED`). The reward is
:func:`clinical_r1.verl_reward.compute_score`, reached through ``reward.custom_reward_function`` (verl 0.9
reads the custom reward only there; the legacy top-level ``custom_reward_function`` composes but never reaches
the main trainer) with the preset and ``k`` in ``reward_kwargs``.

Checked on CPU (tests/test_verl_launch.py) by composing verl's packaged ``ppo_trainer`` config with the
script's own overrides; rollout, FSDP, Ray and training behaviour are not covered by any CPU test.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from clinical_r1.config import load_config, reward_preset
from clinical_r1.errors import UsageError
from clinical_r1.files import atomic_path
from clinical_r1.rewards import get_preset
from clinical_r1.verl_reward import to_verl_parquet

log = logging.getLogger(__name__)

VERL_VERSION = "0.9.1"  # the release whose keys the script uses (requirements-verl.txt)
AUTHORS_SCRIPT = "run_qwen-3B_after-deepseek-distil-on-medqa_seq_balance_medqa.sh"
A = "authors"  # the comment naming the authors' script (AUTHORS_SCRIPT, named in the header)
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Override:
    """One Hydra override: ``key=value`` (``+key=value`` when verl's packaged config lacks the key)."""

    key: str
    value: str  # Hydra's value syntax; may hold a shell expansion such as ${NNODES:-1}
    source: str  # where the value comes from, written as the line's comment
    add: bool = False

    def text(self) -> str:
        return f"{'+' if self.add else ''}{self.key}={self.value}"


# The authors' verl settings that our TRL config cannot express (verl-only), with their values.
AUTHORS: dict[str, Any] = {
    "actor_rollout_ref.model.use_remove_padding": "True",
    "actor_rollout_ref.actor.use_dynamic_bsz": "True",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 24000,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.actor.fsdp_config.param_offload": "False",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": "False",
    "actor_rollout_ref.rollout.name": "vllm",
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
    "actor_rollout_ref.rollout.gpu_memory_utilization": 0.6,
    "actor_rollout_ref.ref.fsdp_config.param_offload": "True",
    "algorithm.kl_ctrl.kl_coef": 0.001,
    "trainer.critic_warmup": 0,
    "trainer.val_before_train": "False",
    "trainer.save_freq": 5,
    "trainer.test_freq": 1,
}

# What the authors' scripts set that verl 0.9 refuses or ignores, and what became of it.
DROPPED: list[tuple[str, str]] = [
    ("actor_rollout_ref.actor.fsdp_config.grad_offload=False", "dropped: the key is gone from verl (composing it "
     "fails); verl offloads gradients with param_offload"),
    ("+actor_rollout_ref.rollout.add_bo_think_token=False", "dropped: exists only in the authors' verl fork"),
    ("+actor_rollout_ref.rollout.logging_path=null", "dropped: exists only in the authors' verl fork"),
    ("data.val_batch_size=512", "dropped: deprecated in verl (validation runs the whole set as one batch)"),
    ("VLLM_ATTENTION_BACKEND=XFORMERS", "dropped: vLLM 0.24 (verl[vllm] 0.9.1) chooses its own attention backend"),
    ("+trainer.val_before_train=False", "translated: trainer.val_before_train is a packaged key now (no '+')"),
    ("entropy_coeff (unset: early-2025 verl default 0.001)", "translated: set explicitly to 0.001; verl 0.9's default is 0"),
    ("ref/rollout log-prob batching (unset: followed actor.use_dynamic_bsz)", "translated: verl 0.9 no longer "
     "follows the actor, so log_prob_use_dynamic_bsz and log_prob_max_token_len_per_gpu are set explicitly"),
    ("actor_rollout_ref.model.path=<their full-parameter SFT checkpoint>", "translated: $MODEL, by default our "
     "cold-start merged into the base (python -m clinical_r1 merge), or the config's model.name without one"),
    ("data.train_files / val_files=verl_data/medqa_grpo/{train,test}.parquet", "translated: our RL and dev "
     "splits through clinical_r1.verl_reward.to_verl_parquet (data/train.parquet, data/val.parquet)"),
    ("trainer.logger=['console','wandb']", "translated: ['console'] by default; LOGGER=\"['console','wandb']\" "
     "restores theirs"),
    ("data.train_batch_size=1024 (the plain GRPO script)", "not used: the distil-then-GRPO script's 512 is the "
     "paper's run"),
]

# name -> (training config, config overrides, verl size overrides): the same script at another size.
RECIPES: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "paper_3b": ("configs/paper_3b_crpo.yaml", [], {}),
    # one GPU, Qwen2.5-0.5B, 3 steps of 8 prompts x 5, 1,024-token responses: a few minutes on an 80 GB GPU
    "smoke": ("configs/paper_3b_crpo.yaml",
              ["model.name=Qwen/Qwen2.5-0.5B-Instruct", "model.init_adapter=null", "trainer.max_steps=3",
               "trainer.steps_per_generation=4", "trainer.gradient_accumulation_steps=4",
               "trainer.max_completion_length=1024", "run_name=verl_smoke"],
              {"actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
               "actor_rollout_ref.rollout.gpu_memory_utilization": 0.4,
               "trainer.save_freq": -1, "trainer.test_freq": -1, "ngpus_default": 1}),
}


def _bool(v: Any) -> str:
    return "True" if v else "False"


def batch_sizes(trainer: Mapping[str, Any]) -> tuple[int, int, int]:
    """(prompts per rollout, prompts per PPO mini-batch, G) from TRL's single-process batch arithmetic:
    ``per_device x steps_per_generation`` completions per rollout, ``per_device x grad_accum`` per optimiser step."""
    g = int(trainer["num_generations"])
    per = int(trainer["per_device_train_batch_size"])
    rollout = per * int(trainer.get("steps_per_generation") or trainer["gradient_accumulation_steps"])
    mini = per * int(trainer["gradient_accumulation_steps"])
    for what, n in (("steps_per_generation", rollout), ("gradient_accumulation_steps", mini)):
        if n % g:
            raise UsageError(f"trainer.per_device_train_batch_size x trainer.{what} = {n} completions is not a "
                             f"whole number of groups of num_generations={g}")
    if rollout % mini:
        raise UsageError(f"the rollout ({rollout // g} prompts) is not a whole number of PPO mini-batches "
                         f"({mini // g} prompts)")
    return rollout // g, mini // g, g


def from_config(cfg: Mapping[str, Any], lora: bool = False, gdpo: bool = False,
                size: Mapping[str, Any] | None = None) -> list[Override]:
    """verl 0.9 overrides for a resolved CRPO training config (:func:`clinical_r1.config.load_config`)."""
    t = cfg["trainer"]
    authors = {**AUTHORS, **(size or {})}  # a recipe's size replaces the authors' verl-only values
    c = "config"  # sources below: "config trainer.x" names the training config's key
    train_batch, mini, g = batch_sizes(t)
    if cfg["reward"]["weights"]:
        raise UsageError("reward.weights: verl's compute_score takes a preset and k only (reward_kwargs); "
                         "use a preset, or train with TRL")
    if cfg["reward"]["preset"] is None:
        raise UsageError("reward.preset: verl's compute_score starts from a preset; name one (reward.functions adds "
                         "rewards to it)")
    preset = reward_preset(cfg)
    local = sorted(n for n, ref in preset.sources.items() if ":" not in ref)
    if local:
        raise UsageError(f"reward.functions: {local} are registered in this process only; verl's workers import rewards "
                         f"by path: define them in a module and name them 'package.module:function'")
    aggregation = "normalize_then_sum" if gdpo else t.get("multi_objective_aggregation", "sum_then_normalize")
    o: list[Override] = []

    def add(key: str, value: Any, source: str, plus: bool = False) -> None:
        o.append(Override(key, str(value), source, plus))

    # --- algorithm and data
    add("algorithm.adv_estimator", "gdpo" if aggregation == "normalize_then_sum" else "grpo",
        f"{c} trainer.multi_objective_aggregation={aggregation} (grpo: the paper's sum_then_normalize; "
        "gdpo: normalise each component, then sum; an ablation, not the paper's method)")
    if aggregation == "normalize_then_sum":
        keys = [n for n, w in preset.weights.items() if w != 0]
        add("algorithm.gdpo_reward_keys", "[" + ",".join(keys) + "]",
            f"our preset {preset.name}: the components compute_score returns", plus=True)
        add("algorithm.gdpo_reward_weights", "[" + ",".join(repr(preset.weights[n]) for n in keys) + "]",
            f"our preset {preset.name}: its weights (k={preset.weights[preset.accuracy_reward]:g})", plus=True)
    add("data.train_files", "${DATA_DIR}/train.parquet", "ours: verl-export of the RL split")
    add("data.val_files", "${DATA_DIR}/val.parquet", "ours: verl-export of the dev split")
    add("data.prompt_key", "prompt", "ours: the column verl_reward.to_verl_parquet writes")
    add("data.train_batch_size", train_batch, f"{A} 512; {c} per_device_train_batch_size x steps_per_generation / G")
    add("data.max_prompt_length", cfg.get("max_prompt_length") or 1024, f"{A} 1024; {c} max_prompt_length")
    add("data.max_response_length", t["max_completion_length"], f"{A} 4096; {c} trainer.max_completion_length")
    add("data.filter_overlong_prompts", "True", "ours: a prompt over max_prompt_length is dropped, not an error")
    add("data.seed", cfg["seed"], f"{c} seed")
    # --- policy model
    add("actor_rollout_ref.model.path", "${MODEL}", "authors: their SFT checkpoint; ours: $MODEL (see header)")
    add("actor_rollout_ref.model.use_remove_padding", authors["actor_rollout_ref.model.use_remove_padding"], A)
    add("actor_rollout_ref.model.enable_gradient_checkpointing", _bool(t.get("gradient_checkpointing", True)),
        f"{A} True; {c} trainer.gradient_checkpointing")
    if lora:
        add("actor_rollout_ref.model.lora_rank", cfg["lora"]["r"], f"--lora: {c} lora.r (authors: full-parameter)")
        add("actor_rollout_ref.model.lora_alpha", cfg["lora"]["alpha"], f"--lora: {c} lora.alpha")
        add("actor_rollout_ref.model.target_modules", cfg["lora"]["target_modules"], f"--lora: {c} lora.target_modules")
        add("actor_rollout_ref.rollout.load_format", "safetensors",
            "--lora: vLLM loads the base weights and receives only the adapter (verl's LoRA guide)")
    # --- actor (PPO update)
    act = "actor_rollout_ref.actor"
    add(f"{act}.optim.lr", t["learning_rate"], f"{A} 1e-6; {c} trainer.learning_rate")
    add(f"{act}.optim.lr_scheduler_type", t.get("lr_scheduler_type", "constant"), f"{c} trainer.lr_scheduler_type "
        "(authors: verl's default constant)")
    add(f"{act}.optim.lr_warmup_steps", t.get("warmup_steps") or -1, f"{c} trainer.warmup_steps (-1: none)")
    add(f"{act}.optim.weight_decay", t["weight_decay"], f"{c} trainer.weight_decay (authors: verl's default 0.01)")
    add(f"{act}.optim.clip_grad", t["max_grad_norm"], f"{c} trainer.max_grad_norm (authors: verl's default 1.0)")
    add(f"{act}.ppo_mini_batch_size", mini, f"{A} 16; {c} per_device_train_batch_size x gradient_accumulation_steps / G")
    add(f"{act}.ppo_epochs", t.get("num_iterations", 1), f"{c} trainer.num_iterations (authors: verl's default 1)")
    add(f"{act}.use_dynamic_bsz", authors[f"{act}.use_dynamic_bsz"], A)
    add(f"{act}.ppo_max_token_len_per_gpu", authors[f"{act}.ppo_max_token_len_per_gpu"], A)
    add(f"{act}.use_kl_loss", _bool(t["beta"] > 0), f"{A} True; {c} trainer.beta > 0")
    add(f"{act}.kl_loss_coef", t["beta"], f"{A} 0.001; {c} trainer.beta")
    add(f"{act}.kl_loss_type", authors[f"{act}.kl_loss_type"], f"{A}: k3, as {c} (use_bias_correction_kl: false)")
    add(f"{act}.entropy_coeff", t.get("entropy_coef", 0.0), f"{c} trainer.entropy_coef: the authors' early-2025 "
        "verl default 0.001 (verl 0.9's default is 0)")
    add(f"{act}.clip_ratio_low", t["epsilon"], f"{c} trainer.epsilon (authors: verl's default 0.2)")
    add(f"{act}.clip_ratio_high", t.get("epsilon_high") or t["epsilon"], f"{c} trainer.epsilon_high")
    add(f"{act}.loss_agg_mode", "token-mean", f"{c} trainer.loss_type={t['loss_type']} (authors: verl's default)")
    add(f"{act}.fsdp_config.param_offload", authors[f"{act}.fsdp_config.param_offload"], A)
    add(f"{act}.fsdp_config.optimizer_offload", authors[f"{act}.fsdp_config.optimizer_offload"], A)
    # --- rollout (vLLM) and reference
    rol = "actor_rollout_ref.rollout"
    add(f"{rol}.name", authors[f"{rol}.name"], A)
    add(f"{rol}.n", g, f"{A} 5; {c} trainer.num_generations")
    add(f"{rol}.temperature", t["temperature"], f"{A} 0.6; {c} trainer.temperature")
    add(f"{rol}.top_p", t.get("top_p", 1.0), f"{c} trainer.top_p")
    add(f"{rol}.top_k", t.get("top_k") or -1, f"{c} trainer.top_k (verl: -1 = off)")
    add(f"{rol}.tensor_model_parallel_size", "${ROLLOUT_TP}", f"{A} 2; $ROLLOUT_TP")
    add(f"{rol}.gpu_memory_utilization", authors[f"{rol}.gpu_memory_utilization"], A)
    for role in ("rollout", "ref"):
        add(f"actor_rollout_ref.{role}.log_prob_use_dynamic_bsz", "True", "authors: early-2025 verl followed "
            "actor.use_dynamic_bsz")
        add(f"actor_rollout_ref.{role}.log_prob_max_token_len_per_gpu", authors[f"{act}.ppo_max_token_len_per_gpu"],
            "authors: early-2025 verl followed actor.ppo_max_token_len_per_gpu")
    add("actor_rollout_ref.ref.fsdp_config.param_offload", authors["actor_rollout_ref.ref.fsdp_config.param_offload"], A)
    add("algorithm.kl_ctrl.kl_coef", authors["algorithm.kl_ctrl.kl_coef"], f"{A}; inactive without use_kl_in_reward")
    # --- our reward
    rw = "reward.custom_reward_function"
    add(f"{rw}.path", "${REWARD_PY}", "ours: clinical_r1/verl_reward.py (verl 0.9 reads only reward.custom_reward_function)")
    add(f"{rw}.name", "compute_score", "ours")
    add(f"{rw}.reward_kwargs.preset", preset.name, f"{c} reward.preset", plus=True)
    add(f"{rw}.reward_kwargs.k", preset.weights[preset.accuracy_reward], f"{c} reward.k (null: the preset's own)",
        plus=True)
    if preset.sources:
        import json

        functions = {ref: preset.weights[n] for n, ref in preset.sources.items()}
        add(f"{rw}.reward_kwargs.functions", "'" + json.dumps(functions, separators=(",", ":")) + "'",
            f"{c} reward.functions (JSON: an import path's ':' cannot be a Hydra key)", plus=True)
    add("reward.reward_manager.name", "naive", "verl's default: compute_score per response, its dict logged")
    # --- trainer
    add("trainer.nnodes", "${NNODES}", "ours: $NNODES (authors 1)")
    add("trainer.n_gpus_per_node", "${NGPUS_PER_NODE}", "ours: $NGPUS_PER_NODE (authors 8)")
    add("trainer.total_epochs", t["num_train_epochs"], f"{A} 20; {c} trainer.num_train_epochs")
    steps = t.get("max_steps", -1)
    if steps and steps > 0:
        add("trainer.total_training_steps", steps, f"{c} trainer.max_steps")
    for k in ("trainer.critic_warmup", "trainer.val_before_train", "trainer.save_freq", "trainer.test_freq"):
        add(k, authors[k], A)
    add("trainer.max_actor_ckpt_to_keep", t.get("save_total_limit") or "null", f"{c} trainer.save_total_limit")
    add("trainer.logger", "${LOGGER}", "authors ['console','wandb']; ours $LOGGER, default ['console']")
    add("trainer.project_name", "clinical-r1", "ours")
    add("trainer.experiment_name", cfg["run_name"], f"{c} run_name")
    add("trainer.default_local_dir", "${CKPT_DIR}", "ours: $CKPT_DIR")
    return o


def _fix_size_sources(o: list[Override], size: Mapping[str, Any]) -> list[Override]:
    return [Override(x.key, x.value, "the recipe's size" if x.key in size else x.source, x.add) for x in o]


def render_script(overrides: list[Override], defaults: Mapping[str, str], header: str) -> str:
    """``launch.sh``: environment defaults, then ``ARGS`` with one override and its source per line."""
    lines = ["#!/usr/bin/env bash", *("# " + h if h else "#" for h in header.splitlines()), "set -euo pipefail",
             'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"']
    for k, v in defaults.items():
        lines.append(f': "${{{k}:={v}}}"')
    lines.append('[[ -f "$REWARD_PY" ]] || { echo "REWARD_PY=$REWARD_PY: clinical_r1 is not importable by python3 here '
                 '(pip install --no-deps -e . in .venv-verl)" >&2; exit 2; }')
    lines.append("ARGS=(")
    for x in overrides:
        lines.append(f"  # {x.source}")
        lines.append('  "' + x.text().replace("\\", "\\\\").replace('"', '\\"') + '"')  # JSON values hold quotes
    lines += [")",
              'if [[ -n "${PRINT_OVERRIDES:-}" ]]; then printf \'%s\\n\' "${ARGS[@]}"; exit 0; fi',
              'exec python3 -m verl.trainer.main_ppo "${ARGS[@]}" "$@"', ""]
    return "\n".join(lines)


def write_launch(out_dir: str | os.PathLike, recipe: str = "paper_3b", splits: str | os.PathLike | None = None,
                 config: str | os.PathLike | None = None, config_overrides: list[str] | None = None,
                 lora: bool = False, gdpo: bool = False, data_source: str = "clinical_r1/medqa") -> Path:
    """Write ``out_dir/data/{train,val}.parquet`` and ``out_dir/launch.sh``; returns the script's path."""
    if recipe not in RECIPES:
        raise UsageError(f"unknown verl recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    cfg_path, cfg_sets, size = RECIPES[recipe]
    cfg = load_config(config or REPO / cfg_path, [*cfg_sets, *(config_overrides or [])], stage="crpo")
    overrides = _fix_size_sources(from_config(cfg, lora=lora, gdpo=gdpo, size=size), size)
    out = Path(out_dir)
    splits = Path(splits or cfg["data"]["path"])
    preset = cfg["reward"]["preset"]
    prompt = get_preset(preset).prompt
    for name, split in (("train", cfg["data"]["split"]), ("val", "dev")):
        src = splits / f"{split}.jsonl"
        if not src.is_file():
            raise UsageError(f"--splits {splits}: no {split}.jsonl (write it with python -m clinical_r1 split)")
        to_verl_parquet(src, out / "data" / f"{name}.parquet", prompt_kind=prompt, data_source=data_source,
                        preset=preset)
    merged = f"{cfg['model']['init_adapter'].rstrip('/').rsplit('/', 1)[0]}/merged" if cfg["model"]["init_adapter"] else None
    defaults = {
        "NNODES": "1",
        "NGPUS_PER_NODE": str(size.get("ngpus_default", 8)),
        "ROLLOUT_TP": str(size.get("actor_rollout_ref.rollout.tensor_model_parallel_size",
                                   AUTHORS["actor_rollout_ref.rollout.tensor_model_parallel_size"])),
        "MODEL": merged or cfg["model"]["name"],
        "DATA_DIR": "$HERE/data",
        "CKPT_DIR": "$HERE/checkpoints",
        "LOGGER": "['console']",
        "REWARD_PY": "$(python3 -c 'import clinical_r1.verl_reward as m; print(m.__file__)')",
    }
    header = _header(recipe, cfg, lora, gdpo, merged, out)
    script = out / "launch.sh"
    with atomic_path(script) as tmp:
        Path(tmp).write_text(render_script(overrides, defaults, header))
    script.chmod(0o755)
    log.info("%s: verl %s launch (%d overrides) for recipe %s", script, VERL_VERSION, len(overrides), recipe)
    return script


def _header(recipe: str, cfg: Mapping[str, Any], lora: bool, gdpo: bool, merged: str | None, out: Path) -> str:
    trained = "LoRA (--lora)" if lora else "all parameters (full fine-tuning, as the authors)"
    h = [f"verl {VERL_VERSION} launch of recipe {recipe}: written by python -m clinical_r1 verl-launch; edit "
         "the generator, not this file.",
         f"Training config: {cfg['run_name']} (reward preset {cfg['reward']['preset']}); trains {trained}.",
         "Advantage: " + ("GDPO (--gdpo): each component normalised in its group, then summed; an ablation "
                          "twin of normalize_then_sum, NOT the paper's method." if gdpo else
                          "GRPO on the summed reward (sum_then_normalize), the paper's method."),
         "",
         "Run (in .venv-verl: make venv-verl; clinical_r1 importable on every node):",
         f"  NNODES=1 NGPUS_PER_NODE=8 bash {out}/launch.sh          # one node",
         "  bash launch.sh --cfg job                                 # print the composed config only",
         "  PRINT_OVERRIDES=1 bash launch.sh                         # print the overrides only",
         "Several nodes: ray start --head on one, ray start --address=HEAD:6379 on the others, then",
         "  ray job submit --address=http://HEAD:8265 -- env NNODES=N NGPUS_PER_NODE=8 bash launch.sh",
         "Environment: NNODES, NGPUS_PER_NODE, ROLLOUT_TP (vLLM tensor parallel), MODEL, DATA_DIR, CKPT_DIR,",
         "LOGGER, REWARD_PY (defaults below). Extra Hydra overrides after the script's name win.",
         ]
    if merged:
        h += ["MODEL defaults to the cold-start policy as one folder (the authors started from their SFT model):",
              f"  python -m clinical_r1 merge --adapter {cfg['model']['init_adapter']} --out {merged}"]
    h += ["Relative paths (MODEL) resolve from the folder the script is run in; DATA_DIR and CKPT_DIR sit beside it.",
          "", "Sources: 'authors' = BoyangGu1/Clinical-R1-3B scripts/grpo/" + AUTHORS_SCRIPT + " (early-2025 verl);",
          "'config' = the training config named above; 'ours' = what this project adds.",
          "From the authors' scripts, dropped or translated for verl " + VERL_VERSION + ":"]
    h += [f"  {what}: {why}" for what, why in DROPPED]
    return "\n".join(h)
