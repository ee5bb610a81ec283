"""Cold-start SFT: LoRA on kept reasoning traces, loss on the completion only, best checkpoint on dev.

    python -m clinical_r1 sft --config configs/cpu_demo_sft.yaml [--set trainer.max_steps=4 ...]

    from clinical_r1.sft import run_sft
    run = run_sft("configs/cpu_demo_sft.yaml")          # -> results/cpu_demo_sft/ (adapter/ holds the best LoRA)

Each trace (``id, dx, conclusion``, plus the question fields or an ``id`` found in the questions file)
becomes a conversational prompt-completion row: ``prompt = build_messages(item, "crpo")`` and
``completion = [assistant: CRPO.render(dx, conclusion)]`` (:mod:`clinical_r1.formats`). TRL's ``SFTTrainer``
then computes the loss on the completion tokens only (``completion_only_loss``), evaluates on a held-out dev
slice, stops early when dev loss stops improving, and keeps the best checkpoint (``load_best_model_at_end``).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

from clinical_r1.errors import ClinicalR1Error
from clinical_r1.config import check_paths, load_config, model_backend, trainer_args
from clinical_r1.formats import FORMATS
from clinical_r1.prompts import build_messages

log = logging.getLogger(__name__)

TRACE_FIELDS = ("id", "dx", "conclusion")
QUESTION_FIELDS = ("question", "options", "answer")


class TraceError(ClinicalR1Error, ValueError):
    """A traces file that cannot become SFT rows (missing field, unknown id, empty data)."""


# ---------------------------------------------------------------------------------------------------
# Data: traces joined with questions -> prompt/completion rows
# ---------------------------------------------------------------------------------------------------


def default_paths() -> tuple[Path, Path]:
    """The bundled sample traces and questions."""
    from clinical_r1.data import sample_path, sample_traces_path

    return sample_traces_path(), sample_path()


def load_traces(traces: str | os.PathLike | None = None, questions: str | os.PathLike | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
    """Trace records with the question fields filled in (from the trace itself, else joined on ``id``).

    Raises :class:`TraceError` naming the file, row and field for a trace without ``dx``/``conclusion``
    or whose ``id`` is in neither the trace nor the questions file.
    """
    from clinical_r1.data import load_benchmark
    from clinical_r1.files import read_jsonl

    default_traces, default_questions = default_paths()
    tpath = Path(traces) if traces else default_traces
    if not tpath.is_file():
        raise TraceError(f"traces file {tpath} does not exist")
    rows = read_jsonl(tpath)
    if limit is not None:
        rows = rows[: int(limit)]
    if not rows:
        raise TraceError(f"{tpath}: no traces")
    by_id: dict[str, dict[str, Any]] = {}
    if any(not all(k in r for k in QUESTION_FIELDS) for r in rows):
        qpath = Path(questions) if questions else default_questions
        if not qpath.is_file():
            raise TraceError(f"questions file {qpath} does not exist (needed: some traces lack question fields)")
        by_id = {r["id"]: dict(r) for r in load_benchmark("jsonl", path=qpath)}
    out = []
    for i, r in enumerate(rows, start=1):
        for k in TRACE_FIELDS:
            if not str(r.get(k) or "").strip():
                raise TraceError(f"{tpath}: row {i}: field '{k}': missing or empty")
        rid = str(r["id"])
        if all(k in r for k in QUESTION_FIELDS):
            q = r
        elif rid in by_id:
            q = by_id[rid]
        else:
            raise TraceError(f"{tpath}: row {i}: id {rid!r} has no question fields and is not in the questions file")
        out.append({"id": rid, "question": q["question"], "options": list(q["options"]),
                    "answer": str(q["answer"]), "dx": r["dx"], "conclusion": r["conclusion"]})
    return out


PROMPT_KINDS = {"crpo": ("crpo",), "grpo": ("grpo",), "both": ("crpo", "grpo")}


def sft_rows(records: Sequence[Mapping[str, Any]], prompt_kind: str = "crpo") -> list[dict[str, Any]]:
    """Every trace rendered in each format of ``prompt_kind``: ``crpo``, ``grpo`` or ``both``.

    ``both`` gives one cold start for the two arms of the 2x2: each trace once as crpo prompt ->
    ``<dx>``/``<conclusion>`` and once as grpo prompt -> ``<think>``/``<answer>`` (same bodies), so the
    system prompt selects the format and neither RL arm starts from a format it was never shown.
    """
    return [sft_row(r, kind) for r in records for kind in PROMPT_KINDS[prompt_kind]]


def sft_row(rec: Mapping[str, Any], kind: str = "crpo") -> dict[str, Any]:
    """One conversational prompt-completion row for TRL."""
    target = FORMATS[kind].render(rec["dx"], rec["conclusion"])  # the trace's two bodies in the format's sections
    return {
        "id": rec["id"],
        "answer": rec["answer"],
        "prompt": build_messages(rec, kind),
        "completion": [{"role": "assistant", "content": target}],
    }


def split_dev(rows: Sequence[Any], dev_size: float | int, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded (train, dev) split; ``dev_size`` is a fraction or a count; both parts are non-empty."""
    if len(rows) < 2:
        raise TraceError(f"need at least 2 traces for a train and a dev slice, got {len(rows)}")
    n_dev = int(dev_size) if isinstance(dev_size, int) else max(1, round(len(rows) * float(dev_size)))
    n_dev = min(max(n_dev, 1), len(rows) - 1)
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    dev = set(idx[:n_dev])
    return [r for i, r in enumerate(rows) if i not in dev], [r for i, r in enumerate(rows) if i in dev]


