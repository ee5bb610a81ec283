"""See inside a multi-objective GRPO run, every step: which reward drives the advantage, and reward-hacking alarms.

    from clinical_r1.monitors import StepMonitor
    monitor = StepMonitor.for_trainer(args, preset)          # crpo.build_grpo_trainer does this
    GRPOTrainer(reward_funcs=monitor.wrap(preset.functions()), ...)

Only TRL's supported hooks: the preset's reward functions are wrapped (same names, same values); after the
last one has scored a batch, the wrapper computes the step's view and hands it to TRL through the ``log_metric``
argument that TRL gives every reward function, so the values reach ``metrics.jsonl`` with TRL's own metrics.
``runs.MetricsLogger`` then adds the two windowed monitors and raises the alarms (:class:`AlarmWatch`).

Logged every step (``metrics.jsonl``), for each weighted reward ``<r>``:

- ``advantage_share/<r>``: mean over prompt groups of ``Cov(P_r, A) / Var(A)``, where ``A`` is the advantage TRL
  computes and ``P_r`` its additive part from reward ``r`` (``clinical_r1.advantage``); shares sum to 1. Groups
  whose advantage does not vary are left out; a step where none varies logs no shares.
- ``reward_varies/<r>``: the share of prompt groups in which reward ``r`` takes more than one value.

The reward-hacking monitors (``MONITORS``; each has a threshold in the training config's ``monitors`` section):
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from clinical_r1.advantage import advantage_parts, advantage_shares, scale_mode, varies
from clinical_r1.errors import ConfigError
from clinical_r1.formats import FORMATS, parse
from clinical_r1.parsing import completion_text, find_boxes

log = logging.getLogger(__name__)

# config key (the metric is monitor/<key>) -> definition. Every one is "bad when high": an alarm fires when a
# step's value rises above the config's threshold after being at or below it (or on the first step).
MONITORS: dict[str, str] = {
    "near_copy_rate": "share of the step's completions whose conclusion cites <dx> but was refused by the "
                      "cross-reference near-copy guard (copying <dx> to earn the bonus); crpo format only",
    "option_only_rate": "share of well-formed completions whose conclusion shares 3-grams with <dx> only inside "
                        "option text and no clinical value (restating the answer as a 'finding'); crpo format only",
    "box_outside_rate": "share of completions with a \\boxed{} outside the concluding section (<conclusion> or "
                        "<answer>), e.g. a box inside <dx>",
    "repetition": "degenerate repetition: mean over completions of seq-rep-4 = 1 - distinct 4-grams / 4-grams of "
                  "the lower-cased whitespace tokens (0 for a text without repeats, 1 - 1/(n-3) for one word looped)",
    "truncation_rate": "share of completions cut at max_completion_length (TRL's completions/clipped_ratio)",
    "length_drift": "Spearman correlation of completion length (tokens) and total weighted reward over the step's "
                    "completions: longer answers being paid more",
    "format_accuracy_divergence": "over the last `window` steps, min(slope of the format rate, -slope of accuracy) "
                                  "in units per step: positive only when format rises while accuracy falls",
}
__doc__ += "\n" + "\n".join(f"- ``monitor/{k}``: {v}." for k, v in MONITORS.items()) + "\n"

PREFIX = "monitor/"
FORMAT_KEYS = ("rewards/crpo_format/mean", "rewards/format/mean", "rewards/r1_format/mean")
ACCURACY_KEYS = ("rewards/accuracy/mean", "rewards/r1_accuracy/mean")
REP_N = 4  # n of seq-rep-n


# ---------------------------------------------------------------------------------------------------
# Per-completion signals
# ---------------------------------------------------------------------------------------------------


def seq_rep(completion: Any, n: int = REP_N) -> float:
    """seq-rep-n (Welleck et al. 2019): 1 - distinct n-grams / n-grams of the lower-cased whitespace tokens."""
    words = completion_text(completion).lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def box_outside(completion: Any, fmt: str, options: Sequence[str] | None = None) -> bool:
    """A ``\\boxed`` lies outside the format's last section (never for an untagged format). ``options`` only
    share the parse the rewards already made (the parser memoises per text, format and options)."""
    tags = FORMATS[fmt].tags
    if not tags:
        return False
    p = parse(completion, fmt, options)
    if not p.n_boxes:
        return False
    last = p.spans.get(tags[-1])
    return any(last is None or not (last[0] <= b.start and b.end <= last[1]) for b in find_boxes(p.text))


def completion_monitors(completions: Sequence[Any], fmt: str, options: Sequence[Sequence[str] | None] | None = None
                        ) -> dict[str, float]:
    """The per-completion monitors as rates over ``completions`` (``monitor/<name>`` keys)."""
    from clinical_r1.rewards import cross_reference_report

    n = len(completions)
    opts = [list(options[i]) if options is not None and options[i] is not None else None for i in range(n)]
    out = {"box_outside_rate": sum(box_outside(c, fmt, o) for c, o in zip(completions, opts)) / n,
           "repetition": float(np.mean([seq_rep(c) for c in completions]))}
    if fmt == "crpo":
        near = only = 0
        for c, o in zip(completions, opts):
            p = parse(c, "crpo", o)
            if p.well_formed:
                rep = cross_reference_report(p.sections["dx"], p.sections["conclusion"], o)
                near += rep["near_copy"]
                only += rep["option_only"]
        out.update(near_copy_rate=near / n, option_only_rate=only / n)
    return {PREFIX + k: v for k, v in out.items()}


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (:func:`clinical_r1.evaluate.spearman`); None when it is undefined (a constant side)."""
    from clinical_r1.evaluate import spearman as rho_p

    rho = rho_p([float(v) for v in x], [float(v) for v in y])[0]
    return None if math.isnan(rho) else rho


