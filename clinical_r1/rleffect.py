"""The RL effect on held-out questions: does an RL run move its policy toward its own reward?

    from clinical_r1.rleffect import measure_run
    effect = measure_run("results/demo/cold_start_crpo", probe_items)     # -> <run>/rl_effect/effect.json

The training curve cannot answer it: a step's reward depends on which questions it drew and, at k = 10, on
a near-chance model's lucky guesses. So for one RL run this module
1. samples ``n`` answers to each held-out probe question from the policy the run **started** from (the trained
   policy with its RL adapter switched off: the merged cold start, or the base model, in the training dtype) and
   from the **trained** policy, under the run's own prompt, at
   the run's training temperature and completion budget, with the same seed for each answer in both (each
   answer has its own random stream, ``generate.sample_seed``, so the two samples differ by the policy, not by
   the draw);
2. scores every answer with each weighted reward of the run's own preset (``reward.k`` and
   ``reward.weights`` as trained), plus ``reward`` (the weighted total), ``reward_without_accuracy`` (the total
   less the accuracy term: what a near-chance model can learn) and ``valid`` (evaluation's rule: a letter was
   parsed);
3. pairs by question: the mean over samples after minus before, averaged over questions, with a 95%
   percentile-bootstrap CI that resamples questions (:func:`clinical_r1.evaluate.bootstrap_ci`).

Each arm is compared with its own cold start under its own prompt: the SFT model's score in the grpo format
is measured under the grpo prompt, never read off an evaluation under the crpo prompt (where it is 0 by
construction). Files: ``<run>/rl_effect/{cold_start,policy}.jsonl`` (the answers, resumable) and
``<run>/rl_effect/effect.json``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from clinical_r1.errors import ClinicalR1Error
from clinical_r1.files import read_yaml, write_json
from clinical_r1.records import repo_relative

log = logging.getLogger(__name__)

EFFECT_DIR = "rl_effect"
EFFECT_FILE = "effect.json"
TOTAL = "reward"  # the weighted total, as TRL logs it
SHAPING = "reward_without_accuracy"  # the total less k·accuracy
VALID = "valid"  # a letter was parsed (evaluation's valid answer)


class EffectError(ClinicalR1Error, ValueError):
    """An RL run folder or probe set the held-out effect cannot be measured on."""


@dataclass(frozen=True)
class RunSpec:
    """What the probe needs from an RL run folder's ``config.yaml``."""

    run: Path
    start: str  # the policy the run started from: its cold-start adapter folder, or the base model name
    policy: str  # the trained policy: the run's final adapter folder
    prompt: str  # the preset's prompt kind
    weights: dict[str, float]  # reward name -> weight, as trained (k and reward.weights applied)
    accuracy_reward: str
    temperature: float
    max_new_tokens: int
    continues: bool  # init_adapter_mode continue: the RL adapter is the cold-start adapter trained further


def run_spec(run_dir: str | os.PathLike) -> RunSpec:
    """Read an RL run folder (``config.yaml`` with ``stage: crpo`` and a final ``adapter/``)."""
    from clinical_r1.config import reward_preset

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise EffectError(f"{run}: no config.yaml; pass an RL run folder written by `python -m clinical_r1 crpo`")
    cfg = read_yaml(cfg_path, "training config", EffectError)
    if cfg.get("stage") != "crpo":
        raise EffectError(f"{cfg_path}: stage is {cfg.get('stage')!r}, not 'crpo'; the RL effect needs an RL run")
    if not (run / "adapter" / "adapter_config.json").is_file():
        raise EffectError(f"{run}: no adapter/adapter_config.json; the run has not finished")
    preset = reward_preset(cfg)
    model = cfg["model"]
    start = model.get("init_adapter")
    trainer = cfg["trainer"]
    return RunSpec(run=run, start=str(start or model["name"]), policy=str(run / "adapter"), prompt=preset.prompt,
                   weights=dict(preset.weights), accuracy_reward=preset.accuracy_reward,
                   temperature=float(trainer.get("temperature", 1.0)),
                   max_new_tokens=int(trainer["max_completion_length"]),
                   continues=bool(start) and model.get("init_adapter_mode", "merge") == "continue")


def score_answers(texts: Sequence[Sequence[str]], items: Sequence[Mapping[str, Any]], weights: Mapping[str, float],
                  accuracy_reward: str, prompt: str) -> dict[str, np.ndarray]:
    """Each weighted reward of ``weights`` (and ``reward``, ``reward_without_accuracy``, ``valid``) of every answer,
    as arrays of questions × samples. ``texts[i]`` are the answers to ``items[i]``."""
    from clinical_r1.formats import get_format
    from clinical_r1.rewards import get_reward

    flat = [t for row in texts for t in row]
    n = len(texts[0]) if texts else 0
    if any(len(row) != n for row in texts):
        raise EffectError("every probe question needs the same number of samples")
    cols = {"answer": [it["answer"] for it in items for _ in range(n)],
            "options": [list(it["options"]) for it in items for _ in range(n)]}
    out: dict[str, np.ndarray] = {}
    total = np.zeros(len(flat))
    shaping = np.zeros(len(flat))
    for name, w in weights.items():
        if w == 0:
            continue
        v = np.asarray(get_reward(name)(flat, **cols), dtype=float)
        out[name] = v.reshape(len(texts), n)
        total += w * v
        if name != accuracy_reward:
            shaping += w * v
    out[TOTAL] = total.reshape(len(texts), n)
    out[SHAPING] = shaping.reshape(len(texts), n)
    fmt = get_format(prompt)
    out[VALID] = np.array([[fmt.parse(t, list(it["options"])).letter is not None for t in row]
                           for row, it in zip(texts, items)], dtype=float)
    return out


