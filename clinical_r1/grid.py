"""The ablation grid: a YAML list of overrides, each crossed with the seeds and run through papermill.

    python -m clinical_r1 pipeline --grid configs/ablations.yaml --dry-run            # list the runs
    python -m clinical_r1 pipeline --grid configs/ablations.yaml --base-recipe t4 --groups 2x2 --seeds 0
    python -m clinical_r1 pipeline --gather results/ablations        # rebuild results/ablations/summary.csv

    from clinical_r1.grid import expand_grid, run_grid, gather
    runs = expand_grid("configs/ablations.yaml")                    # list[Run], stable run ids
    run_grid("configs/ablations.yaml", groups=["k"], seeds=[0])
    df = gather("results/ablations")                                # tidy; also written as summary.csv

Grid (``configs/ablations.yaml``): ``name, description, out, notebooks`` (stage keys run per run, in
order), ``base_recipe`` (optional: start from that recipe's ``common`` + those stages' parameters),
``base`` (parameters for every run), ``seed_parameter`` + ``seeds`` (crossed with the variants) and
``variants``: a list of ``{name, groups, overrides, sweep}``; ``sweep: {k: [1, 5, 20]}`` expands one
variant into one per value, named from ``name`` (``crpo-k{k}`` → ``crpo-k1``). Placeholders as in a recipe
(:mod:`clinical_r1.pipeline`); ``{recipe_out}`` is the base recipe's run folder (the splits and the SFT adapter the
runs start from), ``{run_id}`` the grid run id.

Each run executes its notebooks with :func:`clinical_r1.pipeline.run_stages` into ``results/ablations/<run_id>/``
and is finished when its ``done.json`` exists (written last); a finished run is skipped, and one finished with
other parameters is an error unless ``--force``. :func:`gather` reads every finished run with
:mod:`clinical_r1.results` into one tidy ``summary.csv``; it needs no matplotlib.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from clinical_r1.files import (REPO_ROOT, canonical_json, check_keys, parameter_mapping, read_jsonl, read_yaml,
                               sha256_text, write_csv, write_json)
from clinical_r1.pipeline import (KERNEL, NOTEBOOKS_DIR, STAGE_KEY, Layer, PipelineError, Recipe, StageError, StagePlan,
                                  check_secrets, check_used, declared_parameters, load_recipe, resolve_notebook,
                                  run_stages, stage_parameters)
from clinical_r1.records import DONE_FILE, STATUS_FILE, provenance, read_status, repo_relative, utc_now

log = logging.getLogger(__name__)

GRID_FILE = REPO_ROOT / "configs" / "ablations.yaml"
SUMMARY_FILE = "summary.csv"
GRID_KEYS = {"name", "description", "out", "notebooks", "base_recipe", "base", "seed_parameter", "seeds", "variants"}
VARIANT_KEYS = {"name", "groups", "overrides", "sweep", "description"}


# ---------------------------------------------------------------------------------------------------
# The grid file and its runs
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One ablation run: a variant crossed with a seed."""

    run_id: str  # <variant>-s<seed>-<8 hex of the overrides and seed>; stable across edits elsewhere in the grid
    variant: str
    seed: int | None
    groups: tuple[str, ...]
    overrides: dict[str, Any] = field(hash=False)
    settings: dict[str, Any] = field(hash=False)  # flat: base recipe + grid base + overrides + seed (later wins)


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    out: str
    notebooks: tuple[str, ...]
    base_recipe: str | None
    base: dict[str, Any]
    seed_parameter: str
    seeds: tuple[int | None, ...]
    variants: tuple[dict[str, Any], ...]

    def out_dir(self) -> Path:
        p = Path(self.out)
        return p if p.is_absolute() else REPO_ROOT / p


