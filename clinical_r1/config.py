"""Training configs (configs/*.yaml): load, override, validate, and build TRL's SFTConfig / GRPOConfig from them.

A *training config* sets up one SFT or CRPO run; a *recipe* (configs/recipes/, :mod:`clinical_r1.pipeline`) is a
whole study, a parameter set per notebook, and names a training config per training stage.

    from clinical_r1.config import load_config, trainer_args
    cfg = load_config("configs/cpu_demo_crpo.yaml", ["trainer.max_steps=2", "reward.k=5"])
    args = trainer_args(cfg)                     # a trl.GRPOConfig (stage crpo) or trl.SFTConfig (stage sft)

    python -m clinical_r1 crpo --config configs/cpu_demo_crpo.yaml --set trainer.max_steps=2

A training config has our own sections (``model``, ``lora``, ``data``, ``reward``/``early_stopping``) with fixed
keys, and a ``trainer`` section passed verbatim to TRL: its keys are checked against the dataclass fields
of the installed TRL's config class, so a key that the pinned TRL no longer accepts fails at load time.
Settings are literals first (the YAML), then overrides (``--set a.b=value``, values parsed as YAML),
then derived values (``output_dir``, ``seed``, ``run_name``, filled in by :func:`trainer_args`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from clinical_r1.errors import ConfigError
from clinical_r1.files import read_yaml
from clinical_r1.models import BACKENDS, DTYPES, EMBEDDED_DEFAULT

log = logging.getLogger(__name__)

STAGES = ("sft", "crpo")
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")  # paper; GDPO
SCALE_REWARDS = ("group", "batch", "none")

_COMMON: dict[str, Any] = {
    "stage": None,  # sft | crpo
    "run_name": None,  # folder under output_root; defaults to the config file name
    "output_root": "results",
    "seed": 0,  # one seed for data order, LoRA init and sampling (copied to trainer.seed)
    "resume": False,  # continue from the last checkpoint in the run folder
    "overwrite": False,  # delete an existing run folder instead of refusing to reuse it
    "model": {
        "name": EMBEDDED_DEFAULT,  # embedded:<name>, hub id or local folder
        "backend": "auto",  # auto (Unsloth on CUDA when installed) | unsloth | transformers
        "dtype": "auto",  # auto | float32 | bfloat16 | float16
        "load_in_4bit": False,  # QLoRA (CUDA only)
        "max_seq_length": 4096,  # Unsloth's context budget
        "gpu_memory_utilization": 0.5,  # Unsloth's vLLM engine share (use_vllm only)
        "attn_implementation": None,
        "init_adapter": None,  # a LoRA folder to start from (the cold-start SFT adapter)
        "init_adapter_mode": "merge",  # merge it into the base, or continue training it
    },
    "lora": {"r": 32, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
    "trainer": {},
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {
        **_COMMON,
        "data": {
            "traces": None,  # JSONL with id, dx, conclusion (+ question fields); default: bundled sample traces
            "questions": None,  # JSONL of questions joined on id when traces lack them; default: bundled sample
            "dev_traces": None,  # a separate dev traces file (e.g. the split's traces_dev.jsonl); else split off
            "dev_size": 0.1,  # dev slice split off the traces when dev_traces is null: a fraction, or a count
            "limit": None,  # use only the first N traces
            "prompt_kind": "crpo",  # crpo (<dx>/<conclusion>), grpo (<think>/<answer>) or both (each trace twice)
        },
        "early_stopping": {"patience": 3, "threshold": 0.0},
    },
    "crpo": {
        **_COMMON,
        "data": {
            "name": "sample",  # a clinical_r1.data benchmark name, or "split" (path = split folder)
            "path": None,  # local file (or split folder)
            "split": "train",  # hub split, or the split name inside a split folder
            "limit": None,  # use only the first N questions
        },
        "reward": {
            "preset": "crpo",  # a rewards.PRESETS name; null: reward.functions only
            "k": None,  # override of the accuracy weight (the paper's k ablation)
            "weights": {},  # per-reward weight overrides, e.g. {consistency: 0.0}
            "functions": {},  # more rewards -> weight: import paths "pkg.mod:func", registered or built-in names
            "prompt": None,  # prompt kind; null: the preset's (or, without one, the format the functions declare)
        },
        "max_prompt_length": None,  # longer prompts are an error; None = context - max_completion_length
        "monitors": {  # reward-hacking alarm thresholds (clinical_r1.monitors.MONITORS); null = no alarm
            "near_copy_rate": 0.10,  # completions refused by the cross-reference near-copy guard
            "option_only_rate": 0.25,  # conclusions whose only finding shared with <dx> is option text
            "box_outside_rate": 0.05,  # a box outside the concluding section
            "repetition": 0.20,  # mean seq-rep-4
            "truncation_rate": 0.20,  # completions cut at max_completion_length
            "length_drift": 0.50,  # Spearman(length, total reward) over the step's completions
            "format_accuracy_divergence": 0.02,  # format up and accuracy down, per step, over `window` steps
            "window": 10,  # steps in the format-accuracy trend
        },
    },
}


# ---------------------------------------------------------------------------------------------------
# Loading and overrides
# ---------------------------------------------------------------------------------------------------


# Notebook parameter -> training-config key: the one table between a study recipe's stage parameters
# (configs/recipes/*.yaml, the parameters cells of notebooks 03 and 04) and a training config
# (configs/*.yaml). Every other training setting goes through the stage's ``*_overrides`` as a dotted key.
PARAMETER_KEYS = {
    "out_dir": "output_root",  # the run folder is <out_dir>/<run_name>
    "train_run": "run_name",
    "seed": "seed",
    "model": "model.name",
    "preset": "reward.preset",
    "k": "reward.k",  # the accuracy weight: rewards.Preset.with_weights
    "reward_functions": "reward.functions",  # user rewards -> weight (rewards.compose_preset)
    "multi_objective_aggregation": "trainer.multi_objective_aggregation",
}


def parameter_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Dotted training-config overrides from notebook parameters (renamed through :data:`PARAMETER_KEYS`),
    then ``overrides`` (dotted keys already; they win). A parameter that replaces a value the training config
    sets is logged by :func:`load_config`."""
    unknown = sorted(set(params) - set(PARAMETER_KEYS))
    if unknown:
        raise ConfigError(f"notebook parameter(s) {unknown} have no training-config key; known: {sorted(PARAMETER_KEYS)}")
    out = {PARAMETER_KEYS[n]: str(v) if isinstance(v, os.PathLike) else v for n, v in params.items()}
    return {**out, **(overrides or {})}


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"trainer.learning_rate=1e-5"`` -> (``["trainer", "learning_rate"]``, ``1e-5``); values are YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (dotted keys for sections)")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        value = float(value)  # YAML 1.1 reads 1e-5 as a string
    return keys, value


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None,
                    source: str | os.PathLike | None = None) -> dict[str, Any]:
    """Set dotted keys: ``["model.name=x"]`` or ``{"model.name": "x"}``; returns a new dict. With ``source``
    (the config file), an override that replaces a value the file sets is logged."""
    out = copy.deepcopy(cfg)
    if not overrides:
        return out
    items = [(k.split("."), v) for k, v in overrides.items()] if isinstance(overrides, Mapping) \
        else [parse_override(o) for o in overrides]
    for keys, value in items:
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(keys)}: {k!r} is not a section")
        if source is not None and keys[-1] in node and node[keys[-1]] != value:
            log.info("%s: %s=%r replaced by the override %r", source, ".".join(keys), node[keys[-1]], value)
        node[keys[-1]] = value
    return out


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(dict(defaults))
    for k, v in given.items():
        if k not in defaults:
            raise ConfigError(_unknown(k, defaults, where))
        d = defaults[k]
        if isinstance(d, dict) and d and k != "trainer":
            if not isinstance(v, Mapping):
                raise ConfigError(f"config key {where}{k} must be a mapping, got {v!r}")
            out[k] = _merge(d, v, f"{where}{k}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


def _unknown(key: str, known: Iterable[str], where: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f"; did you mean {close}?" if close else ""
    return f"unknown config key '{where}{key}'{hint} (known: {sorted(known)})"


def load_config(source: str | os.PathLike | Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None = None,
                stage: str | None = None) -> dict[str, Any]:
    """A validated training config with every default filled in (the resolved config written to the run folder)."""
    if isinstance(source, Mapping):
        raw, name = copy.deepcopy(dict(source)), None
    else:
        raw, name = read_yaml(source, "config file", ConfigError), Path(source).stem
    try:
        return _resolve(apply_overrides(raw, overrides, source if name else None), name, stage)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if name else str(e)) from None


def model_backend(source: str | os.PathLike | Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None = None
                  ) -> str:
    """The config's ``model.backend`` (``auto`` when unset), read without validating the config.

    Validation imports TRL (its config classes), and Unsloth must be imported before TRL: entry points call
    ``models.import_unsloth_first(model_backend(config, overrides))`` first, then :func:`load_config`.
    """
    raw = copy.deepcopy(dict(source)) if isinstance(source, Mapping) else read_yaml(source, "config file", ConfigError)
    model = apply_overrides(raw, overrides).get("model")
    backend = model.get("backend") if isinstance(model, Mapping) else None
    return str(backend or _COMMON["model"]["backend"])


def _resolve(raw: dict[str, Any], name: str | None, stage: str | None) -> dict[str, Any]:
    st = raw.get("stage") or stage
    if st not in STAGES:
        raise ConfigError(f"config stage must be one of {list(STAGES)}, got {st!r}")
    if stage is not None and st != stage:
        raise ConfigError(f"this training config is for stage {st!r}, not {stage!r}")
    raw["stage"] = st
    cfg = _merge(DEFAULTS[st], raw)
    cfg["run_name"] = cfg["run_name"] or name or f"{st}_run"
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------


def trl_config_class(stage: str) -> type:
    if stage == "sft":
        from trl import SFTConfig

        return SFTConfig
    from trl import GRPOConfig

    return GRPOConfig


DERIVED = ("output_dir", "seed", "run_name")  # set from the top level; never in the trainer section


def validate_trainer_keys(trainer: Mapping[str, Any], cls: type) -> None:
    """Every key must be a dataclass field of ``cls`` (the installed TRL's SFTConfig or GRPOConfig)."""
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for k in trainer:
        if k in DERIVED:
            raise ConfigError(f"trainer.{k} is derived from the top-level keys (output_root/run_name/seed); "
                              f"set those instead")
        if k not in fields:
            close = difflib.get_close_matches(k, list(fields), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise ConfigError(f"unknown trainer key {k!r} for {cls.__name__} of the installed TRL{hint}")


def _choice(cfg_value: Any, choices: Iterable[Any], key: str) -> None:
    if cfg_value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {cfg_value!r}")


def _supported_loss_types() -> list[str]:
    """Loss types named in the installed TRL's GRPOConfig help (the trainer only checks them mid-step)."""
    from trl import GRPOConfig

    f = {f.name: f for f in dataclasses.fields(GRPOConfig)}.get("loss_type")
    help_text = (f.metadata or {}).get("help", "") if f else ""
    m = re.search(r"Supported values are (.*?)\.\s", help_text)
    return re.findall(r"'(\w+)'", m.group(1)) if m else []


def validate(cfg: Mapping[str, Any]) -> None:
    """Cheap checks of a merged training config; everything that can fail without loading a model fails here."""
    _choice(cfg["model"]["backend"], BACKENDS, "model.backend")
    _choice(cfg["model"]["dtype"], DTYPES, "model.dtype")
    _choice(cfg["model"]["init_adapter_mode"], ("merge", "continue"), "model.init_adapter_mode")
    if not isinstance(cfg["seed"], int):
        raise ConfigError(f"seed must be an integer, got {cfg['seed']!r}")
    if not re.fullmatch(r"[\w.-]+", str(cfg["run_name"])):
        raise ConfigError(f"run_name {cfg['run_name']!r} must be a plain folder name (letters, digits, _ . -)")
    _validate_values(cfg)
    trainer = cfg["trainer"]
    if not isinstance(trainer, Mapping):
        raise ConfigError(f"trainer must be a mapping of {trl_config_class(cfg['stage']).__name__} fields")
    validate_trainer_keys(trainer, trl_config_class(cfg["stage"]))
    validate_trainer_values(trainer, trl_config_class(cfg["stage"]))
    if cfg["stage"] == "crpo":
        _validate_crpo(cfg)
    else:
        _validate_sft(cfg)


# Our own keys: dotted key -> (kind, lower bound, lower bound inclusive?, None allowed?). kind: int | num | bool
_VALUES: dict[str, tuple[str, float | None, bool, bool]] = {
    "resume": ("bool", None, True, False), "overwrite": ("bool", None, True, False),
    "model.load_in_4bit": ("bool", None, True, False), "model.max_seq_length": ("int", 0, False, True),
    "model.gpu_memory_utilization": ("num", 0, False, False),
    "lora.r": ("int", 0, False, False), "lora.alpha": ("num", 0, False, False), "lora.dropout": ("num", 0, True, False),
    "data.limit": ("int", 0, False, True), "reward.k": ("num", None, True, True),
    "early_stopping.patience": ("int", 0, False, True), "early_stopping.threshold": ("num", 0, True, False),
}
# TRL fields that are meaningless at zero or below (TRL would reject them mid-run, or silently misbehave).
POSITIVE = ("learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
            "num_generations", "generation_batch_size", "steps_per_generation", "max_completion_length", "max_length",
            "num_train_epochs", "num_iterations", "logging_steps", "save_steps", "eval_steps", "temperature")
NON_NEGATIVE = ("beta", "warmup_steps", "weight_decay", "max_grad_norm", "epsilon")


def _kind_ok(v: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    return isinstance(v, int) if kind == "int" else isinstance(v, (int, float))


def _check_value(key: str, v: Any, kind: str, low: float | None = None, inclusive: bool = True,
                 none_ok: bool = False) -> None:
    if v is None and none_ok:
        return
    names = {"int": "an integer", "num": "a number", "bool": "true or false"}
    if not _kind_ok(v, kind):
        raise ConfigError(f"{key} must be {names[kind]}{' or null' if none_ok else ''}, got {v!r}")
    if low is not None and (v < low or (v == low and not inclusive)):
        raise ConfigError(f"{key} must be {'>=' if inclusive else '>'} {low:g}, got {v!r}")


def _get(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for k in dotted.split("."):
        if not isinstance(node, Mapping) or k not in node:
            return False, None
        node = node[k]
    return True, node


def _validate_values(cfg: Mapping[str, Any]) -> None:
    """Types and ranges of our own sections (``lora.r=abc`` is an error here, not a traceback later)."""
    for key, (kind, low, inclusive, none_ok) in _VALUES.items():
        found, v = _get(cfg, key)
        if found:
            _check_value(key, v, kind, low, inclusive, none_ok)
    found, dropout = _get(cfg, "lora.dropout")
    if found and dropout >= 1:
        raise ConfigError(f"lora.dropout must be below 1, got {dropout!r}")
    found, util = _get(cfg, "model.gpu_memory_utilization")
    if found and util > 1:
        raise ConfigError(f"model.gpu_memory_utilization is a share of the GPU, in (0, 1], got {util!r}")
    found, weights = _get(cfg, "reward.weights")
    if found and weights is not None:
        if not isinstance(weights, Mapping):
            raise ConfigError(f"reward.weights must be a mapping of reward names to numbers, got {weights!r}")
        for name, w in weights.items():
            _check_value(f"reward.weights.{name}", w, "num")
    found, functions = _get(cfg, "reward.functions")
    if found and functions is not None:
        if not isinstance(functions, Mapping):
            raise ConfigError(f"reward.functions must be a mapping of rewards ('package.module:function' or a "
                              f"registered name) to weights, got {functions!r}")
        for name, w in functions.items():
            _check_value(f"reward.functions[{name!r}]", w, "num")
    if not isinstance(cfg["lora"]["target_modules"], (str, list)):
        raise ConfigError(f"lora.target_modules must be 'all-linear' or a list of module names, got "
                          f"{cfg['lora']['target_modules']!r}")


def _simple_kind(hint: Any) -> tuple[str | None, bool]:
    """(``int``/``num``/``bool``, None allowed) for a TRL field annotated with those types only, else (None, _)."""
    import types
    import typing

    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    none_ok = type(None) in args
    rest = {a for a in args if a is not type(None)}
    if rest == {int}:
        return "int", none_ok
    if rest in ({float}, {int, float}):
        return "num", none_ok
    if rest == {bool}:
        return "bool", none_ok
    return None, none_ok


def validate_trainer_values(trainer: Mapping[str, Any], cls: type) -> None:
    """Types of the ``trainer`` values from the TRL dataclass's annotations (``max_steps=abc`` is an error),
    positive rates, steps and batch sizes, and ``num_generations`` dividing the generation batch."""
    import typing

    hints = typing.get_type_hints(cls)
    for k, v in trainer.items():
        kind, none_ok = _simple_kind(hints.get(k))
        if kind is not None:
            _check_value(f"trainer.{k}", v, kind, none_ok=none_ok)
    for k in POSITIVE:
        if trainer.get(k) is not None:
            _check_value(f"trainer.{k}", trainer[k], "num", 0, inclusive=False)
    for k in NON_NEGATIVE:
        if trainer.get(k) is not None:
            _check_value(f"trainer.{k}", trainer[k], "num", 0)
    steps = trainer.get("max_steps")
    if steps is not None and steps != -1 and steps <= 0:
        raise ConfigError(f"trainer.max_steps must be > 0 (or -1: train for num_train_epochs), got {steps!r}")
    ratio = trainer.get("warmup_ratio")
    if ratio is not None and not (_kind_ok(ratio, "num") and 0 <= ratio < 1):
        raise ConfigError(f"trainer.warmup_ratio must be a number in [0, 1), got {ratio!r}")
    if any(f.name == "num_generations" for f in dataclasses.fields(cls)):  # GRPOConfig
        _check_generation_batch(trainer, cls)


def _check_generation_batch(trainer: Mapping[str, Any], cls: type) -> None:
    """The generation batch (per-device batch x processes x steps per generation, unless given) must be a
    multiple of ``num_generations``: each prompt's group of completions has to fit in one batch."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    g = trainer.get("num_generations", defaults.get("num_generations"))
    if not isinstance(g, int) or g < 1:
        return
    if g < 2:
        raise ConfigError(f"trainer.num_generations must be >= 2 (GRPO compares completions within a group), got {g}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = trainer.get("generation_batch_size")
    if batch is None:
        per_device = trainer.get("per_device_train_batch_size", defaults.get("per_device_train_batch_size"))
        steps = trainer.get("steps_per_generation") or trainer.get("gradient_accumulation_steps",
                                                                    defaults.get("gradient_accumulation_steps"))
        batch = per_device * world * steps
        what = (f"per_device_train_batch_size ({per_device}) x processes ({world}) x steps_per_generation "
                f"({steps}) = {batch}")
    else:
        what = f"generation_batch_size ({batch})"
    if batch % g:
        raise ConfigError(f"trainer.num_generations ({g}) must divide the generation batch: {what}; change "
                          f"per_device_train_batch_size, gradient_accumulation_steps or num_generations")


def _validate_crpo(cfg: Mapping[str, Any]) -> None:
    from clinical_r1.monitors import check_thresholds

    check_thresholds(cfg["monitors"])
    from clinical_r1.prompts import PROMPT_KINDS
    from clinical_r1.rewards import REWARDS, USER_REWARDS, RewardError, get_preset, is_import_path, load_reward

    r = cfg["reward"]
    if r["k"] is not None and not r["k"] > 0:
        raise ConfigError(f"reward.k must be > 0 (the accuracy weight), got {r['k']!r}")
    if r["prompt"] is not None:
        _choice(r["prompt"], PROMPT_KINDS, "reward.prompt")
    try:
        if r["preset"] is not None:
            get_preset(r["preset"])
        for ref in r["functions"] or {}:
            load_reward(str(ref))  # imports it; checks its name and signature
        for name in r["weights"] or {}:
            if name not in REWARDS and name not in USER_REWARDS and not is_import_path(name):
                raise ConfigError(f"reward.weights: unknown reward {name!r}; known rewards: {sorted(REWARDS)}, "
                                  f"registered: {sorted(USER_REWARDS)}")
        reward_preset(cfg)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    except RewardError as e:
        raise ConfigError(str(e)) from None
    t = cfg["trainer"]
    if cfg["model"].get("backend") == "transformers" and cfg["model"].get("load_in_4bit") and t.get("use_vllm"):
        # TRL syncs the policy to vLLM by merging the LoRA adapter into the base weights, which fails on
        # bitsandbytes 4-bit weights; Unsloth's engine (model.backend: unsloth) handles 4-bit itself.
        raise ConfigError("model.backend=transformers with model.load_in_4bit=true and trainer.use_vllm=true is not "
                          "supported (TRL merges the LoRA adapter into 4-bit weights to sync vLLM): set "
                          "model.load_in_4bit=false, trainer.use_vllm=false, or model.backend=unsloth")
    if "multi_objective_aggregation" in t:
        _choice(t["multi_objective_aggregation"], AGGREGATIONS, "trainer.multi_objective_aggregation")
    if "scale_rewards" in t and not isinstance(t["scale_rewards"], bool):
        _choice(t["scale_rewards"], SCALE_REWARDS, "trainer.scale_rewards")
    losses = _supported_loss_types()
    if "loss_type" in t and losses:
        _choice(t["loss_type"], losses, "trainer.loss_type")
    if "reward_weights" in t:
        raise ConfigError("trainer.reward_weights comes from the reward preset; use reward.preset / reward.k / "
                          "reward.weights")
    from clinical_r1.data import NORMALISERS

    _choice(cfg["data"]["name"], [*NORMALISERS, "split"], "data.name")
    if cfg["data"]["name"] in ("split", "jsonl") and not cfg["data"]["path"]:
        raise ConfigError(f"data.name {cfg['data']['name']!r} needs data.path")
    mpl = cfg["max_prompt_length"]
    if mpl is not None and (not isinstance(mpl, int) or mpl <= 0):
        raise ConfigError(f"max_prompt_length must be a positive integer or null, got {mpl!r}")


def _validate_sft(cfg: Mapping[str, Any]) -> None:
    d = cfg["data"]
    ds = d["dev_size"]
    if not (isinstance(ds, int) and ds >= 1) and not (isinstance(ds, float) and 0 < ds < 1):
        raise ConfigError(f"data.dev_size must be a fraction in (0, 1) or a row count >= 1, got {ds!r}")
    _choice(d["prompt_kind"], ("crpo", "grpo", "both"), "data.prompt_kind")
    es = cfg["early_stopping"]
    if es["patience"] is not None and int(es["patience"]) < 1:
        raise ConfigError(f"early_stopping.patience must be >= 1 or null (off), got {es['patience']!r}")


def input_paths(cfg: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(key, path, kind) for every data path the config reads; kind is ``file`` or ``split`` (a folder with
    ``manifest.json``)."""
    d = cfg["data"]
    out = []
    if cfg["stage"] == "crpo":
        if d.get("path"):
            out.append(("data.path", d["path"], "split" if d["name"] == "split" else "file"))
    else:
        out += [(f"data.{k}", d[k], "file") for k in ("traces", "questions", "dev_traces") if d.get(k)]
    return out  # model.name and model.init_adapter: models.check_model / check_adapter say what is wrong


def check_paths(cfg: Mapping[str, Any], missing_ok: bool = False) -> list[str]:
    """Raise :class:`ConfigError` naming the key and path of an input that is the wrong kind (a folder given
    as a data file) or, unless ``missing_ok``, missing. Returns the missing ones (``check-config`` warns:
    a config may name the output of an earlier stage)."""
    missing = []
    for key, raw, kind in input_paths(cfg):
        p = Path(str(raw)).expanduser()
        if not p.exists():
            if not missing_ok:
                raise ConfigError(f"{key}: {p} does not exist")
            missing.append(f"{key}: {p} does not exist (yet)")
            continue
        if kind == "file" and not p.is_file():
            raise ConfigError(f"{key}: {p} is a folder; give a data file (.jsonl, .json or .parquet)")
        if kind != "file" and not p.is_dir():
            raise ConfigError(f"{key}: {p} is a file; give a folder")
        if kind == "split" and not (p / "manifest.json").is_file():
            raise ConfigError(f"{key}: {p} has no manifest.json (not a folder written by `python -m clinical_r1 split`)")
    return missing


# ---------------------------------------------------------------------------------------------------
# Building TRL's config
# ---------------------------------------------------------------------------------------------------


def run_dir(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg["output_root"]) / cfg["run_name"]


def trainer_kwargs(cfg: Mapping[str, Any], cpu_safe: bool = False) -> dict[str, Any]:
    """The config's ``trainer`` section plus the derived keys (and, for CRPO, the preset's weights).

    ``cpu_safe=True`` adds ``use_cpu=True``: the one change ``TrainingArguments`` needs to accept a GPU
    config's ``bf16: true`` on a machine without a GPU (the config check in the tests and
    ``check-config --cpu-safe``). Precision and vLLM settings stay exactly as written.
    """
    kw = dict(copy.deepcopy(cfg["trainer"]))
    for k in ("eval_strategy", "save_strategy", "logging_strategy"):
        if kw.get(k) is False:  # YAML 1.1 reads an unquoted `no` as false
            kw[k] = "no"
    kw.update(output_dir=str(run_dir(cfg)), seed=cfg["seed"], run_name=cfg["run_name"])
    if cfg["stage"] == "crpo":
        kw["reward_weights"] = reward_preset(cfg).weight_list()
    if cpu_safe:
        kw["use_cpu"] = True
    return kw


def trainer_args(cfg: Mapping[str, Any], cpu_safe: bool = False):
    """``GRPOConfig(**...)`` or ``SFTConfig(**...)``; TRL's own checks (e.g. generation batch divisible
    by ``num_generations``) raise here as :class:`ConfigError`, before any model is loaded."""
    cls = trl_config_class(cfg["stage"])
    try:
        return cls(**trainer_kwargs(cfg, cpu_safe))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training config {cfg['run_name']!r}: {cls.__name__} rejects the trainer settings: {e}") from e


def reward_preset(cfg: Mapping[str, Any]):
    """The config's reward preset with ``reward.functions`` added and ``reward.k`` and ``reward.weights`` applied
    (:func:`clinical_r1.rewards.compose_preset`): the one place the reward weights that reach TRL
    (``GRPOConfig.reward_weights``) and the reward functions are decided. Rewards named by import path are imported
    here, in this process (a probe in another kernel reads the run's ``config.yaml`` the same way)."""
    from clinical_r1.rewards import compose_preset

    r = cfg["reward"]
    return compose_preset(r["preset"], k=r["k"], weights=r["weights"], functions=r.get("functions"),
                          prompt=r.get("prompt"))


def portable_rewards(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with each registered reward in ``reward.functions`` named by the import path another process can
    load it from (``module:qualname``; see :func:`clinical_r1.rewards.reward_source`), so the run's ``config.yaml``
    names rewards that notebook 05 and the grid's kernels can score with. A reward defined in a notebook has no
    import path: it keeps its name, with a warning (it is known in its own kernel only)."""
    from clinical_r1.rewards import REWARDS, is_import_path, reward_source

    functions = dict(cfg["reward"].get("functions") or {})
    out = {}
    for ref, w in functions.items():
        source = None if is_import_path(ref) or ref in REWARDS else reward_source(ref)
        if source is None and not is_import_path(ref) and ref not in REWARDS:
            log.warning("reward %r is defined in this process only (a notebook cell): the run's config.yaml names it "
                        "by name, which another kernel (notebook 05's probe, the grid) cannot load; define it in a "
                        "module and name it 'package.module:function' to score the run elsewhere", ref)
        out[source or ref] = w
    return {**cfg, "reward": {**cfg["reward"], "functions": out}}


def config_warnings(cfg: Mapping[str, Any]) -> list[str]:
    """Settings that are valid but probably not what a reproduction wants; ``check-config`` prints them and
    a CRPO run logs them. Today: a KL term (``beta > 0``) whose form is left to TRL's default, which since
    TRL 1.15 multiplies the KL by the importance ratio (``use_bias_correction_kl=True``); the paper and the
    authors' verl run use the plain k3 KL (``use_bias_correction_kl: false``)."""
    out = []
    t = cfg.get("trainer") or {}
    if cfg.get("stage") == "crpo" and float(t.get("beta") or 0) > 0 and "use_bias_correction_kl" not in t:
        out.append(f"trainer.beta={t['beta']} with trainer.use_bias_correction_kl left to TRL's default (True: "
                   "the KL is multiplied by the importance ratio); set it explicitly: false for the paper's "
                   "plain k3 KL (verl low_var_kl), true for the DeepSeek-V3.2 unbiased estimator")
    return out