def paired_effect(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray], n_boot: int = 2000,
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per component: mean before, mean after, their paired difference (per question: mean over samples after
    minus before) and its 95% bootstrap CI over questions."""
    from clinical_r1.evaluate import bootstrap_ci

    out = {}
    for name, b in before.items():
        a = after[name]
        if a.shape[0] != b.shape[0]:
            raise EffectError(f"{name}: {b.shape[0]} questions before, {a.shape[0]} after; pair the same probe set")
        d = a.mean(axis=1) - b.mean(axis=1)
        lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
        out[name] = {"before": float(b.mean()), "after": float(a.mean()), "diff": float(d.mean()),
                     "ci": [lo, hi], "n_questions": int(b.shape[0]), "n_samples": int(b.shape[1])}
    return out


def _answers(path: Path, items: Sequence[Mapping[str, Any]], n: int) -> list[list[str]]:
    from clinical_r1.generate import read_generations

    got: dict[tuple[str, int], str] = {(str(r["id"]), int(r["sample"])): r["text"] for r in read_generations(path)}
    try:
        return [[got[(str(it["id"]), s)] for s in range(n)] for it in items]
    except KeyError as e:
        raise EffectError(f"{path}: answer {e.args[0]} is missing; delete the file to regenerate it") from None


def _generate_pair(spec: RunSpec, items: Sequence[Mapping[str, Any]], out_dir: Path, **kw: Any) -> dict[str, Path]:
    """The probe's answers from the cold start and from the trained policy: ``{role: generations file}``.

    The cold start is the trained policy with its RL adapter switched off (``disable_adapter``): exactly the weights
    the run started from, in the dtype it trained in (the cold-start adapter merged into the base, or the base
    itself), so the comparison cannot pick up a difference in loading or rounding. A run that kept training its
    cold-start adapter (``init_adapter_mode: continue``) has no such switch; its cold start is that adapter folder.
    """
    from clinical_r1.generate import generate, open_engine
    from clinical_r1.models import load_trained

    paths = {role: out_dir / f"{role}.jsonl" for role in ("cold_start", "policy")}
    common = dict(prompt_kind=spec.prompt, dataset_name="probe", **kw)
    if spec.continues:
        for role, model in (("cold_start", spec.start), ("policy", spec.policy)):
            engine = open_engine(model, seed=kw["seed"])
            try:
                generate(engine, None, items, paths[role], model_name=str(model), **common)
            finally:
                engine.close()
        return paths
    model, tok = load_trained(spec.policy)
    with model.disable_adapter():
        generate(model, tok, items, paths["cold_start"], model_name=f"{spec.policy} (RL adapter off)",
                 backend="transformers", **common)
    generate(model, tok, items, paths["policy"], model_name=spec.policy, backend="transformers", **common)
    return paths


def measure_run(run_dir: str | os.PathLike, items: Sequence[Mapping[str, Any]], n: int = 4,
                temperature: float | None = None, max_new_tokens: int | None = None, batch_size: int = 8,
                seed: int = 0, n_boot: int = 2000, progress: bool = True,
                out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Measure one RL run's held-out effect on the probe ``items`` (see the module docstring); writes and returns
    ``<out_dir>/effect.json`` (default ``out_dir``: ``<run>/rl_effect``, the probe the study reports; another folder
    keeps a second probe of the same run, say a larger one or other seeds, beside it). ``temperature``/
    ``max_new_tokens``: None = the run's training values."""
    spec = run_spec(run_dir)
    items = list(items)
    if len(items) < 2 or n < 1:
        raise EffectError(f"the probe needs at least 2 questions and 1 sample each, got {len(items)} x {n}")
    temp = spec.temperature if temperature is None else float(temperature)
    budget = spec.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    out_dir = spec.run / EFFECT_DIR if out_dir is None else Path(out_dir)
    scores = {}
    for role, path in _generate_pair(spec, items, out_dir, n=n, temperature=temp, max_new_tokens=budget,
                                     batch_size=batch_size, seed=seed, progress=progress).items():
        scores[role] = score_answers(_answers(path, items, n), items, spec.weights, spec.accuracy_reward, spec.prompt)
    effect = {
        "run": spec.run.name, "prompt": spec.prompt, "weights": spec.weights, "accuracy_reward": spec.accuracy_reward,
        "cold_start": repo_relative(spec.start), "temperature": temp, "max_new_tokens": budget, "n": n, "seed": seed,
        "probe_ids": [str(it["id"]) for it in items],
        "components": paired_effect(scores["cold_start"], scores["policy"], n_boot=n_boot, seed=seed),
    }
    write_json(effect, out_dir / EFFECT_FILE)
    c = effect["components"]
    log.info("%s: held-out %s %+.3f [%+.3f, %+.3f], accuracy %+.3f, valid %+.3f (%d questions x %d)", spec.run.name,
             SHAPING, c[SHAPING]["diff"], *c[SHAPING]["ci"], c[spec.accuracy_reward]["diff"]
             if spec.accuracy_reward in c else float("nan"), c[VALID]["diff"], len(items), n)
    return effect


def read_effect(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``<run>/rl_effect/effect.json``, or None when the run has no measured effect."""
    from clinical_r1.files import read_json

    p = Path(run_dir) / EFFECT_DIR / EFFECT_FILE
    return read_json(p) if p.is_file() else None
