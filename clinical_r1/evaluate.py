"""Accuracy as the paper measures it, from a generations file: overall, per subgroup, majority vote, intervals.

    from clinical_r1.evaluate import evaluate, compare
    res = evaluate("results/run/medqa.jsonl", medqa, out_path="results/run/medqa.metrics.json", dataset_name="medqa")
    res["overall"]["accuracy"], res["overall"]["accuracy_ci"]
    cmp = compare("results/crpo/medqa.jsonl", "results/grpo/medqa.jsonl", medqa)   # paired bootstrap + McNemar

    python -m clinical_r1 evaluate results/run/medqa4.jsonl --benchmark medqa4 \\
        --data ../shared/benchmarks/medqa_usmle4_test_sample.jsonl --out results/run/medqa4.metrics.json

Every answer letter comes from the one parser, ``clinical_r1.parsing.extract_letter(text, item options)``,
and is judged by its one rule, ``clinical_r1.parsing.is_correct_letter`` (the rule of ``is_correct``, which
the accuracy reward uses), so training reward and evaluation agree on what "correct" is. Definitions (values are fractions in [0, 1];
the paper reports percent):

- ``accuracy``: correct answers / all answers (questions × N samples); an invalid answer (no single
  parsable ``\\boxed{}``) is wrong. With N samples it is the mean accuracy over samples (mean@N).
- ``accuracy_valid``: correct / valid answers; ``valid_ratio``: valid / all answers.
- ``majority_accuracy``: one majority-vote answer per question (:func:`majority_vote`), then accuracy.
- ``*_ci``: 95% percentile bootstrap over questions (seeded numpy, vectorised; :func:`bootstrap_ci`).

Groups: ``by_subgroup`` over the ``subgroup`` column (MedQA step1 vs step2&3, MedXpertQA body system) when
any item has one, and ``by_source`` when the dataset mixes sources.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from clinical_r1.errors import ClinicalR1Error
from clinical_r1.files import REPO_ROOT, read_json, write_json
from clinical_r1.generate import read_generations, read_meta
from clinical_r1.parsing import extract_letter, is_correct_letter
from clinical_r1.records import provenance, utc_now

log = logging.getLogger(__name__)

N_BOOT = 2000  # bootstrap resamples for every interval
CONFIDENCE = 0.95  # two-sided interval mass
BOOT_CHUNK = 4_000_000  # resampled indices held in memory at once (n_boot × n is split into chunks)
PAPER_REFERENCE = REPO_ROOT / "results" / "paper_reference.json"


class EvaluationError(ClinicalR1Error, ValueError):
    """Generations that do not match the dataset they are evaluated on; the message names what differs."""


# ---------------------------------------------------------------------------------------------------
# Majority vote and the bootstrap
# ---------------------------------------------------------------------------------------------------


def majority_vote(letters: Sequence[str | None]) -> str | None:
    """The most frequent valid letter among samples (``None`` entries are invalid answers and do not vote).

    Tie-break: among the tied letters, the one whose first vote came earliest by sample index.
    No valid vote → ``None`` (an invalid answer).
    """
    counts = Counter(x for x in letters if x is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(x for x in letters if x is not None and counts[x] == top)


def bootstrap_ci(values: Sequence[float], n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0,
                 denominators: Sequence[float] | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (or of ``sum(values) / sum(denominators)``).

    Resamples items with replacement ``n_boot`` times (``numpy.random.default_rng(seed)``, vectorised in
    chunks of ``BOOT_CHUNK`` indices). A ratio resample whose denominator sums to 0 is undefined and left out.
    For a paired comparison pass the per-item differences.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-d sequence, got shape {v.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = None if denominators is None else np.asarray(denominators, dtype=float)
    if d is not None and d.shape != v.shape:
        raise ValueError(f"denominators shape {d.shape} differs from values shape {v.shape}")
    rng = np.random.default_rng(seed)
    n = len(v)
    stats = np.empty(n_boot)
    step = max(1, BOOT_CHUNK // n)
    for start in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
        if d is None:
            stats[start : start + len(idx)] = v[idx].mean(axis=1)
        else:
            den = d[idx].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                stats[start : start + len(idx)] = np.where(den > 0, v[idx].sum(axis=1) / den, np.nan)
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        raise ValueError("every bootstrap resample had a zero denominator")
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Spearman's (rho, p) from scipy (ties get mean ranks); NaN for fewer than 3 pairs or a constant side."""
    import warnings

    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = spearmanr(a, b)
    return float(res.statistic), float(res.pvalue)


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of paired binary outcomes: a two-sided binomial test on the discordant pairs.

    ``b`` = A right and B wrong, ``c`` = A wrong and B right; ``p = binomtest(b, b + c, 0.5)`` (1.0 when
    there are no discordant pairs).
    """
    from scipy.stats import binomtest

    a, b_ = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired outcomes differ in length: {a.shape} vs {b_.shape}")
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "both": int((a & b_).sum()), "neither": int((~a & ~b_).sum()), "p_value": p}


# ---------------------------------------------------------------------------------------------------
# Generations against a dataset
# ---------------------------------------------------------------------------------------------------


@dataclass
class Answers:
    """The answers of one generations file, aligned with the dataset's questions (rows) and samples (columns)."""

    path: Path
    meta: dict[str, Any]
    ids: list[str]
    gold: list[str]
    subgroups: list[str]
    sources: list[str]
    letters: list[list[str | None]]  # None: invalid or missing answer
    present: np.ndarray  # bool, questions × N: the sample exists in the file
    n_tokens: np.ndarray  # float, questions × N; nan where missing or unrecorded
    truncated: np.ndarray  # bool, questions × N: finish_reason == "length"
    missing: dict[str, list[int]]  # id -> missing sample indices

    @property
    def n(self) -> int:
        return self.present.shape[1]

    @property
    def correct(self) -> np.ndarray:
        return np.array([[is_correct_letter(x, g) for x in row] for row, g in zip(self.letters, self.gold)], dtype=bool)

    @property
    def valid(self) -> np.ndarray:
        return np.array([[x is not None for x in row] for row in self.letters], dtype=bool)

    def majority(self) -> list[str | None]:
        return [majority_vote(row) for row in self.letters]


