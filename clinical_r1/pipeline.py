"""Run the numbered notebooks with papermill: a recipe end to end (and, from the command line, an ablation grid).

    python -m clinical_r1 pipeline --recipe demo                     # every stage of configs/recipes/demo.yaml
    python -m clinical_r1 pipeline --recipe paper --only 04,05 --out results/paper-try2
    python -m clinical_r1 pipeline --recipe demo --force             # rerun stages already done
    python -m clinical_r1 pipeline --grid configs/ablations.yaml --dry-run
    python -m clinical_r1 pipeline --grid configs/ablations.yaml --base-recipe t4 --groups 2x2 --seeds 0
    python -m clinical_r1 pipeline --gather results/ablations        # rebuild results/ablations/summary.csv

    from clinical_r1.pipeline import load_recipe, run_recipe
    run_recipe("demo", only=["01", "04"])

Recipe (``configs/recipes/<name>.yaml``)::

    name: demo                   # must equal the file name
    description: ...
    out: results/demo            # run folder (``--out`` overrides)
    common:                      # given to every notebook that declares the name in its parameters cell
      out_dir: "{out}"
    stages:                      # executed in number order
      "01": {limit: 20}          # notebooks/01_*.ipynb; every key here must be declared by that notebook
      "04_crpo_train": {...}     # or the full notebook name

Placeholders in string values: ``{out}`` (this run's folder, absolute), ``{repo}`` (the repository root),
``{recipe_out}`` (the recipe's own run folder; in a grid run it still points at the recipe's folder, e.g.
the SFT adapter of the main run), ``{run_id}`` (the grid run id; the recipe name in a recipe run).

The ablation grid (``--grid``, ``--gather``: its file format, run ids, ``done.json`` and ``summary.csv``) is
:mod:`clinical_r1.grid`; it runs each grid run's notebooks through :func:`run_stages` here.

Status and resume: a recipe run writes ``<out>/pipeline.json`` (per stage: status, start, duration,
parameters, notebook hash, executed notebook, error) after every change; a rerun skips stages already done
with the same parameters and notebook, unless ``--force``; once one stage runs, every later stage runs too
(its inputs changed).

Parameters never carry secrets: a key naming a token, API key, password or secret, or a value shaped like
one (``sk-…``, ``hf_…``, ``ghp_…``), is refused. Notebooks read keys from environment variables; a
parameter may name the variable (``api_key_env: DEEPSEEK_API_KEY``).

After a recipe run, ``<out>/summary.json`` and ``summary.md`` (:mod:`clinical_r1.summary`) hold every number of
the study; the markdown is printed at the end.

Notebooks run with kernel ``python3`` (the venv's ipykernel) in the ``notebooks/`` folder, as in Jupyter.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from clinical_r1.errors import ClinicalR1Error, DataError, JobFailed
from clinical_r1.files import (REPO_ROOT, canonical_json, check_keys, parameter_mapping, read_yaml, sha256_file,
                               write_json)
from clinical_r1.records import DONE_FILE, STATUS_FILE, provenance, read_status, repo_relative, utc_now
from clinical_r1.redact import redact

log = logging.getLogger(__name__)

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RECIPES_DIR = REPO_ROOT / "configs" / "recipes"
KERNEL = "python3"  # the venv's ipykernel kernelspec
NO_BOOTSTRAP = "CLINICAL_R1_NO_BOOTSTRAP"  # set for the kernels we start: the notebooks' first cell then does nothing
RECIPE_KEYS = {"name", "description", "out", "common", "stages"}
STAGE_KEY = re.compile(r"^(\d{2})(?:_[\w-]+)?$")
_PLACEHOLDERS = ("{out}", "{repo}", "{recipe_out}", "{run_id}")


class PipelineError(ClinicalR1Error, RuntimeError):
    """A recipe, grid or stage that cannot be run as asked; the message names the file, stage or key."""


class StageError(JobFailed, PipelineError):
    """A notebook that raised; the message names the notebook, the cell and the error."""


class SecretParameterError(PipelineError):
    """A parameter that looks like a credential; keys come from environment variables only."""


# ---------------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------

_SECRET_WORDS = {"secret", "secrets", "password", "passwd", "passphrase", "credential", "credentials",
                 "apikey", "auth", "bearer", "cookie"}
_KEY_QUALIFIERS = {"api", "access", "secret", "private", "auth", "client"}  # "<qualifier>_key" names a credential
# Token shapes refused anywhere in a parameter value: (rule, pattern). Messages name the rule, never the value.
_SECRET_VALUES = [
    ("URL userinfo (user:password@host)", re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^/\s@'\"]+@")),
    ("OpenAI-style key (sk-...)", re.compile(r"(?:^|[^A-Za-z0-9])sk-[A-Za-z0-9_-]{10,}")),
    ("Stripe-style key (sk_live_/sk_test_...)", re.compile(r"sk_(?:live|test)_[A-Za-z0-9]{10,}")),
    ("Hugging Face token (hf_...)", re.compile(r"(?:^|[^A-Za-z0-9])hf_[A-Za-z0-9]{10,}")),
    ("GitHub token", re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}")),
    ("Slack token", re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}")),
    ("AWS access key id", re.compile(r"AKIA[0-9A-Z]{16}")),
    ("Google API key", re.compile(r"AIza[0-9A-Za-z_-]{30,}")),
    ("JSON web token", re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.")),
    ("bearer token", re.compile(r"(?i)\bbearer\s+\S+")),
]
# Values under these keys are sent to an endpoint as is; only plain words, numbers and booleans may go there.
_PASS_THROUGH_KEYS = {"extra_body", "headers", "extra_headers", "default_headers", "http_headers", "default_query"}
_PLAIN_WORD = re.compile(r"^[A-Za-z][A-Za-z_ -]{0,39}$")
_BASE64_OR_HEX = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9+/]{20,}={0,2}$")  # 20+ chars: a key, not a name
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def _secret_key(key: str) -> bool:
    w = _words(key)
    if any(x in _SECRET_WORDS for x in w) or "token" in w[-2:] and w[-1] in ("token", "env", "var"):
        return True  # hf_token, access_token (not token_budget)
    return any(a in _KEY_QUALIFIERS and b == "key" for a, b in zip(w, w[1:]))


def _names_env_var(key: str, value: Any) -> bool:
    """``api_key_env: DEEPSEEK_API_KEY`` names a variable; it holds no secret (unless the "name" is a key)."""
    if _words(key)[-1:] not in (["env"], ["var"]):
        return False
    return value is None or (isinstance(value, str) and bool(_ENV_NAME.match(value)) and not _BASE64_OR_HEX.match(value))


def secret_rule(value: str, pass_through: bool = False) -> str | None:
    """The rule a string value breaks, or None: a token shape anywhere, and under ``extra_body``/``headers``
    (``pass_through``) anything but a plain word."""
    for rule, pattern in _SECRET_VALUES:
        if pattern.search(value):
            return rule
    if pass_through and not _PLAIN_WORD.match(value):
        return "a value under extra_body/headers that is not a plain word (it is sent to the endpoint as is)"
    return None


def check_secrets(params: Any, where: str, _path: str = "", _pass_through: bool = False) -> None:
    """Raise :class:`SecretParameterError` for a key that names a credential or a value shaped like one.

    Walks nested mappings and lists. The message names the key and the rule that matched, never the value.
    Rules: a credential-named key (``api_key``, ``hf_token``, ``password``...) unless it names an environment
    variable (``api_key_env: DEEPSEEK_API_KEY``; a 20+ character base64/hex "name" is a key), URL userinfo,
    token shapes (``sk-``, ``hf_``, ``Bearer``, ...), and any value under ``extra_body``/``headers`` that
    is not a plain word, number or boolean.
    """
    if isinstance(params, Mapping):
        for k, v in params.items():
            path = f"{_path}.{k}" if _path else str(k)
            if _secret_key(str(k)) and not _names_env_var(str(k), v):
                rule = ("20+ character base64/hex value in a credential-named field"
                        if isinstance(v, str) and _BASE64_OR_HEX.match(v) else "credential-named key")
                raise SecretParameterError(
                    f"{where}: parameter {path!r} looks like a credential (rule: {rule}); parameters are written to "
                    f"executed notebooks and status files, so keys come from environment variables only — pass the "
                    f"variable's name instead (e.g. '{k if _words(str(k))[-1:] == ['env'] else f'{k}_env'}: "
                    f"DEEPSEEK_API_KEY')")
            check_secrets(v, where, path, _pass_through or str(k).lower() in _PASS_THROUGH_KEYS)
    elif isinstance(params, (list, tuple)):
        for i, v in enumerate(params):
            check_secrets(v, where, f"{_path}[{i}]", _pass_through)
    elif isinstance(params, str):
        rule = secret_rule(params, _pass_through)
        if rule:
            raise SecretParameterError(f"{where}: the value of {_path or 'a parameter'!r} looks like an API key or "
                                       f"token (rule: {rule}); set it in an environment variable and pass the "
                                       f"variable's name")


def _register_named_secrets(params: Any) -> None:
    """The values of the environment variables that parameters name (``api_key_env: X``) are redacted from
    everything this run writes."""
    from clinical_r1.redact import register_env

    if isinstance(params, Mapping):
        for k, v in params.items():
            if isinstance(v, str) and _words(str(k))[-1:] in (["env"], ["var"]) and _ENV_NAME.match(v):
                register_env(v)
            _register_named_secrets(v)
    elif isinstance(params, (list, tuple)):
        for v in params:
            _register_named_secrets(v)


# ---------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """A recipe file: where it writes, parameters for all notebooks, and per-stage parameters."""

    name: str
    path: Path
    description: str
    out: str
    common: dict[str, Any]
    stages: dict[str, dict[str, Any]]  # stage key ("04" or "04_crpo_train") -> parameters, in number order

    def out_dir(self) -> Path:
        p = Path(self.out)
        return p if p.is_absolute() else REPO_ROOT / p


def recipe_path(name_or_path: str | os.PathLike, recipes_dir: str | os.PathLike = RECIPES_DIR) -> Path:
    """``demo`` → ``configs/recipes/demo.yaml``; a path to a YAML file is used as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    path = Path(recipes_dir) / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(q.stem for q in Path(recipes_dir).glob("*.yaml"))
        raise PipelineError(f"unknown recipe {str(name_or_path)!r}: no {path}; known recipes: {known}")
    return path