# ---------------------------------------------------------------------------------------------------
# The step view, through TRL's reward-function hook
# ---------------------------------------------------------------------------------------------------


class _Tap:
    """A reward function that records its scores for :class:`StepMonitor`; TRL sees the same name and values."""

    def __init__(self, fn: Callable[..., list[float]], monitor: "StepMonitor", index: int):
        self.fn, self.monitor, self.index = fn, monitor, index
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)  # TRL's metric name: rewards/<name>/mean
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> list[float]:
        scores = self.fn(*args, **kwargs)
        self.monitor.record(self.index, scores, kwargs)
        return scores


class StepMonitor:
    """Computes, after the last reward function of each batch, the advantage shares, how often each reward varies,
    and the per-step monitors, and logs them through TRL's ``log_metric``.

    Under several processes the reward table and lengths are gathered first (as TRL gathers them before it
    normalises), so groups split across ranks are decomposed whole; every rank logs the same shares.
    """

    def __init__(self, names: Sequence[str], weights: Sequence[float], num_generations: int,
                 aggregation: str = "sum_then_normalize", scale_rewards: str | bool = "group", fmt: str = "crpo"):
        self.names, self.weights = list(names), [float(w) for w in weights]
        self.num_generations, self.aggregation = int(num_generations), aggregation
        self.scale_rewards, self.fmt = scale_mode(scale_rewards), fmt
        self._scores: dict[int, list[float]] = {}

    @classmethod
    def for_trainer(cls, args: Any, preset: Any) -> "StepMonitor":
        """From a ``GRPOConfig`` and a ``rewards.Preset``."""
        return cls(list(preset.weights), list(args.reward_weights), args.num_generations,
                   args.multi_objective_aggregation, args.scale_rewards, preset.prompt)

    def wrap(self, fns: Sequence[Callable[..., list[float]]]) -> list[_Tap]:
        if [getattr(f, "__name__", None) for f in fns] != self.names:
            raise ValueError(f"reward functions {[getattr(f, '__name__', f) for f in fns]} are not {self.names}")
        return [_Tap(f, self, i) for i, f in enumerate(fns)]

    def record(self, index: int, scores: Sequence[float], kwargs: Mapping[str, Any]) -> None:
        self._scores[index] = [math.nan if s is None else float(s) for s in scores]
        if index != len(self.names) - 1:
            return
        table = [self._scores[i] for i in range(len(self.names))]
        self._scores = {}
        log_metric = kwargs.get("log_metric")
        if log_metric is None:  # called outside a trainer (a plain reward call): nothing to log to
            return
        completions = kwargs.get("completions") or []
        ids = kwargs.get("completion_ids")
        lengths = [len(x) for x in ids] if ids is not None else [len(completion_text(c).split()) for c in completions]
        table = np.asarray(table, np.float32).T.astype(float)  # TRL holds rewards as float32
        rewards, lengths = _gather(table, np.asarray(lengths, float))
        if len(rewards) % self.num_generations:  # an evaluation batch with another group size: not a training step
            log.debug("step monitor: %d completions are not groups of %d; skipped", len(rewards), self.num_generations)
            return
        for name, value in self.metrics(rewards, lengths, completions, kwargs.get("options")).items():
            log_metric(name, value)

    def metrics(self, rewards: np.ndarray, lengths: Sequence[float] | None = None, completions: Sequence[Any] = (),
                options: Sequence[Sequence[str] | None] | None = None) -> dict[str, float]:
        """The step's values: ``rewards`` is ``(completions, reward functions)`` for whole groups (all ranks),
        ``lengths`` their token counts, ``completions``/``options`` this rank's completions."""
        import torch

        r = torch.as_tensor(np.asarray(rewards, float))
        weighted = [i for i, w in enumerate(self.weights) if w != 0]
        parts, _adv = advantage_parts(r, self.weights, self.num_generations, self.aggregation, self.scale_rewards)
        shares, n_groups = advantage_shares(parts, self.num_generations)
        moving = varies(r, self.num_generations).double().mean(0)
        out: dict[str, float] = {}
        for i in weighted:
            if n_groups:
                out[f"advantage_share/{self.names[i]}"] = float(shares[i])
            out[f"reward_varies/{self.names[i]}"] = float(moving[i])
        if lengths is not None:
            total = np.nansum(np.asarray(rewards, float) * np.asarray(self.weights), axis=1)
            rho = spearman(lengths, total)
            if rho is not None:
                out[PREFIX + "length_drift"] = rho
        if len(completions):
            out.update(completion_monitors(completions, self.fmt, options))
        return out


