"""The study's stages as functions: what each numbered notebook calls (notebooks stay thin).

    from clinical_r1 import study
    study.prepare_data(out_dir="results/demo/data", train_benchmark="sample", split_sizes={...})   # 01
    study.cold_start_traces(splits_dir, teacher=None)                                              # 02
    study.evaluate_methods(methods, splits_dir, out_dir, base_model=...)                           # 05
    study.judge_methods(out_dir, splits_dir, judge={...})                                          # 06

Every stage reads and writes files under its folders (results are files), so a stage can be rerun
alone, and figures and tests read those files rather than notebook outputs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from clinical_r1.data import (EVAL_SPLITS, DataError, SplitSizes, load_benchmark, load_split, make_splits,
                              sample_traces_path, to_records, write_split_set)
from clinical_r1.errors import UsageError
from clinical_r1.files import read_json, read_jsonl, read_yaml, sha256_file, write_csv, write_json, write_jsonl

log = logging.getLogger(__name__)

EVAL_DIR = "eval"  # <splits_dir>/eval/<benchmark>.jsonl: the evaluation sets of this study
TRACE_FILES = {"sft": "traces_sft.jsonl", "dev": "traces_dev.jsonl"}


# ---------------------------------------------------------------------------------------------------
# 01: data
# ---------------------------------------------------------------------------------------------------


def prepare_data(out_dir: str | os.PathLike, train_benchmark: str = "medqa", train_path: str | None = None,
                 split_sizes: Mapping[str, int] | None = None, eval_benchmarks: Mapping[str, str | None] | None = None,
                 eval_limit: int | None = None, seed: int = 0, allow_overlap: bool = False,
                 eval_optional: bool = False, sft_traces: str | None = None, model: str | None = None,
                 trace_max_length: int | None = None) -> dict[str, Any]:
    """Load the training benchmark, split it, check decontamination and write the evaluation sets.

    ``eval_benchmarks`` maps a loader name to a local file (``None``: the hub copy). With ``eval_optional``
    a missing local file is skipped with a note (the offline demo); otherwise it is an error. Evaluation
    rows that cannot be scored are skipped and reported; odd but answerable rows (real benchmarks hold a
    few duplicate options) are kept, as in the published denominators, and listed as ``flagged_rows``.
    A ``test`` split size > 0 adds the held-out part of the training benchmark as the evaluation set
    named after it (the demo's in-domain set).

    ``sft_traces`` (a public-trace source, e.g. ``hub:hw-hwei/MedThoughts-8K`` or ``file:<path>``): the SFT half
    and the dev slice are drawn from the training questions with a kept trace (:mod:`clinical_r1.traces`,
    token-length cap ``trace_max_length`` with ``model``'s tokenizer), the RL half from the rest; the import
    report goes to ``<out_dir>/public_traces_report.json``.
    """
    out = Path(out_dir)
    train = load_benchmark(train_benchmark, path=train_path, split="train")
    evals: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    for name, path in (eval_benchmarks or {}).items():
        if path is not None and not Path(path).exists() and eval_optional:
            log.warning("evaluation set %s: %s not found; skipped (eval_optional)", name, path)
            reports[name] = {"skipped": f"{path} not found"}
            continue
        ds, report = load_benchmark(name, path=path, split=EVAL_SPLITS.get(name, "test"), strict=False)
        evals[name] = ds
        reports[name] = {"source": report.source, "total": report.total, "kept": report.kept,
                         "skipped": report.skipped, "flagged": report.flagged}
    for name, ds in evals.items():
        if len(ds) == 0:  # an evaluation set with no valid row is an error, not an empty file and a warning
            bad = reports[name]["skipped"][:3]
            raise DataError(f"evaluation set {name} ({reports[name]['source']}): no valid row; "
                            f"{len(reports[name]['skipped'])} skipped, e.g. {bad}")

    pool, trace_report = None, None
    if sft_traces:
        from clinical_r1.traces import sft_pool

        pool, trace_report = sft_pool(trace_source(sft_traces), train, evals, *trace_cap(model, trace_max_length))

    def fill(tmp: Path) -> dict[str, Any]:  # the split, the evaluation sets and the manifest: one set
        nonlocal evals
        manifest = make_splits(train, tmp, SplitSizes(**(split_sizes or {})), seed=seed, eval_sets=evals,
                               allow_overlap=allow_overlap, sft_from=pool)
        if trace_report is not None:
            write_json(trace_report, tmp / "public_traces_report.json")
        if manifest["sizes"]["test"]:
            evals = {train_benchmark: load_split(tmp, "test"), **evals}
            reports[train_benchmark] = {"source": str(out / "test.jsonl"), "total": manifest["sizes"]["test"]}
        eval_files = {}
        for name, ds in evals.items():
            rows = to_records(ds)[: eval_limit] if eval_limit else to_records(ds)
            path = write_jsonl(rows, tmp / EVAL_DIR / f"{name}.jsonl")
            eval_files[name] = {"path": f"{EVAL_DIR}/{path.name}", "count": len(rows), "sha256": sha256_file(path),
                                **{k: v for k, v in reports[name].items() if k not in ("skipped", "flagged")},
                                "skipped_rows": reports[name].get("skipped", []),
                                "flagged_rows": reports[name].get("flagged", [])}
        manifest["eval"] = eval_files
        manifest["eval_skipped"] = {n: r["skipped"] for n, r in reports.items() if isinstance(r.get("skipped"), str)}
        manifest["train"] = {"benchmark": train_benchmark, "path": train_path, "sft_traces": sft_traces}
        write_json(manifest, tmp / "manifest.json")
        return manifest

    return write_split_set(out, fill)


def eval_sets(splits_dir: str | os.PathLike) -> dict[str, Any]:
    """The evaluation sets written by :func:`prepare_data`, by benchmark name."""
    d = Path(splits_dir)
    manifest = read_json(d / "manifest.json")
    return {name: load_benchmark("jsonl", path=d / info["path"]) for name, info in manifest.get("eval", {}).items()}


# ---------------------------------------------------------------------------------------------------
# 02: cold-start traces
# ---------------------------------------------------------------------------------------------------


TRACE_PREFIXES = ("hub:", "file:")  # a teacher given as text: public traces from the hub or a local file


def trace_source(spec: str) -> str:
    """``hub:<dataset id>`` -> the id, ``file:<path>`` -> the path (public traces, :mod:`clinical_r1.traces`)."""
    if not isinstance(spec, str) or not spec.startswith(TRACE_PREFIXES):
        raise UsageError(f"public traces {spec!r}: write hub:<dataset id> (e.g. hub:hw-hwei/MedThoughts-8K) or "
                         f"file:<path to its JSONL>")
    return spec.split(":", 1)[1]


def trace_cap(model: str | None, max_length: int | None) -> tuple[Any, int | None]:
    """(the policy's tokenizer, max_length) for the token-length cap of imported traces; (None, None) without one."""
    if max_length is None:
        return None, None
    from clinical_r1.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(model)), int(max_length)


def bundled_traces(items: Sequence[Mapping[str, Any]], style: str = "full") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The project's exemplary traces for ``items`` (offline demo teacher), checked like teacher traces.

    ``style``: ``full`` (~340 tokens) or ``compact`` (~130 tokens; see :func:`clinical_r1.distill.compact_trace`)."""
    from clinical_r1.formats import CRPO
    from clinical_r1.rewards import get_preset, score

    traces = {t["id"]: t for t in read_jsonl(sample_traces_path(style))}
    kept, dropped = [], {"no_bundled_trace": [], "invalid_format": []}
    full = get_preset("crpo").max_total
    for it in items:
        t = traces.get(it["id"])
        if t is None:
            dropped["no_bundled_trace"].append(it["id"])
            continue
        if score(CRPO.render(t["dx"], t["conclusion"]), it["answer"], it["options"])["total"] != full:
            dropped["invalid_format"].append(it["id"])
            continue
        kept.append({"id": it["id"], "question": it["question"], "options": list(it["options"]), "answer": it["answer"],
                     "dx": t["dx"], "conclusion": t["conclusion"], "teacher": f"bundled-{style}", "source": it["source"]})
    report = {"teacher": f"bundled-{style}", "n_items": len(items), "kept": len(kept),
              "dropped": {k: len(v) for k, v in dropped.items()}, "dropped_ids": dropped}
    return kept, report


def cold_start_traces(splits_dir: str | os.PathLike, teacher: Mapping[str, Any] | str | None = None,
                      limit: int | None = None, splits: Sequence[str] = ("sft", "dev"),
                      trace_style: str = "full", model: str | None = None,
                      trace_max_length: int | None = None) -> dict[str, Any]:
    """Teacher traces for the SFT half (and the dev slice, for checkpoint selection).

    ``teacher=None`` uses the bundled exemplary traces in ``trace_style`` (offline demo); ``hub:<dataset id>``
    or ``file:<path>`` imports public DeepSeek-R1 traces (:mod:`clinical_r1.traces`; no API call), matched,
    filtered (token-length cap ``trace_max_length`` with ``model``'s tokenizer) and decontaminated against this
    study's evaluation sets; otherwise a :class:`clinical_r1.api.ChatConfig` mapping (OpenAI-compatible endpoint
    or local model) through :func:`clinical_r1.distill.distill`, with a resumable cache beside the traces.
    """
    from clinical_r1.distill import distill

    d = Path(splits_dir)
    reports = {}
    public = None
    if isinstance(teacher, str):
        from clinical_r1.traces import load_public_traces

        public = load_public_traces(trace_source(teacher))
        cap = trace_cap(model, trace_max_length)
    for split in splits:
        items = to_records(load_split(d, split))[: limit] if limit else to_records(load_split(d, split))
        out = d / TRACE_FILES[split]
        if teacher is None:
            kept, report = bundled_traces(items, trace_style)
            write_jsonl(kept, out)
        elif public is not None:
            from clinical_r1.traces import import_traces

            kept, report = import_traces(public, items, eval_sets(d), *cap, source=trace_source(teacher))
            write_jsonl(kept, out)
        else:
            report = distill(items, dict(teacher), out, d / f"teacher_cache_{split}.jsonl")
        reports[split] = report
    write_json(reports, d / "traces_report.json")
    return reports


# ---------------------------------------------------------------------------------------------------
# 05: generation and accuracy
# ---------------------------------------------------------------------------------------------------


def method_prompt(model: str, prompt: str | None) -> str:
    """The prompt kind of a method: as given, or the preset prompt recorded in the training run's folder."""
    if prompt:
        return prompt
    from clinical_r1.rewards import get_preset

    p = Path(model)
    for cand in (p / "config.yaml", p.parent / "config.yaml"):
        if cand.is_file():
            cfg = read_yaml(cand, "training config")
            return get_preset(cfg["reward"]["preset"]).prompt
    raise UsageError(f"method model {model}: prompt is null but no training config.yaml was found beside it; "
                     f"set prompt to one of crpo, grpo, cot, direct")


def method_model(model: str, base_model: str) -> str:
    """``base`` means the study's base model; a training run folder means its final LoRA adapter."""
    if model == "base":
        return base_model
    p = Path(model)
    if (p / "adapter" / "adapter_config.json").is_file():
        return str(p / "adapter")
    return model


def evaluate_methods(methods: Mapping[str, Mapping[str, Any]], splits_dir: str | os.PathLike,
                     out_dir: str | os.PathLike, base_model: str, n_samples: int = 1, temperature: float = 0.0,
                     max_new_tokens: int = 1024, batch_size: int = 8, n_boot: int = 2000, seed: int = 0,
                     benchmarks: Sequence[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Generate and score every method on every evaluation set (or on its ``benchmarks`` list), on the first
    ``limit`` questions of each set (None: all the split holds; the RL-effect probe may read more of them).

    A method's ``model`` is ``base`` (``base_model``), a model or run folder, or such a folder under ``{out}``
    (the recipes' placeholder, replaced by ``out_dir``, so one ``out_dir`` parameter moves a whole study).
    Its optional ``dtype`` loads the weights in that dtype on the transformers path (None: a trained adapter in
    its training dtype, a plain model in ``auto``). A method's sets are generated together
    (:func:`clinical_r1.generate.generate_sets`): ``batch_size`` questions per batch, drawn across the sets.
    Writes ``<out_dir>/<method>/<benchmark>.jsonl`` (+ ``.meta.json``), ``<benchmark>.metrics.json``
    (accuracy, majority vote, CIs) and ``<benchmark>.textmetrics.json`` (judge-free metrics). Finished
    generation files are reused (resumable), so rerunning only rescoring is cheap.
    """
    from clinical_r1.evaluate import evaluate
    from clinical_r1.generate import generate_sets, open_engine
    from clinical_r1.textmetrics import summarize_generations

    if limit is not None and limit < 1:
        raise UsageError(f"eval_limit={limit}: questions per evaluation set must be >= 1 (or None for all)")
    sets = eval_sets(splits_dir)
    if benchmarks:
        sets = {k: v for k, v in sets.items() if k in benchmarks}
    if limit:
        sets = {k: v.select(range(min(limit, len(v)))) if hasattr(v, "select") else to_records(v)[:limit]
                for k, v in sets.items()}
    rows = []
    for method, spec in methods.items():
        model = str(spec["model"]).replace("{out}", str(out_dir))
        model_ref = method_model(model, base_model)
        kind = method_prompt(model, spec.get("prompt"))
        only = spec.get("benchmarks")  # a method may be scored on some sets only (e.g. a prompt control)
        mine = {b: d for b, d in sets.items() if not only or b in only}
        if only and not mine:
            raise UsageError(f"method {method!r}: none of its benchmarks {list(only)} is an evaluation set "
                             f"({sorted(sets)})")
        # vLLM when installed on CUDA (the path builds its engine); `dtype`: the method's weights (None: as trained)
        engine = open_engine(model_ref, seed=seed, dtype=spec.get("dtype"))
        files = {bench: Path(out_dir) / method / f"{bench}.jsonl" for bench in mine}
        # all of the method's sets in shared batches (batch_size questions each), one file per set
        generate_sets(engine, None, [(ds, files[bench], bench) for bench, ds in mine.items()], prompt_kind=kind,
                      n=n_samples, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      seed=seed, model_name=model_ref)
        engine.close()
        for bench, ds in mine.items():
            gen = files[bench]
            res = evaluate(gen, ds, out_path=gen.with_suffix(".metrics.json"), n_boot=n_boot, seed=seed,
                           dataset_name=bench)
            text = summarize_generations(gen, ds)
            write_json({"method": method, "benchmark": bench, **text}, gen.with_suffix(".textmetrics.json"))
            o = res["overall"]
            rows.append({"method": method, "benchmark": bench, "prompt": kind, "n": o.get("n_questions"),
                         "accuracy": o.get("accuracy"), "ci_low": (o.get("accuracy_ci") or [None, None])[0],
                         "ci_high": (o.get("accuracy_ci") or [None, None])[1], "valid_ratio": o.get("valid_ratio"),
                         "format_compliance": text["format_compliance"]["mean"],
                         "cross_reference": text["cross_reference"]["mean"], "mean_tokens": text["n_tokens"]["mean"]})
    return rows


def probe_items(splits_dir: str | os.PathLike, benchmarks: Sequence[str] | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
    """The held-out probe questions of the RL effect: the first ``limit`` of each evaluation set in ``benchmarks``
    (None: every set), ids prefixed with their set (``medqa4/q17``) so sets never collide."""
    sets = eval_sets(splits_dir)
    names = list(benchmarks) if benchmarks else list(sets)
    unknown = [b for b in names if b not in sets]
    if unknown:
        raise UsageError(f"probe_benchmarks {unknown} are not evaluation sets of {splits_dir} ({sorted(sets)})")
    items = []
    for b in names:
        rows = to_records(sets[b])
        items += [{**r, "id": f"{b}/{r['id']}"} for r in (rows[:limit] if limit else rows)]
    return items


def measure_rl_effects(runs: Sequence[str], splits_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       benchmarks: Sequence[str] | None = None, limit: int | None = None, n: int = 4,
                       batch_size: int | None = None, seed: int = 0, n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """The held-out RL effect of each RL run folder in ``runs`` (``{out}`` is ``out_dir``) on the probe questions:
    :func:`clinical_r1.rleffect.measure_run` (each run against its own cold start, under its own prompt and
    reward). ``batch_size``: probe questions per generation batch (each with its ``n`` samples); None: all of
    them in one batch, which on CPU decodes 96 answers for about the price of 48 (``benchmarks/decode_cpu.py``).
    Returns run folder name -> effect."""
    from clinical_r1.rleffect import measure_run

    if batch_size is not None and batch_size < 1:
        raise UsageError(f"probe_batch_size={batch_size}: probe questions per batch must be >= 1 (or None for all)")
    items = probe_items(splits_dir, benchmarks, limit)
    batch_size = batch_size or max(1, len(items))
    out = {}
    for run in runs:
        path = Path(str(run).replace("{out}", str(out_dir)))
        out[path.name] = measure_run(path, items, n=n, batch_size=batch_size, seed=seed, n_boot=n_boot)
    return out


# ---------------------------------------------------------------------------------------------------
# 06: judge
# ---------------------------------------------------------------------------------------------------


def judge_methods(out_dir: str | os.PathLike, splits_dir: str | os.PathLike, judge: Mapping[str, Any],
                  metrics: str | Sequence[str] = "all", limit: int | None = None,
                  benchmarks: Sequence[str] | None = None, second_judge: Mapping[str, Any] | None = None,
                  reference_rewards: Sequence[str] = ("cross_reference", "consistency")) -> dict[str, Any]:
    """Judge every method's responses: ``<out_dir>/<method>/<benchmark>.judge.jsonl`` per file, plus
    ``judge_summary.csv`` and ``judge_reliability.csv`` (judge vs judge-free metrics, and judge vs a
    second judge when given). The judge cache lives in ``<out_dir>/judge_cache.jsonl``."""
    import pandas as pd

    from clinical_r1.generate import read_generations
    from clinical_r1.judge import (agreement, agreement_with_reference, attach_items, judge_responses,
                                   reference_values, summarize_judgements)

    out = Path(out_dir)
    sets = eval_sets(splits_dir)
    backend = _client_spec(judge)
    second = _client_spec(second_judge) if second_judge else None
    all_records, reliability = [], []
    for gen in sorted(out.glob("*/*.jsonl")):
        if gen.name.endswith((".judge.jsonl", ".judge2.jsonl")) or gen.stem not in sets:
            continue
        if benchmarks and gen.stem not in benchmarks:
            continue
        method = gen.parent.name
        rows = attach_items(read_generations(gen)[: limit] if limit else read_generations(gen), sets[gen.stem])
        rows = [{**r, "model": method} for r in rows]
        records = judge_responses(rows, metrics, backend, out / "judge_cache.jsonl")
        records = [{**r, "method": method, "benchmark": gen.stem} for r in records]
        write_jsonl(records, gen.with_suffix(".judge.jsonl"))
        all_records += records
        for ref in reference_rewards:
            df = agreement_with_reference(records, reference_values(rows, ref), metrics)
            reliability += [{"method": method, "benchmark": gen.stem, "against": ref, **r} for r in df.to_dict("records")]
        if second is not None:
            rec2 = judge_responses(rows, metrics, second, out / "judge_cache.jsonl")
            write_jsonl(rec2, gen.with_suffix(".judge2.jsonl"))
            df = agreement(records, rec2)
            reliability += [{"method": method, "benchmark": gen.stem, "against": "second_judge", **r}
                            for r in df.to_dict("records")]
    summary = summarize_judgements(all_records) if all_records else pd.DataFrame()
    if len(summary):
        write_csv(summary, out / "judge_summary.csv")
    rel = pd.DataFrame(reliability)
    write_csv(rel, out / "judge_reliability.csv")
    return {"records": len(all_records), "summary": summary, "reliability": rel}


def _client_spec(spec: Mapping[str, Any]) -> Any:
    """A local judge is loaded once and shared by every method; an API judge stays a config mapping."""
    from clinical_r1.api import ChatConfig, LocalBackend

    cfg = ChatConfig.from_dict(dict(spec))
    if cfg.backend != "local":
        return cfg
    return LocalBackend.from_path(cfg.model_path or cfg.model, gguf_file=cfg.gguf_file, name=cfg.model,
                                  max_new_tokens=cfg.max_new_tokens, judge_mode=cfg.judge_mode or "constrained")
