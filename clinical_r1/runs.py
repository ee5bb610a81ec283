"""Run folders: one folder per training run, with everything needed to trust and redo it.

    results/<run_name>/
        config.yaml       the resolved training config (defaults and overrides filled in)
        run_info.json     seed, command line, start/end time, provenance (commit, dirty, versions, device)
        metrics.jsonl     one JSON line per TRL log event (``rewards/<name>/mean``, ``kl``, ``loss``, ...)
        metrics.csv       the same table, written at the end
        metrics.json      the final summary (train output, last value of every metric, best eval)
        merged_adapters/  copies of the adapters merged into the base before training (init_adapter_mode:
                          merge: the cold-start adapter); absent when there are none
        checkpoint-N/     TRL checkpoints (resume from the last one), each with clinical_r1_policy.json
        adapter/          the final (SFT: best-on-dev) LoRA adapter and tokenizer, with
                          clinical_r1_policy.json and its own merged_adapters/ copy (it stands alone)

    from clinical_r1.runs import prepare_run_dir, MetricsLogger

Load a trained adapter (or checkpoint) only through ``clinical_r1.models`` (``load_trained``, ``merge_lora``,
``serving_folders``): ``clinical_r1_policy.json`` says what it sits on, which PEFT's ``adapter_config.json``
cannot (it names the plain base even when a cold-start adapter was merged into it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from transformers import TrainerCallback

from clinical_r1.config import ConfigError, run_dir
from clinical_r1.files import read_json, read_jsonl, write_csv, write_json, write_jsonl, write_yaml
from clinical_r1.records import provenance

log = logging.getLogger(__name__)

# Diagnostics under plain names: the share of completions in the preset's format / citing <dx>.
ALIASES = {
    "format_rate": ("rewards/crpo_format/mean", "rewards/format/mean", "rewards/r1_format/mean"),
    "cross_reference_rate": ("rewards/cross_reference/mean",),
}


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch (torchrun/accelerate set ``RANK``), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_run_dir(cfg: Mapping[str, Any]) -> Path:
    """Create ``results/<run_name>``; an existing non-empty folder needs ``resume`` or ``overwrite``.

    Only the main process checks, clears and writes the folder; the other ranks just use it.
    """
    d = run_dir(cfg)
    if not is_main_process():
        d.mkdir(parents=True, exist_ok=True)
        return d
    if d.exists() and any(d.iterdir()) and not cfg["resume"]:
        if not cfg["overwrite"]:
            raise ConfigError(f"run folder {d} already exists; set resume: true to continue it, overwrite: true "
                              f"to replace it, or choose another run_name")
        log.warning("overwrite: removing the previous run folder %s", d)
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def claim_run(cfg: Mapping[str, Any]) -> Iterator[Path]:
    """Own the run folder for the block: an OS lock (a second run of the same folder fails at once, naming
    the holder's pid; see :mod:`clinical_r1.locks`), then :func:`prepare_run_dir`. An exception inside marks
    ``run_info.json`` ``status: failed`` with the error before it propagates; success marks ``finished``."""
    from clinical_r1.locks import exclusive
    from clinical_r1.redact import redact

    if not is_main_process():
        yield prepare_run_dir(cfg)
        return
    with exclusive(run_dir(cfg), "run folder"):
        d = prepare_run_dir(cfg)
        try:
            yield d
        except BaseException as e:
            update_run_info(d, status="failed", failed=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            error=redact(f"{type(e).__name__}: {e}")[:2000])
            log.error("run %s failed; run_info.json marks it failed (resume: true continues it)", d)
            raise
        update_run_info(d, status="finished")


def last_checkpoint(d: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` folder (with ``trainer_state.json``, which the Trainer writes
    last), so a run killed while saving resumes from the checkpoint before."""
    d = Path(d)
    if not d.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in d.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for step, p in reversed(found):
        if (p / "trainer_state.json").is_file():
            return str(p)
        log.warning("skipping incomplete checkpoint %s (no trainer_state.json: the run died while saving)", p)
    return None


def write_run_info(d: Path, cfg: Mapping[str, Any], **extra: Any) -> Path:
    """``config.yaml`` and ``run_info.json`` (main process only); on resume the earlier info is kept
    under ``previous``."""
    from clinical_r1.redact import redact

    p = d / "run_info.json"
    if not is_main_process():
        return p
    write_yaml(dict(cfg), d / "config.yaml")
    info = {
        "run_name": cfg["run_name"], "stage": cfg["stage"], "seed": cfg["seed"],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": [redact(a) for a in sys.argv],
        "provenance": provenance(), **extra,
    }
    if cfg["resume"] and p.is_file():
        info["previous"] = read_json(p)
    return write_json(info, p)


def update_run_info(d: Path, **fields: Any) -> None:
    if not is_main_process():
        return
    p = d / "run_info.json"
    info = read_json(p) if p.is_file() else {}
    info.update(fields)
    write_json(info, p)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible rather than dropping them
    return v


class MetricsLogger(TrainerCallback):
    """Append every TRL log event to ``metrics.jsonl`` (one line, flushed), with plain-name aliases.

    On resume, lines logged after the checkpoint's step (the lost tail of a crashed run) are
    removed first, so the file always describes one consistent trajectory. With ``monitors`` (a training config's
    alarm thresholds) each line also gets the windowed reward-hacking monitors, and a threshold crossing
    logs a warning (:class:`clinical_r1.monitors.AlarmWatch`).
    """

    def __init__(self, d: str | os.PathLike, monitors: Mapping[str, Any] | None = None):
        from clinical_r1.monitors import AlarmWatch

        self.path = Path(d) / "metrics.jsonl"
        self.alarms = AlarmWatch(monitors) if monitors is not None else None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step > 0 and self.path.is_file():
            rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= state.global_step]
            write_jsonl(rows, self.path)
            log.info("resumed at step %d: kept %d earlier metric lines", state.global_step, len(rows))
            if self.alarms is not None:
                self.alarms.reset(rows)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
        row.update({k: _clean(v) for k, v in logs.items()})
        for alias, keys in ALIASES.items():
            for k in keys:
                if k in logs:
                    row[alias] = _clean(logs[k])
                    break
        if self.alarms is not None:
            self.alarms.observe(row)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