def token_length(tok: Any, row: Mapping[str, Any]) -> int:
    """Tokens of one SFT row (prompt and completion through the chat template): what ``max_length`` caps."""
    text = tok.apply_chat_template(list(row["prompt"]) + list(row["completion"]), tokenize=False)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def drop_too_long(rows: list[dict[str, Any]], tok: Any, max_length: int | None, what: str) -> list[dict[str, Any]]:
    """Drop rows longer than ``max_length`` tokens (TRL would cut off their conclusion), saying which."""
    if max_length is None:
        return rows
    kept, dropped = [], []
    for r in rows:
        n = token_length(tok, r)
        if n <= max_length:
            kept.append(r)
        else:
            dropped.append((r["id"], n))
    if dropped:
        log.warning("%s: dropped %d of %d rows longer than max_length=%d tokens: %s", what, len(dropped),
                    len(rows), max_length, dropped[:10])
    if not kept:
        raise TraceError(f"{what}: every row is longer than max_length={max_length} tokens (e.g. {dropped[:3]})")
    return kept


# ---------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------


def run_sft(config: Mapping[str, Any] | str | os.PathLike, overrides: Any = None) -> Path:
    """Run cold-start SFT from a training config; returns the run folder (``adapter/`` holds the best LoRA)."""
    from clinical_r1 import models

    models.import_unsloth_first(model_backend(config, overrides))  # before runs/load_config import transformers/TRL
    from clinical_r1 import runs

    cfg = load_config(config, overrides, stage="sft")
    check_paths(cfg)  # every input exists and is the right kind, before anything is loaded or written
    args = trainer_args(cfg)  # TRL's own checks, before any model or data is loaded
    ref = models.check_model(cfg["model"]["name"])
    tok = models.load_tokenizer(ref, padding_side="right")
    d = cfg["data"]
    records = load_traces(d["traces"], d["questions"], d["limit"])
    rows = sft_rows(records, d["prompt_kind"])
    if d["dev_traces"]:
        train_rows = rows
        dev_rows = sft_rows(load_traces(d["dev_traces"], d["questions"]), d["prompt_kind"])
        shared = sorted({r["id"] for r in train_rows} & {r["id"] for r in dev_rows})
        if shared:
            raise TraceError(f"{d['dev_traces']}: {len(shared)} dev trace id(s) are also training traces: {shared[:10]}")
    else:
        train_recs, dev_recs = split_dev(records, d["dev_size"], cfg["seed"])  # by trace: both renderings together
        train_rows, dev_rows = sft_rows(train_recs, d["prompt_kind"]), sft_rows(dev_recs, d["prompt_kind"])
    train_rows = drop_too_long(train_rows, tok, args.max_length, "train traces")
    dev_rows = drop_too_long(dev_rows, tok, args.max_length, "dev traces")

    with runs.claim_run(cfg) as run:  # locked; marked failed if anything below raises
        runs.write_run_info(run, cfg, model_ref=ref, n_train=len(train_rows), n_dev=len(dev_rows))
        model, tok = models.load_policy(cfg["model"], cfg["lora"], seed=cfg["seed"],
                                        gradient_checkpointing=bool(args.gradient_checkpointing))
        tok.padding_side = "right"
        trainer = build_sft_trainer(cfg, args, model, tok, train_rows, dev_rows, run)
        runs.train_and_save(trainer, tok, run, cfg, best_checkpoint=lambda t: t.state.best_model_checkpoint,
                            best_metric=lambda t: t.state.best_metric)
    log.info("SFT done: %s (best %s = %s)", run, args.metric_for_best_model, trainer.state.best_metric)
    return run


def build_sft_trainer(cfg: Mapping[str, Any], args: Any, model: Any, tok: Any, train_rows: list[dict[str, Any]],
                      dev_rows: list[dict[str, Any]], run: Path):
    """TRL ``SFTTrainer`` with the metrics logger and (when configured) early stopping on dev."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    from clinical_r1.runs import MetricsLogger

    callbacks: list[Any] = [MetricsLogger(run)]
    es = cfg["early_stopping"]
    if es["patience"] is not None and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(es["patience"]),
                                               early_stopping_threshold=float(es["threshold"])))
    elif es["patience"] is not None:
        log.warning("early stopping needs trainer.load_best_model_at_end: true; it is off for this run")
    cols = ("prompt", "completion")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{k: r[k] for k in cols} for r in train_rows]),
        eval_dataset=Dataset.from_list([{k: r[k] for k in cols} for r in dev_rows]),
        processing_class=tok,
        callbacks=callbacks,
    )
