"""The CRPO rewards as a verl custom reward function, and split files as verl parquet prompts.

verl (volcengine/verl) calls ``compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)``
once per response; a returned dict must hold ``score`` (the scalar reward) and its other keys are logged
per sample (``acc`` is the key verl's validation reports as its core metric, the rest go under ``val-aux``).
The score is exactly :func:`clinical_r1.rewards.score` (``total``), so verl and TRL train on the same reward and
the same parser; every reward of the preset is returned, unweighted, under its registry name.

    python -m clinical_r1 verl-export data/splits/rl.jsonl data/verl/rl.parquet --prompt crpo \\
        --data-source clinical_r1/medqa                                  # split file -> verl parquet
    python -m clinical_r1 verl-launch --recipe paper_3b --out results/verl# parquet + a whole verl 0.9 launch

    from clinical_r1.verl_reward import compute_score, to_verl_parquet
    compute_score("clinical_r1/medqa", "<dx>…</dx><conclusion>… \\\\boxed{B}</conclusion>", "B",
                  extra_info={"preset": "crpo", "options": ["…", "…"]})
    # {"score": 12.0, "acc": 1.0, "accuracy": 1.0, "clinical_reasoning": 1.5, "crpo_format": 1.0,
    #  "cross_reference": 1.0, "consistency": 1.0, "completion_length": 58.0}

verl 0.9 reads the custom reward only from ``reward.custom_reward_function`` (the legacy top-level
``custom_reward_function`` still composes, but only the fully-async entry point migrates it, so the main
trainer falls back to verl's default scorer, which raises ``NotImplementedError`` for our data source at the
first reward). ``reward_kwargs`` is not in verl's packaged config, hence the ``+``::

    python -m verl.trainer.main_ppo algorithm.adv_estimator=grpo ... \\
        reward.custom_reward_function.path=clinical_r1/verl_reward.py \\
        reward.custom_reward_function.name=compute_score \\
        +reward.custom_reward_function.reward_kwargs.preset=crpo +reward.custom_reward_function.reward_kwargs.k=10

or in a YAML config::

    reward:
      custom_reward_function:
        path: clinical_r1/verl_reward.py
        name: compute_score
        reward_kwargs: {preset: crpo, k: 10}     # optional; k sets the accuracy weight

verl imports the file by its path, so ``clinical_r1`` must be importable in verl's workers
(``pip install -e .`` in the repository). The preset is chosen, first match wins, by ``reward_kwargs["preset"]`` (the run config), the row's
``extra_info["preset"]`` (written by :func:`to_verl_parquet`), the environment variable
``CLINICAL_R1_VERL_PRESET``, then ``crpo``. The accuracy weight ``k`` the same way (``reward_kwargs["k"]``,
``extra_info["k"]``, ``CLINICAL_R1_VERL_K``, the preset's own). User rewards (``reward.functions`` of a training config:
import paths to weights) come from ``reward_kwargs["functions"]`` (a mapping, or its JSON string), ``extra_info``
or ``CLINICAL_R1_VERL_FUNCTIONS``; each is returned under its name like the preset's rewards, and weighted into
``score``. They must be importable in verl's workers (a function registered in a notebook is not). The item's options come from
``extra_info["options"]`` (needed for answers boxed as option text). verl collects the returned keys across a
batch, so one run should use one preset (the keys differ between presets; ``verl-launch`` passes it in
``reward_kwargs``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from clinical_r1.errors import DataError, UsageError
from clinical_r1.files import atomic_path
from clinical_r1.parsing import LETTERS, is_correct
from clinical_r1.prompts import PROMPT_KINDS, build_messages
from clinical_r1.rewards import PRESETS, Preset, RewardError, compose_preset, get_preset, get_reward

log = logging.getLogger(__name__)

PRESET_ENV = "CLINICAL_R1_VERL_PRESET"  # the preset when neither reward_kwargs nor extra_info name one
K_ENV = "CLINICAL_R1_VERL_K"  # the accuracy weight when neither reward_kwargs nor extra_info set one
FUNCTIONS_ENV = "CLINICAL_R1_VERL_FUNCTIONS"  # user rewards (JSON {"pkg.mod:func": weight}) when reward_kwargs has none
DEFAULT_PRESET = "crpo"
ABILITY = "medical_mcq"  # verl's task-category column
VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
PRESET_OF_PROMPT = {"crpo": "crpo", "grpo": "grpo"}  # the preset that rewards each prompt's answer format


class VerlDataError(DataError):
    """Input that cannot be scored or converted; the message names the row or the field."""


# ---------------------------------------------------------------------------------------------------
# The reward function
# ---------------------------------------------------------------------------------------------------


def _pick(name: str, kwargs: Mapping[str, Any], info: Mapping[str, Any], env: str) -> Any:
    for v in (kwargs.get(name), info.get(name), os.environ.get(env) or None):
        if v is not None and v != "":
            return v
    return None


def _options(info: Mapping[str, Any], where: str) -> list[str] | None:
    """``extra_info["options"]`` as a list of str; parquet hands it back as a numpy array."""
    opts = info.get("options")
    if opts is None:
        return None
    if isinstance(opts, str) or not hasattr(opts, "__iter__"):
        raise VerlDataError(f"{where}: extra_info['options'] must be a list of option texts, got {type(opts).__name__}")
    opts = [str(o) for o in opts]
    return opts or None


def _gold(ground_truth: Any, options: Sequence[str] | None, where: str) -> str:
    """The gold letter of a verl row, validated here: verl reads it from any parquet file, so this is where the
    gold enters the package (as ``data.load_benchmark`` is for record files)."""
    g = str(ground_truth).strip().upper() if ground_truth is not None else ""
    if len(g) != 1 or g not in LETTERS:
        raise VerlDataError(f"{where}: ground_truth {ground_truth!r} is not an answer letter A-Z")
    if options is not None and LETTERS.index(g) >= len(options):
        raise VerlDataError(f"{where}: ground_truth {g} is not among the {len(options)} options")
    return g


def components(text: str, gold: str, options: Sequence[str] | None, preset: Preset) -> dict[str, float]:
    """Every reward of ``preset`` by its registry name, zero-weight diagnostics included, unweighted: the same
    keys for every response of a run, which is what verl needs to collect them (and what GDPO's
    ``algorithm.gdpo_reward_keys`` name)."""
    cols = {"answer": [gold], "options": [list(options)] if options is not None else None}
    return {name: float(get_reward(name)([text], **cols)[0]) for name in preset.weights}


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """verl's custom reward: ``{"score": total, "acc": 0/1, <every reward of the preset>: its unweighted value}``.

    ``score`` equals ``clinical_r1.rewards.score(solution_str, ground_truth, options, preset, k)["total"]``
    (the weighted sum); ``acc`` is correctness by the one parser (``parsing.is_correct``), whatever the preset.
    The keys depend on the preset only, never on the response or ``k``. verl's own additions to ``extra_info``
    (``num_turns``, ``rollout_reward_scores``, ``experiment_name``) and keyword arguments other than ``preset``
    and ``k`` (``reward_router_address``, ...) are accepted and ignored.
    """
    info = dict(extra_info or {})
    where = f"data_source {data_source!r}, id {info.get('id', info.get('index', '?'))!r}"
    name = str(_pick("preset", kwargs, info, PRESET_ENV) or DEFAULT_PRESET)
    if name not in PRESETS:
        raise VerlDataError(f"{where}: unknown reward preset {name!r}; known presets: {sorted(PRESETS)}")
    k_raw = _pick("k", kwargs, info, K_ENV)
    try:
        k = float(k_raw) if k_raw is not None else None
    except (TypeError, ValueError) as e:
        raise VerlDataError(f"{where}: accuracy weight k={k_raw!r} is not a number") from e
    preset = _preset(name, k, _pick("functions", kwargs, info, FUNCTIONS_ENV), where)
    options = _options(info, where)
    gold = _gold(ground_truth, options, where)
    text = solution_str if solution_str is not None else ""
    parts = components(text, gold, options, preset)
    total = 0.0
    for n, w in preset.weights.items():  # the order and arithmetic of rewards.score
        if w != 0:
            total += w * parts[n]
    return {"score": total, "acc": 1.0 if is_correct(text, gold, options) else 0.0, **parts}


def _functions(raw: Any, where: str) -> dict[str, float]:
    """``reward_kwargs["functions"]``: a mapping of import paths to weights, or the same as a JSON string (what
    ``verl-launch`` writes: a Hydra override cannot hold ``:`` in a key)."""
    import json

    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise VerlDataError(f"{where}: functions {raw!r} is not JSON {{\"pkg.mod:func\": weight}}: {e}") from None
    if not isinstance(raw, Mapping):
        raise VerlDataError(f"{where}: functions must map 'package.module:function' to a weight, got {raw!r}")
    try:
        return {str(ref): float(w) for ref, w in raw.items()}
    except (TypeError, ValueError) as e:
        raise VerlDataError(f"{where}: functions {dict(raw)!r}: a weight is not a number ({e})") from None


_PRESETS: dict[tuple[str, float | None, str], Preset] = {}  # (preset, k, functions) -> composed, per process


def _preset(name: str, k: float | None, functions: Any, where: str) -> Preset:
    """The preset with ``k`` and the user ``functions`` (imported once per worker process)."""
    if functions is None:
        return get_preset(name).with_weights(k=k)
    funcs = _functions(functions, where)
    key = (name, k, repr(sorted(funcs.items())))
    if key not in _PRESETS:
        try:
            _PRESETS[key] = compose_preset(name, k=k, functions=funcs)
        except RewardError as e:
            raise VerlDataError(f"{where}: {e}") from None
    return _PRESETS[key]


# ---------------------------------------------------------------------------------------------------
# Split files -> verl parquet
# ---------------------------------------------------------------------------------------------------


def verl_row(record: Mapping[str, Any], index: int, prompt_kind: str, data_source: str, preset: str) -> dict[str, Any]:
    """One verl prompt row for one record (``id, question, options, answer``)."""
    return {
        "data_source": data_source,
        "prompt": build_messages(record, prompt_kind),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": str(record["answer"])},
        "extra_info": {"index": int(index), "id": str(record["id"]), "options": list(record["options"]),
                       "preset": preset},
    }


def _default_preset(prompt_kind: str) -> str:
    if prompt_kind not in PRESET_OF_PROMPT:
        raise UsageError(f"prompt kind {prompt_kind!r} has no matching reward preset; pass preset= "
                         f"(one of {sorted(PRESETS)}) explicitly")
    return PRESET_OF_PROMPT[prompt_kind]


def to_verl_parquet(split_jsonl: str | os.PathLike, out_parquet: str | os.PathLike, prompt_kind: str = "crpo",
                    data_source: str = "clinical_r1/medqa", preset: str | None = None) -> Path:
    """Convert a split file (the record schema) to verl's parquet prompt format; returns the parquet path.

    Columns: ``data_source``, ``prompt`` (chat messages from :func:`clinical_r1.prompts.build_messages`),
    ``ability``, ``reward_model`` ``{"style": "rule", "ground_truth": <gold letter>}`` and ``extra_info``
    ``{index, id, options, preset}``. ``preset`` defaults to the one that rewards ``prompt_kind``'s format
    (crpo -> crpo, grpo -> grpo). Rows are validated by :func:`clinical_r1.data.load_benchmark` (a bad row
    raises naming the file, row and field); the file is written atomically.
    """
    import pandas as pd

    from clinical_r1.data import load_benchmark

    if prompt_kind not in PROMPT_KINDS:
        raise UsageError(f"unknown prompt kind {prompt_kind!r}; choose one of {list(PROMPT_KINDS)}")
    preset = preset or _default_preset(prompt_kind)
    get_preset(preset)  # unknown names raise here, not mid-training
    ds = load_benchmark("jsonl", path=split_jsonl)
    if len(ds) == 0:
        raise VerlDataError(f"{split_jsonl}: no records to convert")
    rows = [verl_row(r, i, prompt_kind, data_source, preset) for i, r in enumerate(ds)]
    out = Path(out_parquet)
    with atomic_path(out) as tmp:
        pd.DataFrame(rows, columns=list(VERL_COLUMNS)).to_parquet(tmp, index=False)
    log.info("%s: %d verl prompts (%s prompt, %s preset) -> %s", split_jsonl, len(rows), prompt_kind, preset, out)
    return out