def _describe(ids: Iterable[str], k: int = 10) -> str:
    ids = list(ids)
    more = f" and {len(ids) - k} more" if len(ids) > k else ""
    return ", ".join(repr(i) for i in ids[:k]) + more


def load_answers(generations_path: str | os.PathLike, dataset: Iterable[Mapping[str, Any]],
                 dataset_name: str | None = None, n: int | None = None, allow_missing: bool = False) -> Answers:
    """Read a generations file and align it with ``dataset``, parsing every answer letter.

    Raises :class:`EvaluationError` when the file names ids the dataset lacks, when its dataset name
    (sidecar or records) differs from ``dataset_name``, when a sample index is ≥ N, or when some questions
    have fewer than N samples (N: the sidecar's ``n``, else ``n``, else the largest sample index + 1) —
    unless ``allow_missing``, which counts each missing sample as an invalid (wrong) answer.
    """
    path = Path(generations_path)
    records = read_generations(path)
    meta = read_meta(path) or {}
    items = list(dataset)
    by_id = {str(r["id"]): r for r in items}
    _check_dataset_name(path, meta, records, dataset_name)
    unknown = sorted({str(r["id"]) for r in records} - set(by_id))
    if unknown:
        raise EvaluationError(f"{path}: {len(unknown)} id(s) are not in the dataset "
                              f"{dataset_name or ''} ({len(items)} questions): {_describe(unknown)}; "
                              f"were these generations made on another dataset?")
    n = _sample_count(path, meta, records, n)
    letters = {i: [None] * n for i in by_id}
    present = {i: np.zeros(n, dtype=bool) for i in by_id}
    tokens = {i: np.full(n, np.nan) for i in by_id}
    trunc = {i: np.zeros(n, dtype=bool) for i in by_id}
    for r in records:
        qid, s = str(r["id"]), r["sample"]
        letters[qid][s] = extract_letter(r["text"], list(by_id[qid]["options"]))
        present[qid][s] = True
        if isinstance(r.get("n_tokens"), (int, float)):
            tokens[qid][s] = r["n_tokens"]
        trunc[qid][s] = r.get("finish_reason") == "length"
    missing = {i: [int(s) for s in np.flatnonzero(~present[i])] for i in by_id if not present[i].all()}
    if missing and not allow_missing:
        raise EvaluationError(f"{path}: {len(missing)} question(s) have fewer than {n} samples: "
                              f"{_describe(f'{i} (missing samples {s})' for i, s in missing.items())}; "
                              f"finish generating (generation resumes), evaluate the generated subset, "
                              f"or pass allow_missing=True to count missing samples as invalid answers")
    if missing:
        log.warning("%s: %d question(s) miss samples; counted as invalid answers", path, len(missing))
    ids = list(by_id)
    return Answers(path=path, meta=meta, ids=ids, gold=[by_id[i]["answer"] for i in ids],
                   subgroups=[str(by_id[i].get("subgroup") or "") for i in ids],
                   sources=[str(by_id[i].get("source") or "") for i in ids],
                   letters=[letters[i] for i in ids], present=np.stack([present[i] for i in ids]),
                   n_tokens=np.stack([tokens[i] for i in ids]), truncated=np.stack([trunc[i] for i in ids]),
                   missing=missing)