def read_metrics(d: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(d) / "metrics.jsonl"
    return read_jsonl(p) if p.is_file() else []


def finalize_metrics(d: Path, summary: Mapping[str, Any], monitors: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``metrics.csv`` (all log lines) and ``metrics.json`` (summary + last value of each metric, and with
    ``monitors``, the alarm thresholds, every threshold crossing under ``alarms``); main process only."""
    if not is_main_process():
        return {}
    rows = read_metrics(d)
    last: dict[str, Any] = {}
    for r in rows:
        last.update({k: v for k, v in r.items() if k not in ("time",)})
    out = {"summary": dict(summary), "last": last, "n_log_lines": len(rows)}
    if monitors is not None:
        from clinical_r1.monitors import crossings

        out["alarms"] = crossings(rows, monitors)
        out["alarm_thresholds"] = dict(monitors)
    if rows:
        import pandas as pd

        write_csv(pd.DataFrame(rows), d / "metrics.csv")
    write_json(out, d / "metrics.json")
    return out


class PolicyManifest(TrainerCallback):
    """Write ``clinical_r1_policy.json`` into each ``checkpoint-N/`` the Trainer saves, pointing at the run's
    ``merged_adapters/`` copies, so a checkpoint loads as the policy it holds (``models.load_trained``)."""

    def __init__(self, spec: Mapping[str, Any], merged: list[Path]):
        self.spec, self.merged = dict(spec), merged

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from clinical_r1.models import write_policy_manifest

            write_policy_manifest(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.spec, self.merged)


def train_and_save(trainer: Any, tok: Any, run: Path, cfg: Mapping[str, Any], **summary: Any) -> dict[str, Any]:
    """Train (resuming from the run's last checkpoint when ``cfg["resume"]``), save the final adapter and
    tokenizer to ``run/adapter``, and write ``metrics.json`` and the finish time. Shared by SFT and CRPO.

    Every saved adapter gets ``clinical_r1_policy.json`` (see ``models.write_policy_manifest``): the adapters
    merged into the base before training are copied into ``run/merged_adapters`` before the first step.
    """
    from clinical_r1.models import copy_adapters, merged_before_training, write_policy_manifest

    resume = last_checkpoint(run) if cfg["resume"] else None
    if cfg["resume"] and resume is None:
        log.info("resume: no checkpoint in %s yet; starting from scratch", run)
    merged = copy_adapters(merged_before_training(cfg["model"]), run / "merged_adapters") if is_main_process() else []
    trainer.add_callback(PolicyManifest(cfg["model"], merged))
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=resume)
    adapter = run / "adapter"
    trainer.save_model(str(adapter))  # every rank takes part (DeepSpeed); rank 0 writes
    if is_main_process():
        tok.save_pretrained(str(adapter))
        write_policy_manifest(adapter, cfg["model"], copy_adapters(merged, adapter / "merged_adapters"))
    result = {**out.metrics, "global_step": out.global_step, "train_seconds": time.time() - t0,
              "adapter": str(adapter), "resumed_from": resume,
              **{k: (v(trainer) if callable(v) else v) for k, v in summary.items()}}
    finalize_metrics(run, result, cfg.get("monitors"))
    update_run_info(run, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return result

