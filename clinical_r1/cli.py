"""The command line: every stage is a subcommand of ``python -m clinical_r1``.

    python -m clinical_r1 split    --train medqa:path/to/train.jsonl --eval medqa --eval medmcqa --out data/splits
    python -m clinical_r1 distill  --items data/splits/sft.jsonl --config teacher.yaml --out traces.jsonl --cache cache.jsonl
    python -m clinical_r1 traces   --from hw-hwei/MedThoughts-8K --items data/splits/sft.jsonl --out traces.jsonl  # no API bill
    python -m clinical_r1 sft      --config configs/cpu_demo_sft.yaml  [--set trainer.max_steps=4 ...]
    python -m clinical_r1 crpo     --config configs/cpu_demo_crpo.yaml [--set reward.preset=grpo --set reward.k=5]
    python -m clinical_r1 merge    --adapter results/cpu_demo_crpo/adapter --out results/cpu_demo_crpo/merged
    python -m clinical_r1 generate --model results/cpu_demo_crpo/adapter --benchmark medqa --data medqa.jsonl --out gen.jsonl
    python -m clinical_r1 evaluate gen.jsonl --benchmark medqa --data medqa.jsonl --out gen.metrics.json
    python -m clinical_r1 judge    --generations gen.jsonl --items medqa.jsonl --config judge.yaml --cache c.jsonl --out j.jsonl
    python -m clinical_r1 textmetrics gen.jsonl --benchmark medqa --data medqa.jsonl --out gen.textmetrics.json
    python -m clinical_r1 rl-effect results/demo/cold_start_crpo --splits results/demo/data --limit 12 --out probe48
    python -m clinical_r1 pipeline --recipe demo          # a whole study through papermill (also --grid, --gather)
    python -m clinical_r1 summary  results/demo           # (re)write results/demo/summary.{json,md}
    python -m clinical_r1 figures  results/demo --out figures
    python -m clinical_r1 verl-export data/splits/rl.jsonl data/verl/rl.parquet --prompt crpo
    python -m clinical_r1 verl-launch --recipe paper_3b --splits data/splits --out results/verl_paper_3b
    python -m clinical_r1 chat     --model deepseek-chat --base-url https://api.deepseek.com "a question"
    python -m clinical_r1 check-config configs/*.yaml     # validate training configs without training

Every subcommand ends the same way: exit 0 when done; 1 when the job ran but produced nothing usable
(:class:`~clinical_r1.errors.JobFailed`, a failed notebook); 2 for a user error (any other
:class:`~clinical_r1.errors.ClinicalR1Error`, a missing or wrong path), printed as one redacted line naming the
file, row or key; the traceback only with ``-v``. Add a stage by writing ``add_<name>(sub)``, which registers
its arguments and returns the function to call with the parsed namespace, and listing it in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from clinical_r1.errors import ClinicalR1Error, JobFailed
from clinical_r1.redact import redact

log = logging.getLogger("clinical_r1")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
USER_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

Handler = Callable[[argparse.Namespace], Any]


# ---------------------------------------------------------------------------------------------------
# Logging and exit codes
# ---------------------------------------------------------------------------------------------------


def setup_logging(verbose: bool = False, force: bool = False, level: int | None = None) -> None:
    """The package's one logging setup: INFO (DEBUG with ``verbose``, or ``level``) with timestamps, quiet HTTP
    libraries. Notebooks call it with ``force=True`` (Jupyter installs a handler of its own first)."""
    level = level if level is not None else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT, force=force)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def one_line(e: BaseException) -> str:
    text = " | ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    return redact(f"{type(e).__name__}: {text}")


def run_cli(job: Callable[[], Any], verbose: bool = False) -> int:
    """Run ``job`` and turn its failure into an exit code: 1 for a failed job or stage, 2 for a user error."""
    try:
        job()
    except JobFailed as e:  # its message as written: a failed stage names its cell and executed notebook
        log.error("%s", redact(str(e)), exc_info=verbose)
        return 1
    except (ClinicalR1Error, *USER_OS_ERRORS) as e:
        log.error("%s", one_line(e), exc_info=verbose)
        return 2
    return 0


# ---------------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------------


def _name_path(spec: str) -> tuple[str, str | None]:
    name, _, path = spec.partition(":")
    return name, path or None


def _csv(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training config (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, dotted for sections (trainer.max_steps=2); repeatable")


def _add_benchmark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", required=True,
                   help="medqa (5 options, the paper's), medqa4, medmcqa, medxpertqa, pubmedqa, jsonl or sample")
    p.add_argument("--data", default=None, help="local benchmark file (default: the hub copy)")
    p.add_argument("--split", default=None, help="hub split (default: the evaluation split, e.g. MedMCQA validation)")
    p.add_argument("--limit", type=int, default=None, help="the first N questions")


def _benchmark(a: argparse.Namespace):
    from clinical_r1.data import load_benchmark

    return load_benchmark(a.benchmark, path=a.data, split=a.split, limit=a.limit)


def add_split(sub: Any) -> Handler:
    p = sub.add_parser("split", help="the paper's split (SFT half, RL half, dev) + evaluation sets + decontamination")
    p.add_argument("--train", required=True, metavar="NAME[:PATH]", help="training benchmark, e.g. medqa or medqa:train.jsonl")
    p.add_argument("--eval", action="append", default=[], metavar="NAME[:PATH]", help="evaluation set; repeatable")
    p.add_argument("--out", required=True, help="output folder (sft/rl/dev.jsonl, eval/, manifest.json)")
    p.add_argument("--sizes", default="5000,5000,178", help="sft,rl,dev[,test] (default: the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-limit", type=int, default=None, help="keep the first N items of each evaluation set")
    p.add_argument("--allow-overlap", action="store_true", help="proceed despite train/eval overlap (recorded)")
    p.add_argument("--sft-traces", default=None, metavar="hub:ID|file:PATH",
                   help="draw the SFT half and dev from questions with a kept public trace (hub:hw-hwei/MedThoughts-8K)")
    p.add_argument("--model", default=None, help="the policy, whose tokenizer caps the traces' length (--max-length)")
    p.add_argument("--max-length", type=int, default=None, help="SFT max length in tokens for --sft-traces")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.errors import DataError
        from clinical_r1.study import prepare_data

        try:
            sizes = dict(zip(("sft", "rl", "dev", "test"), (int(x) for x in a.sizes.split(","))))
        except ValueError:
            raise DataError(f"--sizes {a.sizes!r}: expected integers sft,rl,dev[,test]") from None
        train, path = _name_path(a.train)
        return prepare_data(a.out, train_benchmark=train, train_path=path, split_sizes=sizes,
                            eval_benchmarks=dict(_name_path(e) for e in a.eval), eval_limit=a.eval_limit,
                            seed=a.seed, allow_overlap=a.allow_overlap, sft_traces=a.sft_traces, model=a.model,
                            trace_max_length=a.max_length)["files"]

    return run


def add_distill(sub: Any) -> Handler:
    p = sub.add_parser("distill", help="cold-start <dx>/<conclusion> traces from a teacher model")
    p.add_argument("--items", required=True, help="JSONL of records (id, question, options, answer, source)")
    p.add_argument("--config", required=True, help="YAML mapping of ChatConfig fields, plus prompt_kind")
    p.add_argument("--out", required=True, help="output JSONL of kept traces")
    p.add_argument("--cache", required=True, help="resumable JSONL cache of teacher answers")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--report", default=None, help="write the report as JSON here (default: <out>.report.json)")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.errors import ConfigError
        from clinical_r1.distill import distill
        from clinical_r1.files import read_jsonl, read_yaml, write_json
        from clinical_r1.locks import exclusive

        config = read_yaml(a.config, "teacher config", ConfigError)
        with exclusive(a.out, "distilled traces"):  # one writer per output (the cache locks itself: api)
            report = distill(read_jsonl(a.items), config, a.out, a.cache, limit=a.limit)
            report_path = write_json(report, a.report or f"{a.out}.report.json")
        log.info("report written to %s", report_path)
        failed = report["dropped"].get("api_failure", 0)
        where = f"dropped_ids.api_failure in {report_path}"
        if report["n_items"] and failed == report["n_items"]:
            raise JobFailed(f"all {failed} teacher requests failed ({where})")
        if failed:
            log.warning("%d of %d teacher requests failed (%s); rerun to retry them (answers are cached)", failed,
                        report["n_items"], where)

    return run


def add_traces(sub: Any) -> Handler:
    p = sub.add_parser("traces", help="cold-start traces from public DeepSeek-R1 traces (MedThoughts-8K): no API bill")
    p.add_argument("--from", dest="source", default="hw-hwei/MedThoughts-8K",
                   help="hub dataset id or local JSONL in its schema (default: hw-hwei/MedThoughts-8K, GPL-3.0)")
    p.add_argument("--items", required=True, help="JSONL of records to match (the SFT half: split --sft-traces)")
    p.add_argument("--out", required=True, help="output JSONL of kept traces (distill's schema)")
    p.add_argument("--eval", action="append", default=None, metavar="NAME[:PATH]",
                   help="evaluation set to decontaminate against; repeatable (default: the hub's medqa, medqa4, "
                        "medmcqa, medxpertqa)")
    p.add_argument("--model", default=None, help="the policy, whose tokenizer counts the tokens (with --max-length)")
    p.add_argument("--max-length", type=int, default=None, help="drop traces whose SFT row exceeds this many tokens")
    p.add_argument("--min-match-rate", type=float, default=None, help="fail below this match rate (default 0.9)")
    p.add_argument("--report", default=None, help="write the report as JSON here (default: <out>.report.json)")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.data import EVAL_SPLITS, load_benchmark
        from clinical_r1.files import read_jsonl, write_json, write_jsonl
        from clinical_r1.locks import exclusive
        from clinical_r1.study import trace_cap
        from clinical_r1.traces import MIN_MATCH_RATE, import_traces, load_public_traces

        evals = {}
        for spec in a.eval or ["medqa", "medqa4", "medmcqa", "medxpertqa"]:
            name, path = _name_path(spec)
            evals[name] = load_benchmark(name, path=path, split=EVAL_SPLITS.get(name, "test"), strict=False)[0]
        rate = MIN_MATCH_RATE if a.min_match_rate is None else a.min_match_rate
        with exclusive(a.out, "imported traces"):
            kept, report = import_traces(load_public_traces(a.source), read_jsonl(a.items), evals,
                                         *trace_cap(a.model, a.max_length), min_match_rate=rate, source=a.source)
            write_jsonl(kept, a.out)
            report_path = write_json(report, a.report or f"{a.out}.report.json")
        log.info("kept %d of %d traces; report written to %s", report["kept"], report["n_traces"], report_path)
        if not kept:
            raise JobFailed(f"no trace kept ({report_path})")

    return run


def training_stage(stage: str, help: str) -> Callable[[Any], Handler]:
    """The registrar of a training subcommand (sft, crpo): a training config plus ``--set`` overrides, run by
    ``clinical_r1.<stage>.run_<stage>`` (imported only when the subcommand runs: Unsloth must come first)."""

    def add(sub: Any) -> Handler:
        _add_config_args(sub.add_parser(stage, help=help))

        def run(a: argparse.Namespace) -> Any:
            return getattr(importlib.import_module(f"clinical_r1.{stage}"), f"run_{stage}")(a.config, a.overrides)

        return run

    return add


def add_merge(sub: Any) -> Handler:
    p = sub.add_parser("merge", help="merge a trained LoRA adapter (and the cold-start adapter under it) into its base")
    p.add_argument("--adapter", required=True, help="adapter or checkpoint-N folder (adapter_config.json)")
    p.add_argument("--out", required=True, help="output folder for the merged model")
    p.add_argument("--base", default=None, help="base model (default: the one the adapter was trained on)")
    p.add_argument("--dtype", default=None, help="auto | float32 | bfloat16 | float16 (default: the training dtype)")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.models import merge_lora

        return merge_lora(a.adapter, a.out, base=a.base, dtype=a.dtype)

    return run


def add_generate(sub: Any) -> Handler:
    from clinical_r1.prompts import PROMPT_KINDS

    p = sub.add_parser("generate", help="N answers per question, saved as resumable JSONL")
    p.add_argument("--model", required=True, help="model, merged model, CRPO checkpoint or LoRA adapter folder")
    _add_benchmark_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--prompt", default="crpo", choices=PROMPT_KINDS)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=("auto", "vllm", "transformers"))
    p.add_argument("--model-name", default=None)

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.generate import generate, read_generations

        ds = _benchmark(a)
        if len(ds) == 0:
            raise JobFailed(f"{a.data or a.benchmark}: no questions to answer; no generation written to {a.out}")
        out = generate(a.model, None, ds, a.out, prompt_kind=a.prompt, n=a.n, temperature=a.temperature,
                       max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, seed=a.seed,
                       dataset_name=a.benchmark, model_name=a.model_name, top_p=a.top_p, backend=a.backend)
        written = len(read_generations(out))
        if written == 0:
            raise JobFailed(f"no generation written to {out}")
        log.info("%s: %d answers (%d questions x %d samples)", out, written, len(ds), a.n)
        return out

    return run


def add_evaluate(sub: Any) -> Handler:
    from clinical_r1.evaluate import N_BOOT

    # "%%": argparse formats help strings with %
    p = sub.add_parser("evaluate", help="accuracy (all / valid), majority vote, subgroups, 95%% bootstrap CIs")
    p.add_argument("generations", help="generations JSONL written by `generate`")
    p.add_argument("--compare", default=None, help="a second generations file: paired comparison instead")
    _add_benchmark_args(p)
    p.add_argument("--out", default=None, help="results JSON (written atomically)")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-missing", action="store_true", help="count missing samples as invalid answers")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.evaluate import EvaluationError, compare, evaluate
        from clinical_r1.files import write_json

        ds = _benchmark(a)
        if len(ds) == 0:
            raise EvaluationError(f"{a.data or a.benchmark}: the evaluation set has no valid row; nothing to score")
        if a.compare:
            res = compare(a.generations, a.compare, ds, n_boot=a.n_boot, seed=a.seed, dataset_name=a.benchmark,
                          allow_missing=a.allow_missing)
            if a.out:
                write_json(res, a.out)
        else:
            res = evaluate(a.generations, ds, out_path=a.out, n_boot=a.n_boot, seed=a.seed,
                           dataset_name=a.benchmark, allow_missing=a.allow_missing)
        log.info("%s", json.dumps(res.get("overall", res), indent=2, default=str))

    return run


def add_judge(sub: Any) -> Handler:
    from clinical_r1.api import JUDGE_MODES

    p = sub.add_parser("judge", help="the eight LLM-as-judge metrics (OpenAI-compatible endpoint or local model)")
    p.add_argument("--generations", required=True, help="JSONL from `generate` (id, text, model, sample)")
    p.add_argument("--items", required=True, help="JSONL of the benchmark records (id, question, options, answer)")
    p.add_argument("--config", required=True, help="YAML mapping of ChatConfig fields for the judge")
    p.add_argument("--metrics", default="all", help="all, cognitive, faithfulness or a comma-separated list")
    p.add_argument("--cache", required=True)
    p.add_argument("--out", required=True, help="records JSONL; the summary goes to <out>.summary.csv")
    p.add_argument("--k", type=int, default=1, help="judge samples to average (needs temperature > 0)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--mode", choices=JUDGE_MODES, default=None,
                   help="generate or constrained (default: the config's judge_mode; constrained for a local judge)")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.errors import ConfigError
        from clinical_r1.data import load_benchmark
        from clinical_r1.files import read_jsonl, read_yaml, write_csv, write_jsonl
        from clinical_r1.judge import METRIC_GROUPS, attach_items, judge_responses, summarize_judgements
        from clinical_r1.locks import exclusive

        config = read_yaml(a.config, "judge config", ConfigError)
        metrics = a.metrics if a.metrics in METRIC_GROUPS else a.metrics.split(",")
        items = load_benchmark("jsonl", path=a.items)  # validated here: the judge trusts the gold letter
        rows = attach_items(read_jsonl(a.generations), items)
        with exclusive(a.out, "judge output"):  # one writer per output file (the cache locks itself: api)
            records = judge_responses(rows, metrics, config, a.cache, k=a.k, temperature=a.temperature, mode=a.mode)
            write_jsonl(records, a.out)
            table = summarize_judgements(records)
            write_csv(table, f"{a.out}.summary.csv")
        log.info("judge summary:\n%s", table.to_string(index=False))
        failed = [r for r in records if r["status"] == "api_failure"]
        where = f"records with status api_failure in {a.out}"
        if records and len(failed) == len(records):
            raise JobFailed(f"all {len(records)} judge requests failed ({where}; first error: {failed[0]['error']})")
        if failed:
            log.warning("%d of %d judge requests failed (%s); rerun to retry them (answers are cached)", len(failed),
                        len(records), where)
        else:
            log.info("judged %d response-metric pairs into %s", len(records), a.out)

    return run


def add_textmetrics(sub: Any) -> Handler:
    from clinical_r1.formats import FORMATS

    p = sub.add_parser("textmetrics", help="judge-free text metrics: format compliance, citations, rejected distractors")
    p.add_argument("generations")
    _add_benchmark_args(p)
    p.add_argument("--fmt", default=None, choices=sorted(FORMATS))
    p.add_argument("--out", default=None)

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.files import write_json
        from clinical_r1.textmetrics import summarize_generations

        res = summarize_generations(a.generations, _benchmark(a), fmt=a.fmt)
        if a.out:
            write_json(res, a.out)
        log.info("%s", json.dumps(res, indent=2))

    return run


def add_rl_effect(sub: Any) -> Handler:
    from clinical_r1.evaluate import N_BOOT

    p = sub.add_parser("rl-effect", help="an RL run's held-out effect: its cold start vs its trained policy, sampled "
                                         "and scored with the run's own rewards, paired by question, 95%% CIs")
    p.add_argument("run", help="an RL run folder (config.yaml and adapter/, as `crpo` writes it)")
    p.add_argument("--splits", required=True, help="a split folder (`split` or notebook 01): its evaluation sets")
    p.add_argument("--benchmarks", nargs="+", default=None, help="evaluation sets to probe (default: all of them)")
    p.add_argument("--limit", type=int, default=None, help="the first N questions of each set (default: all)")
    p.add_argument("--n", type=int, default=4, help="samples per question and policy")
    p.add_argument("--seed", type=int, default=0, help="base seed of the samples (the same for both policies)")
    p.add_argument("--batch-size", type=int, default=None, help="questions per generation batch (default: all)")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--out", default=None, help="folder for the answers and effect.json (default: <run>/rl_effect)")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.errors import UsageError
        from clinical_r1.rleffect import SHAPING, measure_run
        from clinical_r1.study import probe_items

        if (a.limit is not None and a.limit < 1) or a.n < 1 or (a.batch_size is not None and a.batch_size < 1):
            raise UsageError(f"--limit {a.limit}, --n {a.n} and --batch-size {a.batch_size} must be >= 1")
        items = probe_items(a.splits, a.benchmarks, a.limit)
        e = measure_run(a.run, items, n=a.n, batch_size=a.batch_size or len(items), seed=a.seed, n_boot=a.n_boot,
                        out_dir=a.out)
        for name, c in e["components"].items():
            log.info("%-26s %.3f -> %.3f  %+.3f [%+.3f, %+.3f]%s", name, c["before"], c["after"], c["diff"], *c["ci"],
                     "  <- the target: CI above 0" if name == SHAPING else "")

    return run


def add_pipeline(sub: Any) -> Handler:
    from clinical_r1.pipeline import NOTEBOOKS_DIR

    p = sub.add_parser("pipeline", help="a recipe's notebooks through papermill, an ablation grid, or its summary")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--recipe", help="configs/recipes/<name>.yaml (with --grid: the base recipe)")
    what.add_argument("--grid", help="an ablation grid, e.g. configs/ablations.yaml")
    what.add_argument("--gather", metavar="DIR", help="rebuild DIR/summary.csv from finished grid runs")
    p.add_argument("--base-recipe", default=None, help="with --grid: the recipe whose parameters the runs start from")
    p.add_argument("--recipe-out", default=None, help="with --grid: that recipe's run folder if not its default")
    p.add_argument("--only", default=None, help="recipe stages to run, e.g. 01,04")
    p.add_argument("--out", default=None, help="run folder (default: the recipe's or grid's 'out')")
    p.add_argument("--force", action="store_true", help="rerun stages / runs already done")
    p.add_argument("--dry-run", action="store_true", help="show what would run; execute nothing")
    p.add_argument("--seeds", default=None, help="grid: seeds to run instead of the file's, e.g. 0,1")
    p.add_argument("--variants", default=None, help="grid: only these variants (comma-separated)")
    p.add_argument("--groups", default=None, help="grid: only variants in these groups, e.g. 2x2,k")
    p.add_argument("--keep-going", action="store_true", help="grid: run the remaining runs after a failure")
    p.add_argument("--notebooks", default=str(NOTEBOOKS_DIR), help="folder of the numbered notebooks")
    p.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")

    def run(a: argparse.Namespace) -> None:
        progress = not a.no_progress
        if a.gather:
            from clinical_r1.grid import SUMMARY_FILE, gather

            df = gather(a.gather)
            sys.stdout.write(f"{len(df)} rows -> {Path(a.gather) / SUMMARY_FILE}\n")
        elif a.grid:
            from clinical_r1.grid import run_grid

            seeds = [int(s) for s in _csv(a.seeds)] if a.seeds else None
            report = run_grid(a.grid, out=a.out, recipe=a.base_recipe, seeds=seeds, variants=_csv(a.variants),
                              groups=_csv(a.groups), force=a.force, dry_run=a.dry_run, keep_going=a.keep_going,
                              notebooks_dir=a.notebooks, progress=progress, timeout=a.timeout,
                              recipe_out=a.recipe_out)
            sys.stdout.write("\n".join(f"{r['run_id']:<44}{r['status']:<9}{r['groups']}" for r in report) + "\n")
        else:
            from clinical_r1.pipeline import run_recipe, summary_table
            from clinical_r1.summary import SUMMARY_MD

            status = run_recipe(a.recipe, out=a.out, only=_csv(a.only), force=a.force, dry_run=a.dry_run,
                                notebooks_dir=a.notebooks, progress=progress, timeout=a.timeout)
            if not a.dry_run:
                sys.stdout.write(summary_table(status["out"]) + "\n\n")
                sys.stdout.write((Path(status["out"]) / SUMMARY_MD).read_text(encoding="utf-8"))

    return run


def add_summary(sub: Any) -> Handler:
    p = sub.add_parser("summary", help="(re)write a study folder's summary.json and summary.md, print the .md")
    p.add_argument("out_dir", help="a study folder written by the pipeline, e.g. results/demo")
    p.add_argument("--splits", default=None, help="its data folder (default: <out_dir>/data)")

    def run(a: argparse.Namespace) -> None:
        from clinical_r1.pipeline import PipelineError
        from clinical_r1.summary import SUMMARY_MD, write_summary

        if not (Path(a.out_dir) / "pipeline.json").is_file():
            raise PipelineError(f"{a.out_dir}: not a study folder (no pipeline.json); run "
                                "`python -m clinical_r1 pipeline --recipe ...`")
        write_summary(a.out_dir, a.splits)
        sys.stdout.write((Path(a.out_dir) / SUMMARY_MD).read_text(encoding="utf-8"))

    return run


def add_figures(sub: Any) -> Handler:
    p = sub.add_parser("figures", help="every figure whose inputs exist, PNG + PDF")
    p.add_argument("results", help="a run's results folder, e.g. results/demo")
    p.add_argument("--out", default="figures", help="folder for the PNG and PDF files")
    p.add_argument("--paper", default=None, help="paper reference JSON (default results/paper_reference.json)")
    p.add_argument("--ablations", default=None, help="ablation summary.csv: the 2x2 arms and the k trade-off")

    def run(a: argparse.Namespace) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        from clinical_r1.plots import make_all

        written = make_all(a.results, a.out, paper_reference=a.paper, ablation_summary=a.ablations)
        return f"{len(written)} figures in {a.out}"

    return run


def add_verl_export(sub: Any) -> Handler:
    from clinical_r1.prompts import PROMPT_KINDS
    from clinical_r1.rewards import PRESETS

    p = sub.add_parser("verl-export", help="a split as verl's RL parquet, scored by clinical_r1.verl_reward")
    p.add_argument("split_jsonl", help="a split file in the record schema (id, question, options, answer, ...)")
    p.add_argument("out_parquet")
    p.add_argument("--prompt", default="crpo", choices=PROMPT_KINDS)
    p.add_argument("--data-source", default="clinical_r1/medqa")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS))

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.verl_reward import to_verl_parquet

        return to_verl_parquet(a.split_jsonl, a.out_parquet, prompt_kind=a.prompt, data_source=a.data_source,
                               preset=a.preset)

    return run


def add_verl_launch(sub: Any) -> Handler:
    p = sub.add_parser("verl-launch", help="the paper's multi-GPU run in verl 0.9: parquet prompts + launch.sh")
    p.add_argument("--recipe", default="paper_3b", help="paper_3b (the authors' 8-GPU run) or smoke (1 GPU, 0.5B, 3 steps)")
    p.add_argument("--out", required=True, help="output folder (data/*.parquet, launch.sh)")
    p.add_argument("--splits", default=None, help="folder with the RL and dev splits (default: the config's data.path)")
    p.add_argument("--config", default=None, help="a CRPO training config instead of the recipe's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training-config key (reward.preset=grpo); repeatable")
    p.add_argument("--lora", action="store_true", help="train LoRA (the config's lora section) instead of all parameters")
    p.add_argument("--gdpo", action="store_true",
                   help="ablation: verl's GDPO advantage (normalise each component, then sum); not the paper's method")
    p.add_argument("--data-source", default="clinical_r1/medqa")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.verl_launch import write_launch

        return write_launch(a.out, recipe=a.recipe, splits=a.splits, config=a.config, config_overrides=a.overrides,
                            lora=a.lora, gdpo=a.gdpo, data_source=a.data_source)

    return run


def add_chat(sub: Any) -> Handler:
    p = sub.add_parser("chat", help="send one chat request through clinical_r1.api (cached, retried); prints JSON")
    p.add_argument("prompt")
    p.add_argument("--model", required=True)
    p.add_argument("--base-url", default=None)
    p.add_argument("--key-env", default="OPENAI_API_KEY", help="name of the environment variable holding the key")
    p.add_argument("--cache", default=None, help="JSONL cache path (default: none)")

    def run(a: argparse.Namespace) -> None:
        from clinical_r1.api import ChatConfig, ChatRequest, make_client

        client = make_client(ChatConfig(model=a.model, base_url=a.base_url, api_key_env=a.key_env), a.cache)
        res = client.complete([ChatRequest("cli", [{"role": "user", "content": a.prompt}], purpose="cli")])[0]
        out = {"content": res.content, "reasoning_content": res.reasoning_content, "error": res.error,
               "summary": client.summary()}
        sys.stdout.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        if res.error:
            raise JobFailed(f"the request failed: {res.error}")

    return run


def add_check_config(sub: Any) -> Handler:
    p = sub.add_parser("check-config", help="validate training configs and build their TRL configs (no training)")
    p.add_argument("configs", nargs="+")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cpu-safe", action="store_true", help="add use_cpu=True so GPU configs (bf16) build on a CPU-only machine")
    p.add_argument("--check-paths", action="store_true",
                   help="a missing input path is an error (default: a warning; it may be an earlier stage's output)")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.config import check_paths, config_warnings, load_config, trainer_args

        for path in a.configs:
            cfg = load_config(path, a.overrides)
            args = trainer_args(cfg, cpu_safe=a.cpu_safe)
            for missing in check_paths(cfg, missing_ok=not a.check_paths):
                log.warning("%s: %s", path, missing)
            for warning in config_warnings(cfg):
                log.warning("%s: %s", path, warning)
            log.info("%s: ok (%s, stage %s)", path, type(args).__name__, cfg["stage"])
        return len(a.configs)

    return run


# name -> registrar, in the order of the study
def add_gpu_stack(sub: Any) -> Handler:
    p = sub.add_parser("gpu-stack", help="the GPU stack (requirements file) this machine's NVIDIA driver and GPU can run")
    p.add_argument("action", nargs="?", default="choose", choices=("choose", "resolve"),
                   help="choose: read nvidia-smi and print the choice; resolve: pip --dry-run both files against PyPI")
    p.add_argument("--python", action="append", help="resolve: CPython version(s) (default 3.11 and 3.12)")

    def run(a: argparse.Namespace) -> None:
        from clinical_r1 import gpu_stack

        if a.action == "resolve":
            for py in a.python or ["3.11", "3.12"]:
                for stack in gpu_stack.STACKS:
                    print(json.dumps(gpu_stack.resolve(stack, py)), flush=True)
            return
        gpus = gpu_stack.query_gpus()
        stack, why = gpu_stack.choose(gpus)
        print(gpu_stack.describe(stack, gpus, why))

    return run


SUBCOMMANDS: dict[str, Callable[[Any], Handler]] = {
    "split": add_split,
    "distill": add_distill,
    "traces": add_traces,
    "sft": training_stage("sft", "cold-start LoRA SFT on reasoning traces"),
    "crpo": training_stage("crpo", "CRPO/GRPO reinforcement learning with a reward preset"),
    "merge": add_merge,
    "generate": add_generate,
    "evaluate": add_evaluate,
    "judge": add_judge,
    "textmetrics": add_textmetrics,
    "rl-effect": add_rl_effect,
    "pipeline": add_pipeline,
    "summary": add_summary,
    "figures": add_figures,
    "verl-export": add_verl_export,
    "verl-launch": add_verl_launch,
    "chat": add_chat,
    "check-config": add_check_config,
    "gpu-stack": add_gpu_stack,
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(prog="python -m clinical_r1", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {name: register(sub) for name, register in SUBCOMMANDS.items()}
    for p in sub.choices.values():  # -v also after the subcommand; SUPPRESS keeps a -v given before it
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging; tracebacks")
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when done, 1 when the job failed, 2 for a user error; a handler's answer (a run folder, a model
    folder) is printed for shell scripts."""
    parser, handlers = build_parser()
    a = parser.parse_args(argv)
    setup_logging(a.verbose)
    result: list[Any] = []
    code = run_cli(lambda: result.append(handlers[a.command](a)), verbose=a.verbose)
    if code == 0 and result and result[0] is not None:
        print(result[0])
    return code