def load_recipe(name_or_path: str | os.PathLike, recipes_dir: str | os.PathLike = RECIPES_DIR) -> Recipe:
    """Read and check a recipe: known keys only, stage keys ``NN`` or ``NN_name`` (no number twice), parameter
    mappings, no secrets. Notebooks are not opened here (see :func:`plan_recipe`)."""
    path = recipe_path(name_or_path, recipes_dir)
    data = read_yaml(path, "recipe", PipelineError)
    check_keys(data, RECIPE_KEYS, str(path), PipelineError)
    name = str(data.get("name") or path.stem)
    if name != path.stem:
        raise PipelineError(f"{path}: name {name!r} differs from the file name {path.stem!r}")
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise PipelineError(f"{path}: 'stages' must be a non-empty mapping of notebook numbers to parameters")
    stages: dict[str, dict[str, Any]] = {}
    numbers: dict[str, str] = {}
    for key, params in stages_raw.items():
        key = f"{key:02d}" if isinstance(key, int) else str(key)
        m = STAGE_KEY.match(key)
        if not m:
            raise PipelineError(f"{path}: stage key {key!r} must be a two-digit notebook number ('04') or a notebook "
                                f"name ('04_crpo_train')")
        if m.group(1) in numbers:
            raise PipelineError(f"{path}: stages {numbers[m.group(1)]!r} and {key!r} share number {m.group(1)}")
        numbers[m.group(1)] = key
        stages[key] = parameter_mapping(params, f"{path}: stage {key}", PipelineError)
    stages = dict(sorted(stages.items(), key=lambda kv: kv[0][:2]))
    common = parameter_mapping(data.get("common"), f"{path}: common", PipelineError)
    check_secrets(common, f"{path}: common")
    for key, params in stages.items():
        check_secrets(params, f"{path}: stage {key}")
    return Recipe(name=name, path=path, description=str(data.get("description") or ""),
                  out=str(data.get("out") or f"results/{name}"), common=common, stages=stages)