def _check_dataset_name(path: Path, meta: Mapping[str, Any], records: list[dict[str, Any]],
                        dataset_name: str | None) -> None:
    names = {str(r["dataset"]) for r in records if r.get("dataset") is not None}
    if meta.get("dataset") is not None:
        names.add(str(meta["dataset"]))
    if len(names) > 1:
        raise EvaluationError(f"{path}: mixes generations of several datasets ({sorted(names)})")
    if dataset_name is not None and names and names != {dataset_name}:
        raise EvaluationError(f"{path}: generated on dataset {names.pop()!r}, evaluated as {dataset_name!r}")


def _sample_count(path: Path, meta: Mapping[str, Any], records: list[dict[str, Any]], n: int | None) -> int:
    file_n = meta.get("n")
    if n is not None and file_n is not None and int(file_n) != n:
        raise EvaluationError(f"{path}: the sidecar records n={file_n} samples per question, asked n={n}")
    n = int(file_n) if file_n is not None else n
    if n is None:
        if not records:
            raise EvaluationError(f"{path}: no generations and no sidecar; cannot tell how many samples to expect")
        n = 1 + max(r["sample"] for r in records)
    over = sorted({(str(r["id"]), r["sample"]) for r in records if r["sample"] >= n})
    if over:
        raise EvaluationError(f"{path}: sample indices beyond n={n}: {_describe(f'{i}#{s}' for i, s in over)}")
    return n


# ---------------------------------------------------------------------------------------------------
# Accuracy figures
# ---------------------------------------------------------------------------------------------------