def _gather(rewards: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ranks' rows, in rank order (TRL's ``gather``), when a process group is running; else as given."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rewards, lengths
    from accelerate import PartialState
    from accelerate.utils import gather

    local = torch.as_tensor(np.column_stack([rewards, lengths]), dtype=torch.float32, device=PartialState().device)
    both = gather(local).cpu().double().numpy()
    return both[:, :-1], both[:, -1]


# ---------------------------------------------------------------------------------------------------
# Windowed monitors and alarms (from the log lines; runs.MetricsLogger calls these)
# ---------------------------------------------------------------------------------------------------


def _first(row: Mapping[str, Any], keys: Iterable[str]) -> float | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def slope(values: Sequence[float]) -> float:
    """Least-squares slope per step of equally spaced values."""
    y = np.asarray(values, float)
    x = np.arange(len(y)) - (len(y) - 1) / 2
    return float((x * (y - y.mean())).sum() / (x**2).sum())


def divergence(history: Sequence[Mapping[str, Any]], window: int) -> float | None:
    """``min(slope(format rate), -slope(accuracy))`` over the last ``window`` training rows; None until full."""
    rows = [r for r in history if _first(r, FORMAT_KEYS) is not None and _first(r, ACCURACY_KEYS) is not None]
    if window < 2 or len(rows) < window:
        return None
    rows = rows[-window:]
    return min(slope([_first(r, FORMAT_KEYS) for r in rows]), -slope([_first(r, ACCURACY_KEYS) for r in rows]))


def _crossed(row: Mapping[str, Any], above: dict[str, bool], thresholds: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The monitors ``row`` takes above their threshold (``above``: each monitor's state so far, updated)."""
    out = []
    for name in MONITORS:
        t, v = thresholds.get(name), _first(row, [PREFIX + name])
        if t is None or v is None:
            continue
        if v > t and not above.get(name, False):
            out.append({"monitor": name, "metric": PREFIX + name, "step": row.get("step"), "value": v,
                        "threshold": float(t)})
        above[name] = v > t
    return out


def crossings(rows: Sequence[Mapping[str, Any]], thresholds: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every upward crossing of a monitor's threshold in ``rows`` (log lines in order): ``monitor, metric, step,
    value, threshold`` — a step above the threshold whose previous value of that monitor was not (or the first)."""
    above: dict[str, bool] = {}
    return [a for row in rows for a in _crossed(row, above, thresholds)]


class AlarmWatch:
    """Adds the windowed monitors to each log line and warns once per upward threshold crossing."""

    def __init__(self, thresholds: Mapping[str, Any]):
        self.thresholds = dict(thresholds)
        self.window = int(self.thresholds.get("window") or 0)
        self.history: list[dict[str, Any]] = []
        self.above: dict[str, bool] = {}

    def reset(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Continue after a resume from the kept log lines."""
        self.history, self.above = [dict(r) for r in rows], {}
        for r in self.history:
            _crossed(r, self.above, self.thresholds)

    def derive(self, row: Mapping[str, Any]) -> dict[str, float]:
        out = {}
        clipped = _first(row, ["completions/clipped_ratio"])
        if clipped is not None:
            out[PREFIX + "truncation_rate"] = clipped
        if _first(row, ACCURACY_KEYS) is not None:
            d = divergence([*self.history, row], self.window)
            if d is not None:
                out[PREFIX + "format_accuracy_divergence"] = d
        return out

    def observe(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Add the derived monitors to ``row`` (in place); return the alarms it raises, each warned once."""
        row.update(self.derive(row))
        fired = _crossed(row, self.above, self.thresholds)
        self.history.append(dict(row))
        for a in fired:
            log.warning("reward-hacking alarm at step %s: %s = %.3g crossed its threshold %.3g (%s)", a["step"],
                        a["metric"], a["value"], a["threshold"], MONITORS[a["monitor"]])
        return fired


def check_thresholds(monitors: Mapping[str, Any]) -> None:
    """A training config's ``monitors`` section: a number or null (off) per monitor, and ``window`` an integer >= 2."""
    for k, v in monitors.items():
        if k == "window":
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ConfigError(f"monitors.window must be an integer >= 2 (steps), got {v!r}")
        elif k not in MONITORS:
            raise ConfigError(f"monitors.{k}: unknown monitor; known: {sorted(MONITORS)} and window")
        elif v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ConfigError(f"monitors.{k} must be a number (the alarm threshold) or null (off), got {v!r}")