def load_grid(path: str | os.PathLike = GRID_FILE) -> Grid:
    """Read and check a grid file (known keys, variant names, sweeps, no secrets)."""
    p = Path(path)
    data = read_yaml(p, "grid", PipelineError)
    check_keys(data, GRID_KEYS, str(p), PipelineError)
    nbs = data.get("notebooks")
    if not isinstance(nbs, list) or not nbs or not all(STAGE_KEY.match(str(n)) for n in nbs):
        raise PipelineError(f"{p}: 'notebooks' must list stage keys such as ['04', '05'], got {nbs!r}")
    seeds = data.get("seeds")
    if seeds is None:
        seeds = [None]
    if not isinstance(seeds, list) or not seeds or not all(s is None or isinstance(s, int) for s in seeds):
        raise PipelineError(f"{p}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    variants = data.get("variants")
    if not isinstance(variants, list) or not variants:
        raise PipelineError(f"{p}: 'variants' must be a non-empty list")
    for i, v in enumerate(variants):
        where = f"{p}: variants[{i}]"
        if not isinstance(v, dict) or not v.get("name"):
            raise PipelineError(f"{where}: each variant is a mapping with at least a 'name'")
        check_keys(v, VARIANT_KEYS, where, PipelineError)
        overrides = parameter_mapping(v.get("overrides"), f"{where} ({v['name']}): overrides", PipelineError)
        check_secrets(overrides, f"{where} ({v['name']})")
        sweep = parameter_mapping(v.get("sweep"), f"{where}: sweep", PipelineError)
        if any(not isinstance(vals, list) or not vals for vals in sweep.values()):
            raise PipelineError(f"{where}: each sweep entry must be a non-empty list of values")
    base = parameter_mapping(data.get("base"), f"{p}: base", PipelineError)
    check_secrets(base, f"{p}: base")
    return Grid(name=str(data.get("name") or p.stem), path=p, out=str(data.get("out") or "results/ablations"),
                notebooks=tuple(str(n) for n in nbs), base_recipe=data.get("base_recipe"), base=base,
                seed_parameter=str(data.get("seed_parameter") or "seed"), seeds=tuple(seeds),
                variants=tuple(variants))


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-")
    if not s:
        raise PipelineError(f"variant name {name!r} has no letters or digits")
    return s


def run_id(variant: str, overrides: Mapping[str, Any], seed: int | None) -> str:
    """``<variant>-s<seed>-<sha256(overrides, seed)[:8]>``: stable, readable, unique per overrides and seed."""
    # compact JSON, as since the first release: existing grid folders keep their names (and their done runs)
    digest = sha256_text(json.dumps({"overrides": overrides, "seed": seed}, sort_keys=True, separators=(",", ":"),
                                    default=str))[:8]
    return f"{_slug(variant)}{'' if seed is None else f'-s{seed}'}-{digest}"


def _expand_variant(v: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A variant with ``sweep`` → one (name, overrides) per combination of sweep values."""
    import itertools

    overrides = dict(v.get("overrides") or {})
    sweep = dict(v.get("sweep") or {})
    if not sweep:
        return [(str(v["name"]), overrides)]
    out = []
    keys = list(sweep)
    for values in itertools.product(*(sweep[k] for k in keys)):
        combo = dict(zip(keys, values))
        name = str(v["name"])
        name = name.format(**combo) if "{" in name else name + "".join(f"-{k}{val}" for k, val in combo.items())
        out.append((name, {**overrides, **combo}))
    return out


def _recipe_layers(grid: Grid, recipe: str | None) -> tuple[Recipe | None, dict[str, Any]]:
    name = recipe or grid.base_recipe
    if not name:
        return None, {}
    r = load_recipe(name)
    flat = dict(r.common)
    for key in grid.notebooks:
        flat.update(_recipe_stage(r, key) or {})
    return r, flat


def _recipe_stage(r: Recipe, key: str) -> dict[str, Any] | None:
    for k, params in r.stages.items():
        if k == key or k[:2] == key[:2]:
            return params
    return None


def expand_grid(path: str | os.PathLike = GRID_FILE, recipe: str | None = None, seeds: Sequence[int] | None = None,
                variants: Iterable[str] | None = None, groups: Iterable[str] | None = None) -> list[Run]:
    """Every (variant × seed) run of a grid file, with stable ids. ``seeds`` replaces the file's seeds;
    ``variants`` / ``groups`` keep only runs with those names / in those groups. Two variants with the same
    overrides are refused (give one variant several ``groups`` instead)."""
    grid = load_grid(path)
    _, recipe_flat = _recipe_layers(grid, recipe)
    seed_list = list(seeds) if seeds is not None else list(grid.seeds)
    runs: list[Run] = []
    seen: dict[str, str] = {}
    for v in grid.variants:
        for name, overrides in _expand_variant(v):
            key = canonical_json(overrides)
            if key in seen:
                raise PipelineError(f"{grid.path}: variants {seen[key]!r} and {name!r} have the same overrides "
                                    f"{overrides}; keep one and list both groups on it")
            seen[key] = name
            for seed in seed_list:
                settings = {**recipe_flat, **grid.base, **overrides}
                if seed is not None:
                    settings[grid.seed_parameter] = seed
                runs.append(Run(run_id=run_id(name, overrides, seed), variant=name, seed=seed,
                                groups=tuple(str(g) for g in v.get("groups") or ()), overrides=overrides,
                                settings=settings))
    ids = [r.run_id for r in runs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise PipelineError(f"{grid.path}: run ids {dup} repeat; variant names must be unique")
    if variants is not None:
        keep = set(variants)
        unknown = keep - {r.variant for r in runs}
        if unknown:
            raise PipelineError(f"{grid.path}: no variant named {sorted(unknown)}; variants: {sorted({r.variant for r in runs})}")
        runs = [r for r in runs if r.variant in keep]
    if groups is not None:
        keep_g = set(groups)
        runs = [r for r in runs if keep_g & set(r.groups)]
        if not runs:
            raise PipelineError(f"{grid.path}: no variant is in group(s) {sorted(keep_g)}")
    return runs


def plan_run(grid: Grid, run: Run, out_dir: Path, recipe: str | None = None,
             notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR, recipe_out: str | os.PathLike | None = None) -> list[StagePlan]:
    """The notebooks of one grid run with their parameters (recipe common < recipe stage < grid base <
    overrides < seed), executed copies under ``<out_dir>/<run_id>/notebooks/``. ``{recipe_out}`` is
    ``recipe_out`` when given (the main run was made with ``--out``), else the base recipe's ``out``."""
    r, _ = _recipe_layers(grid, recipe)
    run_dir = out_dir / run.run_id
    main_out = Path(recipe_out) if recipe_out is not None else (r.out_dir() if r else run_dir)
    context = {"out": str(run_dir.resolve()), "repo": str(REPO_ROOT), "recipe_out": str(main_out.resolve()),
               "run_id": run.run_id}
    seed_layer = {grid.seed_parameter: run.seed} if run.seed is not None else {}
    grid_layers = [Layer(f"{grid.path}: base", grid.base), Layer(f"{grid.path}: variant {run.variant}", run.overrides),
                   Layer(f"{grid.path}: seeds ({grid.seed_parameter})", seed_layer)]
    plans, declared = [], {}
    for key in grid.notebooks:
        nb = resolve_notebook(key, notebooks_dir)
        layers: list[Layer] = []
        if r is not None:
            layers.append(Layer(f"{r.path}: common", r.common))
            stage = _recipe_stage(r, key)
            if stage is not None:
                layers.append(Layer(f"{r.path}: stage {key}", stage, strict=True))
        layers += grid_layers
        plans.append(StagePlan(nb.stem, nb, run_dir / "notebooks" / nb.name, stage_parameters(nb, layers, context)))
        declared[nb.stem] = declared_parameters(nb)
    check_used(grid_layers, declared)
    return plans


def _done_record(run: Run, plans: Sequence[StagePlan]) -> dict[str, Any]:
    return {"run_id": run.run_id, "variant": run.variant, "seed": run.seed, "groups": list(run.groups),
            "overrides": run.overrides, "settings": run.settings,
            "parameters": {p.name: p.parameters for p in plans}}


def _stale(done: Mapping[str, Any], record: Mapping[str, Any]) -> list[str]:
    """Notebooks whose recorded parameters differ from the planned ones."""
    old, new = done.get("parameters", {}), record["parameters"]
    return sorted(k for k in set(old) | set(new) if canonical_json(old.get(k)) != canonical_json(new.get(k)))


def run_grid(path: str | os.PathLike = GRID_FILE, out: str | os.PathLike | None = None, recipe: str | None = None,
             seeds: Sequence[int] | None = None, variants: Iterable[str] | None = None,
             groups: Iterable[str] | None = None, force: bool = False, dry_run: bool = False,
             keep_going: bool = False, notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR, kernel: str = KERNEL,
             progress: bool = True, timeout: float | None = None,
             recipe_out: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Execute every run of a grid into ``<out>/<run_id>/`` (executed notebooks, ``pipeline.json``, the notebooks'
    own outputs, then ``done.json``). Finished runs are skipped; a finished run whose parameters changed is an
    error unless ``force``. A failing run stops the grid (``keep_going``: run the rest, then raise). Writes
    ``<out>/summary.csv`` (:func:`gather`) at the end. Returns one ``{run_id, variant, seed, status}`` per run.
    ``recipe_out``: the base recipe's run folder when it was not its default ``out`` (what ``{recipe_out}``
    means: the splits and the SFT adapter the runs start from)."""
    grid = load_grid(path)
    out_dir = Path(out).resolve() if out is not None else grid.out_dir().resolve()
    runs = expand_grid(path, recipe=recipe, seeds=seeds, variants=variants, groups=groups)
    have_notebooks = all(_resolvable(k, notebooks_dir) for k in grid.notebooks)
    report, todo = [], []
    for run in runs:
        done_path = out_dir / run.run_id / DONE_FILE
        plans = plan_run(grid, run, out_dir, recipe, notebooks_dir, recipe_out) if (have_notebooks or not dry_run) else []
        status = "pending"
        if done_path.exists():
            done = read_status(done_path)
            stale = _stale(done, _done_record(run, plans)) if plans else []
            if stale and not force:
                raise PipelineError(f"{done_path}: finished with other parameters for {stale}; rerun with --force "
                                    f"(or choose another --out) to replace it")
            status = "done" if not force else "forced"
        report.append({"run_id": run.run_id, "variant": run.variant, "seed": run.seed, "groups": ";".join(run.groups),
                       "status": status})
        if status != "done":
            todo.append((run, plans))
    if dry_run:
        log.info("%s: %d run(s), %d to execute", grid.path, len(report), len(todo))
        if not have_notebooks:
            log.warning("notebooks %s not found under %s: parameters not checked", list(grid.notebooks), notebooks_dir)
        return report
    from clinical_r1.locks import exclusive

    failures = []
    for i, (run, plans) in enumerate(todo, start=1):
        log.info("run %d/%d: %s (%s)", i, len(todo), run.run_id, ", ".join(f"{k}={v}" for k, v in run.overrides.items()))
        run_dir = out_dir / run.run_id
        with exclusive(run_dir, "grid run folder"):
            done_path = run_dir / DONE_FILE
            if done_path.exists() and not force and not _stale(read_status(done_path), _done_record(run, plans)):
                log.info("%s: finished by another process meanwhile; skipped", run.run_id)  # re-read under the lock
                _set(report, run.run_id, "done")
                continue
            done_path.unlink(missing_ok=True)
            start = time.monotonic()
            header = {"kind": "grid-run", "grid": grid.name, "grid_file": repo_relative(grid.path), "run_id": run.run_id,
                      "out": str(run_dir), "provenance": provenance()}
            try:
                run_stages(plans, run_dir / STATUS_FILE, header, force=force, kernel=kernel, progress=progress,
                           timeout=timeout)
            except StageError as e:
                _set(report, run.run_id, "failed")
                if not keep_going:
                    raise StageError(f"grid run {run.run_id}: {e}") from None
                failures.append(f"{run.run_id}: {e}")
                continue
            record = {**_done_record(run, plans), "finished": utc_now(),
                      "duration_s": round(time.monotonic() - start, 2), "provenance": provenance()}
            write_json(record, done_path)  # last: marks the run finished
        _set(report, run.run_id, "done")
    gather(out_dir)
    if failures:
        raise StageError(f"{len(failures)} grid run(s) failed:\n" + "\n".join(failures))
    return report


def _resolvable(key: str, notebooks_dir: str | os.PathLike) -> bool:
    try:
        resolve_notebook(key, notebooks_dir)
    except PipelineError:
        return False
    return True


def _set(report: list[dict[str, Any]], rid: str, status: str) -> None:
    for r in report:
        if r["run_id"] == rid:
            r["status"] = status


# ---------------------------------------------------------------------------------------------------
# Gathering the grid's results
# ---------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ["run_id", "variant", "seed", "groups", "table", "benchmark", "metric", "value", "ci_low", "ci_high"]


def gather(results_dir: str | os.PathLike | None = None, write: bool = True):
    """One tidy table of every finished run (``done.json``) under ``results_dir``: ``run_id, variant, seed,
    groups`` (``;``-joined), one column per overridden setting (``k``, ``preset``, ...; the run's effective
    value), then ``table`` (accuracy | cognitive_behaviours | faithfulness | training | advantage | alarms),
    ``benchmark`` (``train`` for training rows), ``metric, value, ci_low, ci_high``. Accuracy rows are
    percent; training rows are the last logged value of each reward component, total reward, KL and completion
    length; advantage rows the mean over steps of each ``advantage_share/<r>`` and ``reward_varies/<r>``; alarm
    rows the number of threshold crossings per monitor, with their steps in ``benchmark``.
    Written atomically to ``<results_dir>/summary.csv`` when ``write``."""
    import pandas as pd

    root = Path(results_dir) if results_dir is not None else load_grid().out_dir()
    records, setting_keys = [], []
    unfinished = 0
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        if not (run_dir / DONE_FILE).exists():
            unfinished += (run_dir / STATUS_FILE).exists()
            continue
        done = read_status(run_dir / DONE_FILE)
        for k in done.get("overrides", {}):
            if k not in setting_keys:
                setting_keys.append(k)
        records.append((run_dir, done))
    columns = {k: (f"setting_{k}" if k in SUMMARY_COLUMNS else k) for k in setting_keys}
    rows = []
    for run_dir, done in records:
        ident = {"run_id": done["run_id"], "variant": done["variant"], "seed": done.get("seed"),
                 "groups": ";".join(done.get("groups", []))}
        ident.update({col: done.get("settings", {}).get(k) for k, col in columns.items()})
        for row in _run_rows(run_dir, done["run_id"]):
            rows.append({**ident, **row})
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS[:4] + list(columns.values()) + SUMMARY_COLUMNS[4:])
    if unfinished:
        log.info("%s: %d unfinished run(s) left out of the summary", root, unfinished)
    if write and root.exists():
        write_csv(df, root / SUMMARY_FILE)
        log.info("wrote %s (%d rows)", root / SUMMARY_FILE, len(df))
    return df


def _run_rows(run_dir: Path, rid: str) -> list[dict[str, Any]]:
    """One finished run's summary rows: accuracy, judge metrics, last training values, advantage and alarms."""
    from clinical_r1 import results

    rows = []
    acc = results.collect_eval_results(run_dir, default_method=rid)
    for _, r in acc.iterrows():
        rows.append({"table": "accuracy", "benchmark": r["benchmark"], "metric": "accuracy", "value": r["accuracy"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
        for m in ("majority_accuracy", "valid_ratio", "mean_tokens"):
            rows.append({"table": "accuracy", "benchmark": r["benchmark"], "metric": m, "value": r[m],
                         "ci_low": None, "ci_high": None})
    judged = results.collect_judge_results(run_dir, default_method=rid)
    for _, r in judged.iterrows():
        rows.append({"table": r["table"], "benchmark": r["benchmark"], "metric": r["metric"], "value": r["value"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
    logs = results.collect_training_logs(run_dir)
    if not logs.empty:
        for metric in results.training_metrics(logs):
            last = logs[logs["metric"] == metric].sort_values("step").iloc[-1]
            rows.append({"table": "training", "benchmark": "train", "metric": metric, "value": last["value"],
                         "ci_low": None, "ci_high": None})
    rows += _inside_rows(run_dir)
    return rows


def _inside_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Each RL run's mean advantage shares and reward-varies rates over its steps (table ``advantage``) and its
    monitor alarms (table ``alarms``: crossings per monitor, the steps in ``benchmark``), as in the study summary."""
    from clinical_r1.summary import inside_summary

    rows: list[dict[str, Any]] = []
    for metrics in sorted(run_dir.glob("**/metrics.jsonl")):
        inside = inside_summary(metrics.parent, read_jsonl(metrics))
        for kind in ("advantage_share", "reward_varies"):
            for name, value in inside[f"{kind}_mean"].items():
                rows.append({"table": "advantage", "benchmark": "train", "metric": f"{kind}/{name}", "value": value,
                             "ci_low": None, "ci_high": None})
        steps: dict[str, list[int]] = {}
        for alarm in inside["alarms"] or []:
            steps.setdefault(alarm["monitor"], []).append(int(alarm["step"]))
        for monitor, at in steps.items():
            rows.append({"table": "alarms", "benchmark": "steps " + ",".join(map(str, at)), "metric": monitor,
                         "value": len(at), "ci_low": None, "ci_high": None})
    return rows