def _block(ans: Answers, rows: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Accuracy figures and intervals over the questions selected by the boolean mask ``rows``."""
    correct, valid = ans.correct[rows], ans.valid[rows]
    maj = [m for m, keep in zip(ans.majority(), rows) if keep]
    gold = [g for g, keep in zip(ans.gold, rows) if keep]
    maj_correct = np.array([is_correct_letter(m, g) for m, g in zip(maj, gold)], dtype=float)
    maj_valid = np.array([m is not None for m in maj], dtype=float)
    per_q_acc = correct.mean(axis=1)
    ci = dict(n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {
        "n_questions": int(rows.sum()),
        "n_answers": int(correct.size),
        "n_valid": int(valid.sum()),
        "n_correct": int(correct.sum()),
        "n_missing": int((~ans.present[rows]).sum()),
        "accuracy": float(correct.mean()),
        "accuracy_ci": bootstrap_ci(per_q_acc, **ci),
        "accuracy_valid": float(correct.sum() / valid.sum()) if valid.any() else None,
        "accuracy_valid_ci": bootstrap_ci(correct.sum(1), denominators=valid.sum(1), **ci) if valid.any() else None,
        "valid_ratio": float(valid.mean()),
        "valid_ratio_ci": bootstrap_ci(valid.mean(axis=1), **ci),
        "majority_accuracy": float(maj_correct.mean()),
        "majority_accuracy_ci": bootstrap_ci(maj_correct, **ci),
        "majority_valid_ratio": float(maj_valid.mean()),
        "truncated_ratio": float(ans.truncated[rows].mean()),
        "mean_tokens": _nanmean(ans.n_tokens[rows]),
    }
    if ans.n > 1:
        out["accuracy_per_sample"] = [float(x) for x in correct.mean(axis=0)]
    return out


def _nanmean(x: np.ndarray) -> float | None:
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def _groups(ans: Answers, labels: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    names = sorted(set(labels), key=lambda s: (s == "", s))
    return {name or "(none)": _block(ans, np.array([x == name for x in labels]), n_boot, seed) for name in names}


def accuracy_figures(ans: Answers, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """``overall`` figures plus ``by_subgroup`` (when any item has a subgroup) and ``by_source`` (several sources)."""
    out: dict[str, Any] = {"overall": _block(ans, np.ones(len(ans.ids), dtype=bool), n_boot, seed)}
    if any(ans.subgroups):
        out["by_subgroup"] = _groups(ans, ans.subgroups, n_boot, seed)
    if len(set(ans.sources)) > 1:
        out["by_source"] = _groups(ans, ans.sources, n_boot, seed)
    return out


def evaluate(generations_path: str | os.PathLike, dataset: Iterable[Mapping[str, Any]],
             out_path: str | os.PathLike | None = None, n_boot: int = N_BOOT, seed: int = 0,
             dataset_name: str | None = None, n: int | None = None, allow_missing: bool = False) -> dict[str, Any]:
    """Accuracy of one generations file on ``dataset``; written atomically to ``out_path`` as JSON when given.

    The result records the model, dataset, prompt kind and decoding settings (from the generations
    sidecar), the bootstrap seed and size, and the provenance record (:func:`clinical_r1.records.provenance`).
    """
    ans = load_answers(generations_path, dataset, dataset_name=dataset_name, n=n, allow_missing=allow_missing)
    meta = ans.meta
    result: dict[str, Any] = {
        "model": meta.get("model"),
        "dataset": dataset_name or meta.get("dataset"),
        "prompt_kind": meta.get("prompt_kind"),
        "decoding": {k: meta.get(k) for k in ("temperature", "top_p", "max_new_tokens", "n", "seed")},
        "backend": meta.get("backend"),
        "generations": str(ans.path),
        "n_samples": ans.n,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "confidence": CONFIDENCE},
        "provenance": provenance(),
        "created": utc_now(),
        "scale": "fraction",
        **accuracy_figures(ans, n_boot=n_boot, seed=seed),
        "missing": ans.missing,
    }
    if out_path is not None:
        write_json(result, out_path)
    return result


def compare(gen_a: str | os.PathLike, gen_b: str | os.PathLike, dataset: Iterable[Mapping[str, Any]],
            n_boot: int = N_BOOT, seed: int = 0, dataset_name: str | None = None,
            allow_missing: bool = False) -> dict[str, Any]:
    """Paired comparison of two generations files on the same questions of ``dataset``.

    ``difference`` = accuracy(A) − accuracy(B) (mean@N per question), with a paired bootstrap interval
    (the same resampled questions for both) and the share of resamples where A ≤ B. ``mcnemar``: the exact
    McNemar test on per-question correctness of the majority vote (the single answer when N = 1).
    """
    items = list(dataset)
    a = load_answers(gen_a, items, dataset_name=dataset_name, allow_missing=allow_missing)
    b = load_answers(gen_b, items, dataset_name=dataset_name, allow_missing=allow_missing)
    acc_a, acc_b = a.correct.mean(axis=1), b.correct.mean(axis=1)
    diff = acc_a - acc_b
    maj_a = np.array([is_correct_letter(m, g) for m, g in zip(a.majority(), a.gold)])
    maj_b = np.array([is_correct_letter(m, g) for m, g in zip(b.majority(), b.gold)])
    return {
        "a": {"generations": str(a.path), "model": a.meta.get("model"), "accuracy": float(acc_a.mean())},
        "b": {"generations": str(b.path), "model": b.meta.get("model"), "accuracy": float(acc_b.mean())},
        "dataset": dataset_name or a.meta.get("dataset"),
        "n_questions": len(items),
        "difference": float(diff.mean()),
        "difference_ci": bootstrap_ci(diff, n_boot=n_boot, seed=seed),
        "p_a_not_better": _share_not_better(diff, n_boot, seed),
        "mcnemar": mcnemar_exact(maj_a, maj_b),
        "bootstrap": {"n_boot": n_boot, "seed": seed, "confidence": CONFIDENCE},
    }


def _share_not_better(diff: np.ndarray, n_boot: int, seed: int) -> float:
    """One-sided paired-bootstrap p-value: the share of resamples whose mean difference is ≤ 0."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    return float((diff[idx].mean(axis=1) <= 0).mean())


# ---------------------------------------------------------------------------------------------------
# The paper's numbers
# ---------------------------------------------------------------------------------------------------


def accuracy_table(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per :func:`evaluate` result, in percent like the paper: model, dataset, prompt, N, accuracy with
    its 95% interval, accuracy over valid answers, valid ratio and majority-vote accuracy (``pandas.DataFrame(rows)``)."""
    def pct(x: float | None) -> float | None:
        return None if x is None else round(100 * x, 2)

    rows = []
    for r in results:
        o = r["overall"]
        lo, hi = o["accuracy_ci"]
        rows.append({"model": r.get("model"), "dataset": r.get("dataset"), "prompt_kind": r.get("prompt_kind"),
                     "n_samples": r.get("n_samples"), "n_questions": o["n_questions"], "accuracy": pct(o["accuracy"]),
                     "ci_low": pct(lo), "ci_high": pct(hi), "accuracy_valid": pct(o["accuracy_valid"]),
                     "valid_ratio": pct(o["valid_ratio"]), "majority_accuracy": pct(o["majority_accuracy"])})
    return rows


def load_paper_reference(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The numbers reported in arXiv 2512.00601 v1 (``results/paper_reference.json``), checked for shape.

    ``accuracy[dataset][method]`` in percent; ``cognitive_behaviours`` and ``faithfulness`` on MedMCQA as
    ``[metric][method]``; ``methods`` lists the five methods in the paper's order.
    """
    p = Path(path) if path is not None else PAPER_REFERENCE
    try:
        ref = read_json(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: paper reference file not found") from None
    methods = ref.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"{p}: 'methods' must be a non-empty list")
    for table in ("accuracy", "cognitive_behaviours", "faithfulness"):
        values = ref.get(table, {}).get("values")
        if not isinstance(values, dict) or not values:
            raise ValueError(f"{p}: '{table}.values' must be a non-empty object")
        for row, by_method in values.items():
            if set(by_method) != set(methods):
                raise ValueError(f"{p}: {table}.{row} has methods {sorted(by_method)}, expected {sorted(methods)}")
    return ref