def resolve_notebook(key: str, notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR) -> Path:
    """The notebook of a stage key: ``04_crpo_train`` → that file; ``04`` → the one ``04_*.ipynb``."""
    d = Path(notebooks_dir)
    if "_" in key:
        path = d / f"{key}.ipynb"
        if not path.exists():
            raise PipelineError(f"stage {key}: notebook {path} not found")
        return path
    found = sorted(d.glob(f"{key}_*.ipynb"))
    if len(found) != 1:
        if not found:
            raise PipelineError(f"stage {key}: no notebook named {key}_*.ipynb in {d}")
        raise PipelineError(f"stage {key}: {len(found)} notebooks named {key}_*.ipynb in {d} "
                            f"({[p.name for p in found]}); use the full name as the stage key, e.g. {found[0].stem!r}")
    return found[0]


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The names (and defaults) of a notebook's ``parameters`` cell; a notebook without one is refused."""
    import nbformat
    import papermill as pm

    nb = nbformat.read(str(notebook), as_version=4)
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise PipelineError(f"{notebook}: no cell tagged 'parameters'; papermill needs one (View > Cell Toolbar > Tags)")
    return {name: info.get("default") for name, info in pm.inspect_notebook(str(notebook)).items()}


def _substitute(value: Any, context: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for ph in _PLACEHOLDERS:
            if ph in value:
                value = value.replace(ph, context[ph[1:-1]])
        return value
    if isinstance(value, list):
        return [_substitute(v, context) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, context) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Layer:
    """Parameters from one origin. Strict layers must be declared by the notebook; others are given only to
    notebooks that declare them."""

    origin: str
    params: Mapping[str, Any]
    strict: bool = False


@dataclass
class StagePlan:
    """One notebook execution: its source, where the executed copy goes, and its final parameters."""

    name: str  # the notebook stem, e.g. 04_crpo_train
    notebook: Path
    executed: Path
    parameters: dict[str, Any]


def stage_parameters(notebook: Path, layers: Sequence[Layer], context: Mapping[str, str]) -> dict[str, Any]:
    """Merge ``layers`` (later wins) into the parameters papermill passes to ``notebook``."""
    declared = declared_parameters(notebook)
    out: dict[str, Any] = {}
    for layer in layers:
        if layer.strict:
            undeclared = sorted(set(layer.params) - set(declared))
            if undeclared:
                raise PipelineError(f"{layer.origin}: parameter(s) {undeclared} are not declared in the parameters "
                                    f"cell of {notebook}; it declares {sorted(declared)}")
        for k, v in layer.params.items():
            if k in declared:
                out[k] = copy.deepcopy(_substitute(v, context))
    check_secrets(out, f"{notebook.name}")
    return out


def check_used(layers: Sequence[Layer], plans_declared: Mapping[str, Iterable[str]]) -> None:
    """A non-strict parameter that no notebook declares is a typo, not a default: refuse it."""
    everywhere = set().union(*map(set, plans_declared.values())) if plans_declared else set()
    for layer in layers:
        unused = sorted(set(layer.params) - everywhere)
        if unused:
            raise PipelineError(f"{layer.origin}: parameter(s) {unused} are declared by none of the notebooks "
                                f"{sorted(plans_declared)}; check the spelling or add them to a parameters cell")


def plan_recipe(recipe: Recipe, out: str | os.PathLike | None = None, only: Iterable[str] | None = None,
                notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR) -> list[StagePlan]:
    """The stages to execute (``only``: stage numbers like ``["01", "04"]``), each with its final parameters."""
    out_dir = Path(out).resolve() if out is not None else recipe.out_dir().resolve()
    keys = list(recipe.stages)
    if only:
        wanted = {f"{int(x):02d}" if str(x).isdigit() else str(x) for x in only}
        unknown = sorted(w for w in wanted if not any(k == w or k[:2] == w for k in keys))
        if unknown:
            raise PipelineError(f"{recipe.path}: --only names stage(s) {unknown} the recipe lacks; it has {keys}")
        keys = [k for k in keys if k in wanted or k[:2] in wanted]
    context = {"out": str(out_dir), "repo": str(REPO_ROOT), "recipe_out": str(out_dir), "run_id": recipe.name}
    plans, declared = [], {}
    for key in keys:
        nb = resolve_notebook(key, notebooks_dir)
        layers = [Layer(f"{recipe.path}: common", recipe.common),
                  Layer(f"{recipe.path}: stage {key}", recipe.stages[key], strict=True)]
        plans.append(StagePlan(nb.stem, nb, out_dir / "notebooks" / nb.name, stage_parameters(nb, layers, context)))
        declared[nb.stem] = declared_parameters(nb)
    if not only:
        check_used([Layer(f"{recipe.path}: common", recipe.common)], declared)
    return plans


# ---------------------------------------------------------------------------------------------------
# Executing stages
# ---------------------------------------------------------------------------------------------------


def execute_notebook(plan: StagePlan, kernel: str = KERNEL, progress: bool = True,
                     timeout: float | None = None) -> float:
    """Run one notebook with papermill (cwd: the notebook's folder); returns seconds. A cell error becomes a
    :class:`StageError` naming the notebook, the cell and the error; the executed notebook keeps the traceback."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    check_secrets(plan.parameters, plan.notebook.name)
    plan.executed.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    kw: dict[str, Any] = {"execution_timeout": timeout} if timeout is not None else {}
    # Kernels inherit this process's environment, Kaggle's KAGGLE_KERNEL_RUN_TYPE included: without this the
    # notebooks' first (Colab/Kaggle bootstrap) cell would clone, pip install and chdir in every stage.
    saved = os.environ.get(NO_BOOTSTRAP)
    os.environ[NO_BOOTSTRAP] = "1"
    try:
        pm.execute_notebook(str(plan.notebook), str(plan.executed), parameters=plan.parameters, kernel_name=kernel,
                            cwd=str(plan.notebook.parent), progress_bar=progress, log_output=False, **kw)
    except PapermillExecutionError as e:
        raise StageError(
            f"stage {plan.name} failed: {plan.notebook} cell In [{e.exec_count}] (index {e.cell_index} of the executed "
            f"notebook) raised {e.ename}: {e.evalue}\n  cell source: {_first_lines(e.source)}\n  executed notebook "
            f"with the full traceback: {plan.executed}") from None
    except Exception as e:  # kernel died, timeout, missing kernel: papermill raises several types
        raise StageError(f"stage {plan.name} failed: {plan.notebook} could not be executed: {type(e).__name__}: {e}"
                         f"\n  executed notebook (partial): {plan.executed}") from e
    finally:
        if saved is None:
            os.environ.pop(NO_BOOTSTRAP, None)
        else:
            os.environ[NO_BOOTSTRAP] = saved
    return time.monotonic() - start


HEARTBEAT_S = 30.0  # seconds between progress lines while a stage runs


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def training_progress(out_dir: Path, since: float) -> str | None:
    """``"<run> step n/N"`` of the training run under ``out_dir`` whose ``metrics.jsonl`` changed last after
    ``since`` (a time.time()), read from its last line and its ``config.yaml``; None when no run is training."""
    newest = None
    for p in out_dir.glob("**/metrics.jsonl"):
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        if mtime >= since and (newest is None or mtime > newest[0]):
            newest = (mtime, p)
    if newest is None:
        return None
    path = newest[1]
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            step = json.loads(f.read().decode("utf-8", "replace").strip().splitlines()[-1]).get("step")
        total = read_yaml(path.parent / "config.yaml", "training config").get("trainer", {}).get("max_steps")
    except (OSError, ValueError, IndexError, DataError):  # a line being written, a config not yet there
        return None
    return f"{path.parent.name} step {step}/{total}" if step is not None else None


class Heartbeat:
    """While a stage runs: every ``HEARTBEAT_S`` a log line with the stage, its elapsed time, the study's, and the
    training step of the run being trained (``training_progress``), so a long pipeline is never silent."""

    def __init__(self, label: str, out_dir: Path, study_start: float, interval: float = HEARTBEAT_S):
        import threading

        self.label, self.out_dir, self.study_start, self.interval = label, out_dir, study_start, interval
        self.start, self.wall = time.monotonic(), time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipeline-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            step = training_progress(self.out_dir, self.wall)
            log.info("%s: %s elapsed (study %s)%s", self.label, _clock(time.monotonic() - self.start),
                     _clock(time.monotonic() - self.study_start), f"; {step}" if step else "")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _first_lines(src: str, n: int = 3) -> str:
    lines = [ln for ln in (src or "").splitlines() if ln.strip()]
    return " | ".join(lines[:n]) + (" | ..." if len(lines) > n else "")


def run_stages(plans: Sequence[StagePlan], status_path: Path, header: Mapping[str, Any], force: bool = False,
               kernel: str = KERNEL, progress: bool = True, timeout: float | None = None) -> dict[str, Any]:
    """Execute ``plans`` in order, recording each stage in ``status_path``; returns the status.

    The run folder is owned by one process at a time (:mod:`clinical_r1.locks`: a second pipeline on it fails
    at once, naming the holder's pid); the status is read, and every change written, under that lock. A stage
    is skipped only when it is done with the same parameters and notebook and every file it wrote still exists
    with the content it had (``outputs``: path -> hash; unless ``force``). After one stage runs, every later
    one runs. Error messages and executed notebooks are redacted (:mod:`clinical_r1.redact`)."""
    from clinical_r1.locks import exclusive

    out_dir = status_path.parent
    for plan in plans:
        _register_named_secrets(plan.parameters)
    with exclusive(out_dir, "pipeline run folder"):
        status = read_status(status_path)
        status.update(header)
        status.setdefault("created", utc_now())
        stages = status.setdefault("stages", {})
        ran = False
        study_start = time.monotonic()
        for i, plan in enumerate(plans, start=1):
            sha = sha256_file(plan.notebook)
            prev = stages.get(plan.name, {})
            reason = _rerun_reason(prev, plan, sha, force, ran, out_dir)
            if reason is None:
                log.info("[%d/%d] %s: done already (%.1f s); skipped", i, len(plans), plan.name,
                         prev.get("duration_s", 0))
                continue
            log.info("[%d/%d] %s: running (%s)", i, len(plans), plan.name, reason)
            entry = {"status": "running", "notebook": repo_relative(plan.notebook), "notebook_sha256": sha,
                     "executed": repo_relative(plan.executed), "parameters": plan.parameters, "started": utc_now(),
                     "finished": None, "duration_s": None, "error": None, "outputs": {}}
            stages[plan.name] = entry
            _save_status(status, status_path)
            before = _listing(out_dir)
            start = time.monotonic()
            try:
                with Heartbeat(f"[{i}/{len(plans)}] {plan.name}", out_dir, study_start):
                    execute_notebook(plan, kernel=kernel, progress=progress, timeout=timeout)
            except StageError as e:
                message = redact(str(e))
                entry.update(status="failed", finished=utc_now(), duration_s=round(time.monotonic() - start, 2),
                             error=message)
                _save_status(status, status_path)
                raise StageError(message) from None
            except BaseException as e:  # Ctrl-C, a kill (SystemExit): not left "running"; re-raised
                entry.update(status="interrupted", finished=utc_now(),
                             duration_s=round(time.monotonic() - start, 2), error=redact(type(e).__name__))
                _save_status(status, status_path)
                raise
            finally:  # the executed notebook is redacted however the stage ended
                _scrub(plan.executed)
            outputs = _outputs(out_dir, before)
            for other in stages.values():  # a file belongs to the last stage that wrote it
                for rel in outputs:
                    other.get("outputs", {}).pop(rel, None)
            entry.update(status="done", finished=utc_now(), duration_s=round(time.monotonic() - start, 2),
                         outputs=outputs)
            _save_status(status, status_path)
            log.info("[%d/%d] %s: done in %s (study %s)", i, len(plans), plan.name, _clock(entry["duration_s"]),
                     _clock(time.monotonic() - study_start))
            ran = True
        return status


def _rerun_reason(prev: Mapping[str, Any], plan: StagePlan, sha: str, force: bool, upstream_ran: bool,
                  out_dir: Path) -> str | None:
    if force:
        return "--force"
    if prev.get("status") != "done":
        return "not done yet" if not prev else f"last status {prev.get('status')}"
    if upstream_ran:
        return "an earlier stage ran"
    if canonical_json(prev.get("parameters")) != canonical_json(plan.parameters):
        return "parameters changed"
    if prev.get("notebook_sha256") != sha:
        return "notebook changed"
    if "outputs" not in prev:
        return "no record of its outputs (run by an older version)"
    for rel, digest in prev["outputs"].items():
        f = out_dir / rel
        if not f.is_file():
            return f"its output {rel} is missing"
        if _digest(f) != digest:
            return f"its output {rel} changed since it ran"
    return None


_HASH_LIMIT = 64 << 20  # files above this (model weights, checkpoints) are recorded by size and mtime


def _digest(path: Path) -> str:
    st = path.stat()
    if st.st_size > _HASH_LIMIT:
        return f"stat:{st.st_size}:{st.st_mtime_ns}"
    return f"sha256:{sha256_file(path)}"


def _listing(out_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``out_dir`` (hidden ones and the status files aside) -> (size, mtime)."""
    found = {}
    for root, dirs, files in os.walk(out_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or (root == str(out_dir) and name in (STATUS_FILE, DONE_FILE)):
                continue
            p = Path(root) / name
            try:
                st = p.stat()
            except OSError:  # removed while we looked
                continue
            found[p.relative_to(out_dir).as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


def _outputs(out_dir: Path, before: Mapping[str, tuple[int, int]]) -> dict[str, str]:
    """The files a stage created or changed (new or different size/mtime since ``before``), with hashes."""
    after = _listing(out_dir)
    return {rel: _digest(out_dir / rel) for rel, st in sorted(after.items()) if before.get(rel) != st}


def _scrub(executed: Path) -> None:
    """Credentials out of an executed notebook, and this machine's repository folder out of its paths (``/home/me/
    clinical-r1/results/demo`` reads ``results/demo``, relative to the repository), so it can be committed."""
    from clinical_r1.files import write_text
    from clinical_r1.redact import redact_file

    if not executed.is_file():
        return
    if redact_file(executed):
        log.warning("%s: removed credentials from the executed notebook", executed)
    text = executed.read_text(encoding="utf-8")
    portable = text.replace(json.dumps(str(REPO_ROOT) + os.sep)[1:-1], "")
    portable = shrink_images(portable)
    if portable != text:
        write_text(portable, executed)


def shrink_images(notebook_json: str, above: int = 60_000, max_width: int = 1400) -> str:
    """A notebook (its JSON text) with every inline PNG larger than ``above`` base64 characters scaled down to at
    most ``max_width`` pixels (GitHub shows a notebook's images under 1,000 wide) and stored as a 256-colour palette
    PNG, when that is smaller: a plot has few colours, so it reads the same at a fraction of the size, and committed
    executed notebooks stay small. Other outputs are left as they are."""
    import base64
    import io

    from PIL import Image

    nb = json.loads(notebook_json)
    changed = False
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            png = data.get("image/png")
            if not isinstance(png, str) or len(png) <= above:
                continue
            try:
                img = Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")
            except (OSError, ValueError):  # not a PNG Pillow can read: left as it is
                continue
            if img.width > max_width:
                img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
            buf = io.BytesIO()
            img.quantize(colors=256).save(buf, format="PNG", optimize=True)
            small = base64.b64encode(buf.getvalue()).decode("ascii")
            if len(small) < len(png):
                data["image/png"] = small
                changed = True
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n" if changed else notebook_json


def _save_status(status: dict[str, Any], path: Path) -> None:
    status["updated"] = utc_now()
    write_json(status, path)


def run_recipe(recipe: str | os.PathLike | Recipe, out: str | os.PathLike | None = None,
               only: Iterable[str] | None = None, force: bool = False, dry_run: bool = False,
               notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR, kernel: str = KERNEL, progress: bool = True,
               timeout: float | None = None) -> dict[str, Any]:
    """Execute a recipe's notebooks in order into ``<out>/notebooks/``, with ``<out>/pipeline.json`` as the
    status file. Raises :class:`StageError` at the first failing stage. Returns the status dict (the plan
    when ``dry_run``)."""
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    out_dir = Path(out).resolve() if out is not None else r.out_dir().resolve()
    plans = plan_recipe(r, out_dir, only, notebooks_dir)
    if dry_run:
        for p in plans:
            log.info("%s -> %s\n  %s", p.notebook, p.executed, json.dumps(p.parameters, default=str))
        return {"recipe": r.name, "out": str(out_dir), "plan": [p.__dict__ for p in plans]}
    header = {"kind": "recipe", "recipe": r.name, "recipe_file": repo_relative(r.path),
              "recipe_sha256": sha256_file(r.path), "out": str(out_dir), "provenance": provenance()}
    from clinical_r1.locks import exclusive
    from clinical_r1.summary import write_summary

    with exclusive(out_dir, "pipeline run folder"):  # the stages and the summary: one writer
        status = run_stages(plans, out_dir / STATUS_FILE, header, force=force, kernel=kernel, progress=progress,
                            timeout=timeout)
        write_summary(out_dir)  # summary.json + summary.md: every number of the study, read from its files
    return status


# ---------------------------------------------------------------------------------------------------
# Summary of a recipe run (from the results files)
# ---------------------------------------------------------------------------------------------------


def summary_table(out_dir: str | os.PathLike) -> str:
    """Plain text: the stages of ``<out>/pipeline.json``, the accuracy of every evaluation result under
    ``out_dir`` (percent, 95% CI) and the judge means per method — read from the results files."""
    from clinical_r1.results import collect_eval_results, collect_judge_results

    out = Path(out_dir)
    status = read_status(out / STATUS_FILE)
    lines = [f"run {out}", f"{'stage':<28}{'status':<10}{'seconds':>10}"]
    for name, s in status.get("stages", {}).items():
        dur = s.get("duration_s")
        lines.append(f"{name:<28}{s.get('status', '?'):<10}{(f'{dur:.1f}' if dur is not None else '-'):>10}")
    try:
        acc = collect_eval_results(out)
        judged = collect_judge_results(out, n_boot=200)
    except DataError as e:  # a results file that is not valid JSON or lacks its fields (results.PlotDataError)
        lines.append(f"results unreadable: {e}")
        return "\n".join(lines)
    if acc.empty:
        lines.append("no evaluation results (*.metrics.json) yet")
    else:
        acc["cell"] = [f"{a:.1f} [{lo:.1f}, {hi:.1f}]" for a, lo, hi in zip(acc["accuracy"], acc["ci_low"], acc["ci_high"])]
        table = acc.pivot_table(index="method", columns="benchmark", values="cell", aggfunc="first").fillna("-")
        lines += ["", "accuracy % [95% CI]", table.to_string()]
    if not judged.empty:
        table = judged.pivot_table(index="method", columns="metric", values="value", aggfunc="mean")
        lines += ["", "judge metrics (mean over judged responses)", table.round(2).to_string()]
    return "\n".join(lines)
