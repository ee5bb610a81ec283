"""CRPO / GRPO: TRL's GRPOTrainer wired to a named reward preset.

    python -m clinical_r1 crpo --config configs/cpu_demo_crpo.yaml [--set reward.preset=grpo --set reward.k=5]

    from clinical_r1.crpo import run_crpo
    run = run_crpo("configs/cpu_demo_crpo.yaml")         # -> results/cpu_demo_crpo/

The preset (``reward.preset``: crpo, grpo, r1-medical, the ablations in ``rewards.PRESETS``) gives the
reward functions and their weights: ``reward_funcs=preset.functions()``,
``reward_weights=preset.weight_list()``; ``reward.functions`` adds rewards from outside the package (import paths or
registered names, :func:`clinical_r1.rewards.compose_preset`), each probed on training rows before anything is
written, and every reward is checked at each step (:class:`clinical_r1.rewards.CheckedReward`). Prompts are conversational, ``build_messages(item, preset.prompt)``.
TRL logs every reward component (``rewards/<name>/mean``, zero-weight diagnostics included: format and
cross-reference rates), the total (``reward``), ``kl``, and completion lengths; :class:`runs.MetricsLogger`
writes them to ``metrics.jsonl``, with, every step, each weighted reward's share of the advantage
(``advantage_share/<name>``, ``reward_varies/<name>``) and the reward-hacking monitors (``monitor/*``, alarms
in ``metrics.json``; see ``clinical_r1.monitors``). Checkpoints every ``trainer.save_steps``; ``resume: true`` continues
from the last one with the same data order (TRL's seeded sampler + ``resume_from_checkpoint``).

The policy may start from the cold-start SFT adapter (``model.init_adapter``), merged into the base
(``init_adapter_mode: merge``, a fresh LoRA on top) or trained further (``continue``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from clinical_r1.config import (ConfigError, check_paths, config_warnings, load_config, model_backend, portable_rewards,
                                reward_preset, trainer_args)
from clinical_r1.errors import ClinicalR1Error
from clinical_r1.gpu_stack import vllm_installed
from clinical_r1.parsing import LETTERS
from clinical_r1.prompts import build_messages

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "question", "options", "answer")


class DatasetError(ClinicalR1Error, ValueError):
    """Training data that cannot be used for CRPO (missing columns, empty, prompts too long)."""


def load_train_dataset(data: Mapping[str, Any]):
    """The training config's questions as a record-schema ``Dataset`` (see ``clinical_r1.data``)."""
    from clinical_r1.data import load_benchmark, load_split

    if data["name"] == "split":  # the folder written by `python -m clinical_r1 split`
        ds = load_split(data["path"], data["split"])
    else:
        ds = load_benchmark(data["name"], path=data["path"], split=data["split"])
    if data["limit"] is not None:
        ds = ds.select(range(min(int(data["limit"]), len(ds))))
    return ds


def check_columns(ds: Any) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DatasetError(f"training dataset lacks the column(s) {missing} (the rewards need 'answer' and "
                           f"'options', the prompts 'question'); it has {ds.column_names}")
    if len(ds) == 0:
        raise DatasetError("training dataset is empty")
    bad = [(r["id"], r["answer"]) for r in ds.select_columns(["id", "answer", "options"])
           if not (isinstance(r["answer"], str) and len(r["answer"]) == 1
                   and 0 <= LETTERS.find(r["answer"]) < len(r["options"] or []))]
    if bad:
        raise DatasetError(f"{len(bad)} row(s) have an answer that is not one of their option letters "
                           f"(id, answer): {bad[:10]}")


def add_prompts(ds: Any, kind: str):
    """Add the conversational ``prompt`` column; the other columns stay for the reward functions."""
    return ds.map(lambda r: {"prompt": build_messages(r, kind)}, desc=f"{kind} prompts")


def context_length(ref: str) -> int | None:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(ref)
    c = c.get_text_config() if hasattr(c, "get_text_config") else c
    return getattr(c, "max_position_embeddings", None)


def check_prompt_lengths(ds: Any, tok: Any, max_prompt_length: int) -> int:
    """Raise :class:`DatasetError` naming the rows whose chat-formatted prompt exceeds the limit.

    TRL 1.x no longer truncates prompts, so an over-long prompt would silently eat the completion
    budget or overflow the context; returns the longest prompt length.
    """
    longest, bad = 0, []
    for r in ds:
        text = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        longest = max(longest, n)
        if n > max_prompt_length:
            bad.append((r["id"], n))
    if bad:
        raise DatasetError(f"{len(bad)} prompt(s) are longer than max_prompt_length={max_prompt_length} tokens "
                           f"(id, tokens): {bad[:10]}; raise max_prompt_length (within the model's context) or "
                           f"drop those questions")
    return longest


def prompt_limit(cfg: Mapping[str, Any], args: Any, ref: str) -> int:
    """``max_prompt_length``, or the model's context minus the completion budget."""
    from clinical_r1.models import choose_backend

    ctx = context_length(ref)
    if choose_backend(cfg["model"]["backend"]) == "unsloth" and cfg["model"].get("max_seq_length"):
        ctx = min(ctx or 10**9, int(cfg["model"]["max_seq_length"]))
    room = None if ctx is None else ctx - int(args.max_completion_length)
    if room is not None and room <= 0:
        raise ConfigError(f"max_completion_length={args.max_completion_length} leaves no room for the prompt in the "
                          f"model's context of {ctx} tokens")
    mpl = cfg["max_prompt_length"]
    if mpl is None:
        return room if room is not None else 10**9
    if room is not None and mpl > room:
        raise ConfigError(f"max_prompt_length={mpl} + max_completion_length={args.max_completion_length} exceeds the "
                          f"model's context of {ctx} tokens")
    return int(mpl)


def generation_engine(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config to train with: ``trainer.use_vllm`` turned off, with a warning, where vLLM is not installed (the
    CUDA 12 stack, ``requirements-gpu-cu12.txt``, has none), so one recipe runs on both GPU stacks; rollouts then go
    through Unsloth's or TRL's own ``generate``. The run's ``config.yaml`` records what was used."""
    if not cfg["trainer"].get("use_vllm") or vllm_installed():
        return dict(cfg)
    log.warning("trainer.use_vllm=true but vLLM is not installed (the CUDA 12 stack, requirements-gpu-cu12.txt, has "
                "none): generating rollouts with %s instead, several times slower",
                "Unsloth" if cfg["model"].get("backend") in ("unsloth", "auto") else "transformers' generate")
    return {**cfg, "trainer": {**cfg["trainer"], "use_vllm": False}}


def run_crpo(config: Mapping[str, Any] | str | os.PathLike, overrides: Any = None, train_dataset: Any = None) -> Path:
    """Run CRPO/GRPO from a training config; returns the run folder. ``train_dataset`` replaces its data."""
    from clinical_r1 import models

    models.import_unsloth_first(model_backend(config, overrides))  # before runs/load_config import transformers/TRL
    from clinical_r1 import runs

    cfg = portable_rewards(generation_engine(load_config(config, overrides, stage="crpo")))
    check_paths(cfg)  # every input exists and is the right kind, before anything is loaded or written
    preset = reward_preset(cfg)
    args = trainer_args(cfg)  # TRL's own checks (batch vs num_generations, ...) before anything heavy
    for warning in config_warnings(cfg):
        log.warning(warning)
    ref = models.check_model(cfg["model"]["name"])
    if cfg["model"]["init_adapter"]:
        models.check_adapter(cfg["model"]["init_adapter"])
    tok = models.load_tokenizer(ref, padding_side="left")
    ds = train_dataset if train_dataset is not None else load_train_dataset(cfg["data"])
    check_columns(ds)
    ds = add_prompts(ds, preset.prompt)
    longest = check_prompt_lengths(ds, tok, prompt_limit(cfg, args, ref))
    probe_rewards(preset, ds)

    with runs.claim_run(cfg) as run:  # locked; marked failed if anything below raises
        runs.write_run_info(run, cfg, model_ref=ref, n_train=len(ds), longest_prompt_tokens=longest,
                            reward_preset={"name": preset.name, "weights": preset.weights, "prompt": preset.prompt,
                                           "sources": preset.sources})
        model, tok = models.load_policy(cfg["model"], cfg["lora"], seed=cfg["seed"],
                                        gradient_checkpointing=bool(args.gradient_checkpointing),
                                        use_vllm=bool(getattr(args, "use_vllm", False)))
        tok.padding_side = "left"
        trainer = build_grpo_trainer(args, model, tok, ds, preset, run, monitors=cfg["monitors"])
        out = runs.train_and_save(trainer, tok, run, cfg, preset=preset.name, reward_weights=preset.weights)
    log.info("CRPO done: %s (%d steps)", run, out["global_step"])
    return run


PROBE_ROWS = 4  # training rows a user reward scores before training (3 completions each)


def probe_rewards(preset: Any, ds: Any) -> None:
    """Every user reward of ``preset`` (``preset.sources``) scores a probe batch of the training data as TRL will
    call it, before anything is written (:func:`clinical_r1.rewards.probe_reward`)."""
    from clinical_r1.rewards import probe_reward

    rows = [ds[i] for i in range(min(PROBE_ROWS, len(ds)))]
    for name in preset.sources:
        probe_reward(name, rows, preset.prompt)


def build_grpo_trainer(args: Any, model: Any, tok: Any, ds: Any, preset: Any, run: Path,
                       monitors: Mapping[str, Any] | None = None):
    """TRL ``GRPOTrainer`` with the preset's reward functions (weights are in ``args.reward_weights``), tapped by
    :class:`monitors.StepMonitor` (advantage shares and per-step monitors through TRL's ``log_metric``);
    ``monitors``: the config's alarm thresholds (``runs.MetricsLogger`` raises the alarms)."""
    from trl import GRPOTrainer

    from clinical_r1.monitors import StepMonitor
    from clinical_r1.rewards import CheckedReward
    from clinical_r1.runs import MetricsLogger

    if list(args.reward_weights) != preset.weight_list():
        raise ConfigError(f"reward_weights {args.reward_weights} do not match preset {preset.name!r} "
                          f"{preset.weight_list()}")
    from clinical_r1.models import decode_eagerly_on_cpu

    return GRPOTrainer(
        model=decode_eagerly_on_cpu(model),  # TRL samples with model.generate: eager attention there on CPU
        reward_funcs=StepMonitor.for_trainer(args, preset).wrap(
            [CheckedReward(f, n) for f, n in zip(preset.functions(), preset.weights)]),
        args=args,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[MetricsLogger(run, monitors)],
    )
