"""Benchmarks -> one record schema; the paper's MedQA split; decontamination.

    from clinical_r1.data import load_benchmark, make_splits
    medqa = load_benchmark("medqa", path="data/medqa/US/train.jsonl")       # local jind11 file, 5 options (the paper's)
    medqa = load_benchmark("medqa", split="train")                           # hub (online): bigbio/med_qa, 5 options
    medqa4 = load_benchmark("medqa4")                                        # GBaker/MedQA-USMLE-4-options test
    manifest = make_splits(medqa, "data/splits", eval_sets={"medqa_test": load_benchmark("medqa")})

    python -m clinical_r1 split --train medqa:path/to/train.jsonl --out data/splits

MedQA comes in two variants, each a benchmark name of its own, so that every result names the one it used:
``medqa`` is the US **5-option** release (options A–E; train 10,178, dev 1,272, test 1,273), the one the authors
read (BoyangGu1/Clinical-R1-3B ``raw2csv.py``) and the one the paper's MedQA numbers are on; ``medqa4`` is the
4-option release (one distractor deleted per question; same questions and sizes), ``GBaker/MedQA-USMLE-4-options``
on the hub. A file whose rows have another number of options than its variant raises (load a 4-option file as
``medqa4``). The hub copy of ``medqa`` is the parquet conversion of ``bigbio/med_qa`` config ``med_qa_en_source``
(its loading script no longer runs in current ``datasets``; the hub's ``refs/convert/parquet`` revision keeps
per-config parquet files), whose options are a list of ``{"key", "value"}``; see the README for what was verified.

Every loader returns a ``datasets.Dataset`` with the columns of ``COLUMNS``:
``id`` (str), ``question`` (the stem), ``options`` (list of str in letter order A, B, C, …), ``answer``
(the gold letter), ``source``, ``subgroup`` (MedQA step, MedXpertQA body system, MedMCQA subject; ""),
``explanation`` ("" when none) and ``meta`` (a JSON string of the remaining fields).

Rows that cannot be scored (no stem, no options, a gold letter outside the options, wrong types) raise
:class:`DataError` naming the file, the row (1-based line number) and the field. With ``strict=False``
they are skipped and a :class:`SkipReport` says which and why; nothing is dropped silently. Rows that are
odd but answerable (two options with the same text, an answer text that disagrees with the gold letter,
an explanation or metadata of the wrong type) load by default, as they count in every published
accuracy: each is listed in the report's ``flagged`` rows and logged once as a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from clinical_r1.errors import ClinicalR1Error, DataError, UnknownName, UsageError
from clinical_r1.files import RowError, iter_rows, read_json, sha256_file, write_json, write_jsonl
from clinical_r1.parsing import LETTERS

log = logging.getLogger(__name__)

COLUMNS = ("id", "question", "options", "answer", "source", "subgroup", "explanation", "meta")

HUB_IDS = {
    "medqa": ("bigbio/med_qa", None),  # read from HUB_PARQUET below
    "medqa4": ("GBaker/MedQA-USMLE-4-options", None),
    "medmcqa": ("openlifescienceai/medmcqa", None),
    "medxpertqa": ("TsinghuaC3I/MedXpertQA", "Text"),
    "pubmedqa": ("qiaojin/PubMedQA", "pqa_labeled"),
}
# Hub copies read from a parquet conversion: name -> (revision, folder of the config's split folders)
HUB_PARQUET = {"medqa": ("refs/convert/parquet", "med_qa_en_source")}
MEDQA_OPTIONS = {"medqa": 5, "medqa4": 4}  # the options every row of a MedQA variant has
PUBMEDQA_CHOICES = ("yes", "no", "maybe")
# The split each benchmark is evaluated on, and its full published size: the denominators of every
# published accuracy (MedQA-USMLE test, 5 or 4 options, MedMCQA validation — its test answers are hidden —, MedXpertQA
# Text test). A hub load of that split with another row count logs a warning. PubMedQA's labelled set has
# one split of 1,000.
EVAL_SPLITS = {"medqa": "test", "medqa4": "test", "medmcqa": "validation", "medxpertqa": "test", "pubmedqa": "train"}
PUBLISHED_SIZES = {"medqa": 1273, "medqa4": 1273, "medmcqa": 4183, "medxpertqa": 2450, "pubmedqa": 1000}


@dataclass
class SkipReport:
    """What ``strict=False`` skipped, and why."""

    source: str
    total: int = 0
    kept: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"row", "field", "reason"}
    flagged: list[dict[str, Any]] = field(default_factory=list)  # kept, but odd: {"row", "id", "field", "note"}

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.skipped:
            out[s["field"]] = out.get(s["field"], 0) + 1
        return out

    def __str__(self) -> str:
        flagged = f", {len(self.flagged)} kept with a note" if self.flagged else ""
        return f"{self.source}: kept {self.kept} of {self.total}{flagged}, skipped {self.n_skipped} {self.by_reason()}"


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Field helpers (raise RowError; the caller adds file and row)
# ---------------------------------------------------------------------------------------------------


def _req(raw: Mapping[str, Any], key: str) -> Any:
    if key not in raw or raw[key] is None:
        raise RowError(key, "missing field")
    return raw[key]


def _text(raw: Mapping[str, Any], key: str) -> str:
    v = _req(raw, key)
    if not isinstance(v, str):
        raise RowError(key, f"expected a string, got {type(v).__name__}")
    if not v.strip():
        raise RowError(key, "empty text")
    return v.strip()


def _options(v: Any, key: str = "options") -> list[str]:
    """Options from a {"A": ...} dict (sorted by letter) or a list, validated."""
    if isinstance(v, Mapping):
        keys = list(v.keys())
        expected = list(LETTERS[: len(keys)])
        if sorted(str(k).strip().upper() for k in keys) != expected:
            raise RowError(key, f"option letters {keys} are not A.. in sequence")
        opts = [v[k] for k in sorted(keys, key=lambda k: str(k).strip().upper())]
    elif isinstance(v, (list, tuple)) and v and all(isinstance(o, Mapping) and set(o) == {"key", "value"} for o in v):
        return _options({o["key"]: o["value"] for o in v}, key)  # bigbio's [{"key": "A", "value": ...}, ...]
    elif isinstance(v, (list, tuple)):
        opts = list(v)
    else:
        raise RowError(key, f"expected a dict of letters or a list, got {type(v).__name__}")
    if len(opts) < 2:
        raise RowError(key, f"needs at least 2 options, got {len(opts)}")
    if len(opts) > len(LETTERS):
        raise RowError(key, f"too many options ({len(opts)})")
    clean = []
    for i, o in enumerate(opts):
        if isinstance(o, (int, float)) and not isinstance(o, bool):
            o = str(o)
        if not isinstance(o, str):
            raise RowError(key, f"option {LETTERS[i]} is {type(o).__name__}, not a string")
        if not o.strip():
            raise RowError(key, f"option {LETTERS[i]} is empty")
        clean.append(o.strip())
    return clean


def _duplicate_options(options: Sequence[str]) -> list[str]:
    """Option texts that occur more than once (case and spacing folded). The item stays answerable: its
    gold is a letter, and published accuracies count it (MedMCQA dev holds several)."""
    folded = [" ".join(o.lower().split()) for o in options]
    return sorted({o for o in folded if folded.count(o) > 1})


def _letter(v: Any, options: Sequence[str], key: str) -> str:
    if not isinstance(v, str):
        raise RowError(key, f"expected a letter, got {type(v).__name__} {v!r}")
    s = v.strip().upper()
    if len(s) != 1 or s not in LETTERS:
        raise RowError(key, f"gold answer {v!r} is not a letter")
    if LETTERS.index(s) >= len(options):
        raise RowError(key, f"gold letter {s} is not among the {len(options)} options")
    return s


_NOTES = "_notes"  # a normaliser's notes on a usable row: [(field, note)], moved into the load report


def _record(id_: Any, question: str, options: list[str], answer: str, source: str, subgroup: str = "",
            explanation: Any = "", meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    notes = []
    fields = {"source": source, "subgroup": subgroup, "explanation": explanation}
    for name, v in fields.items():  # free text of the wrong type: kept as text, with a note
        if v is not None and not isinstance(v, str):
            notes.append((name, f"{type(v).__name__} where text was expected; stored as JSON text"))
            fields[name] = json.dumps(v, ensure_ascii=False, default=str)
    return {
        "id": str(id_),
        "question": question,
        "options": options,
        "answer": answer,
        "source": fields["source"] or "",
        "subgroup": fields["subgroup"] or "",
        "explanation": fields["explanation"] or "",
        "meta": json.dumps(dict(meta or {}), ensure_ascii=False, default=str, sort_keys=True),
        _NOTES: notes,
    }


def _id(raw: Mapping[str, Any], prefix: str, row: int, *keys: str) -> str:
    for k in keys:
        if raw.get(k) not in (None, ""):
            return f"{prefix}-{raw[k]}"
    return f"{prefix}-{row}"


# ---------------------------------------------------------------------------------------------------
# One normaliser per benchmark family: raw dict -> record
# ---------------------------------------------------------------------------------------------------


def _medqa(raw: Mapping[str, Any], row: int, src: str, variant: str = "medqa", **_: Any) -> dict[str, Any]:
    """MedQA USMLE, ``medqa`` (5 options) or ``medqa4``: jind11 JSONL, hub (bigbio source parquet, GBaker
    4-option), MedAgentsBench, uniform. A row with another number of options than the variant's raises."""
    question = _text(raw, "question")
    options = _options(_req(raw, "options"))
    want = MEDQA_OPTIONS[variant]
    if len(options) != want:
        other = next((n for n, k in MEDQA_OPTIONS.items() if k == len(options)), None)
        raise RowError("options", f"{len(options)} options, but {variant} is the {want}-option MedQA release"
                                  + (f"; load this file as {other}" if other else ""))
    notes = []
    if "answer_idx" in raw:
        answer = _letter(raw["answer_idx"], options, "answer_idx")
        if isinstance(raw.get("answer"), str) and len(raw["answer"].strip()) > 1:
            if raw["answer"].strip() != options[LETTERS.index(answer)]:
                notes.append(("answer", f"answer text does not match option {answer}; answer_idx {answer} is the gold"))
    else:
        answer = _letter(_req(raw, "answer"), options, "answer")
    meta = {k: raw[k] for k in ("meta_info", "metamap_phrases") if k in raw}
    rec = _record(raw.get("id") or _id(raw, variant, row, "realidx"), question, options, answer,
                  raw.get("source") or src, raw.get("subgroup") or raw.get("meta_info", ""),
                  raw.get("explanation", ""), meta)
    rec[_NOTES] += notes
    return rec


def _medmcqa(raw: Mapping[str, Any], row: int, src: str, cop_base: int | None = None, **_: Any) -> dict[str, Any]:
    """MedMCQA: hub (opa..opd, 0-based cop), original JSON (1-based cop), MedAgentsBench/uniform (options dict)."""
    question = _text(raw, "question")
    if "opa" in raw:
        options = _options([raw.get(k) if raw.get(k) is not None else "" for k in ("opa", "opb", "opc", "opd")], "opa..opd")
        cop = _req(raw, "cop")
        if isinstance(cop, bool) or not isinstance(cop, int):
            raise RowError("cop", f"expected an integer, got {type(cop).__name__} {cop!r}")
        if cop_base is None:
            raise RowError("cop", "cop_base unknown: pass cop_base=0 (hub) or cop_base=1 (original JSON release)")
        idx = cop - cop_base
        if not 0 <= idx < len(options):
            raise RowError("cop", f"cop={cop} is out of range for {len(options)} options (cop_base={cop_base})")
        answer = LETTERS[idx]
    else:
        options = _options(_req(raw, "options"))
        key = "answer_idx" if "answer_idx" in raw else "answer"
        answer = _letter(_req(raw, key), options, key)
    meta = {k: raw[k] for k in ("choice_type", "topic_name") if k in raw}
    return _record(raw.get("id") or _id(raw, "medmcqa", row, "realidx"), question, options, answer,
                   raw.get("source") or src, raw.get("subgroup") or raw.get("subject_name") or "",
                   raw.get("exp") or raw.get("explanation") or "", meta)


_ANSWER_CHOICES = re.compile(r"\s*Answer Choices:\s*\(A\).*\Z", re.S)


def _medxpertqa(raw: Mapping[str, Any], row: int, src: str, **_: Any) -> dict[str, Any]:
    """MedXpertQA Text: hub (options A–J, label, medical_task, body_system, question_type), MedAgentsBench, uniform.

    The stem's repeated ``Answer Choices: (A) …`` block is stripped.
    """
    question = _ANSWER_CHOICES.sub("", _text(raw, "question")).strip()
    if not question:
        raise RowError("question", "empty stem after removing the Answer Choices block")
    options = _options(_req(raw, "options"))
    key = next((k for k in ("label", "answer_idx", "answer") if k in raw), "label")
    answer = _letter(_req(raw, key), options, key)
    meta = {k: raw[k] for k in ("medical_task", "question_type") if k in raw}
    return _record(raw.get("id") or _id(raw, "medxpertqa", row, "realidx"), question, options, answer,
                   raw.get("source") or src, raw.get("subgroup") or raw.get("body_system", ""), "", meta)


def _pubmedqa(raw: Mapping[str, Any], row: int, src: str, **_: Any) -> dict[str, Any]:
    """PubMedQA: hub pqa_labeled (context, final_decision) or MedAgentsBench/uniform (options yes/no/maybe as A/B/C)."""
    if "final_decision" in raw:
        ctx = raw.get("context") or {}
        contexts = ctx.get("contexts", []) if isinstance(ctx, Mapping) else []
        q = _text(raw, "question")
        question = ("\n".join(contexts) + "\n" + q).strip() if contexts else q
        decision = str(_req(raw, "final_decision")).strip().lower()
        if decision not in PUBMEDQA_CHOICES:
            raise RowError("final_decision", f"{decision!r} is not yes/no/maybe")
        options, answer = list(PUBMEDQA_CHOICES), LETTERS[PUBMEDQA_CHOICES.index(decision)]
        rid = raw.get("id") or _id(raw, "pubmedqa", row, "pubid")
        expl = raw.get("long_answer", "")
    else:
        question = _text(raw, "question")
        options = _options(_req(raw, "options"))
        key = "answer_idx" if "answer_idx" in raw else "answer"
        answer = _letter(_req(raw, key), options, key)
        rid = raw.get("id") or _id(raw, "pubmedqa", row, "realidx")
        expl = raw.get("answer_rationale") or raw.get("explanation") or ""
    return _record(rid, question, options, answer, raw.get("source") or src, raw.get("subgroup", ""), expl)


def _uniform(raw: Mapping[str, Any], row: int, src: str, **_: Any) -> dict[str, Any]:
    """This project's uniform schema (``id, question, options, answer`` [+ source, subgroup, explanation])."""
    question = _text(raw, "question")
    options = _options(_req(raw, "options"))
    answer = _letter(_req(raw, "answer"), options, "answer")
    rid = _req(raw, "id")
    if not isinstance(rid, (str, int)) or not str(rid).strip():
        raise RowError("id", f"expected a non-empty string id, got {rid!r}")
    extra = {k: v for k, v in raw.items() if k not in COLUMNS}
    return _record(rid, question, options, answer, raw.get("source") or src,
                   raw.get("subgroup") or raw.get("specialty", ""), raw.get("explanation", ""), extra)


def _medqa4(raw: Mapping[str, Any], row: int, src: str, **kw: Any) -> dict[str, Any]:
    return _medqa(raw, row, src, variant="medqa4", **kw)


NORMALISERS: dict[str, Callable[..., dict[str, Any]]] = {
    "medqa": _medqa,
    "medqa4": _medqa4,
    "medmcqa": _medmcqa,
    "medxpertqa": _medxpertqa,
    "pubmedqa": _pubmedqa,
    "jsonl": _uniform,
    "sample": _uniform,
}


# ---------------------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------------------


def sample_path() -> Path:
    """The bundled, project-written sample questions (original USMLE-style vignettes)."""
    return Path(str(resources.files("clinical_r1") / "resources" / "sample_questions.jsonl"))


TRACE_FILES = {"full": "sample_traces.jsonl", "compact": "sample_traces_compact.jsonl"}


def sample_traces_path(style: str = "full") -> Path:
    """Project-written exemplary ``<dx>``/``<conclusion>`` traces for the sample questions.

    ``full``: ~340-token traces (impression, every key finding, a reasoned verdict per option).
    ``compact``: ~130 tokens, derived from the full ones by ``distill.compact_trace`` (the CPU demo's cold start).
    """
    if style not in TRACE_FILES:
        raise UsageError(f"unknown trace style {style!r}; choose one of {list(TRACE_FILES)}")
    return Path(str(resources.files("clinical_r1") / "resources" / TRACE_FILES[style]))


def _build(rows: Iterable[tuple[int, Any]], name: str, src: str, strict: bool, **kw: Any):
    from datasets import Dataset, Features, Sequence as HFSequence, Value

    norm = NORMALISERS[name]
    report = SkipReport(src)
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for row, raw in rows:
        report.total += 1
        try:
            if isinstance(raw, RowError):
                raise raw
            if not isinstance(raw, Mapping):
                raise RowError("row", f"expected a JSON object, got {type(raw).__name__}")
            rec = norm(raw, row, src, **kw)
            if rec["id"] in seen:
                raise RowError("id", f"duplicate id {rec['id']!r} (first at row {seen[rec['id']]})")
        except RowError as e:
            if strict:
                raise DataError(e.reason, file=src, row=row, field=e.field) from None
            report.skipped.append({"row": row, "field": e.field, "reason": e.reason})
            continue
        notes = rec.pop(_NOTES, [])
        dup = _duplicate_options(rec["options"])
        if dup:
            notes.append(("options", f"duplicate options {dup}; loaded (the gold letter is defined)"))
        for field_name, note in notes:
            report.flagged.append({"row": row, "id": rec["id"], "field": field_name, "note": note})
            log.warning("%s: row %d (id %s): field '%s': %s", src, row, rec["id"], field_name, note)
        seen[rec["id"]] = row
        records.append(rec)
    report.kept = len(records)
    if report.n_skipped:
        log.warning("%s", report)
    features = Features({
        "id": Value("string"), "question": Value("string"), "options": HFSequence(Value("string")),
        "answer": Value("string"), "source": Value("string"), "subgroup": Value("string"),
        "explanation": Value("string"), "meta": Value("string"),
    })
    ds = Dataset.from_list(records, features=features) if records else Dataset.from_dict(
        {c: [] for c in COLUMNS}, features=features)
    return ds, report


def load_benchmark(name: str, path: str | os.PathLike | None = None, split: str | None = None, strict: bool = True,
                   limit: int | None = None, cop_base: int | None = None, with_report: bool = False):
    """Load a benchmark as a ``datasets.Dataset`` in the record schema.

    ``name``: ``medqa`` (5 options, the paper's), ``medqa4`` (4 options), ``medmcqa``, ``medxpertqa``, ``pubmedqa``, ``jsonl`` (the uniform schema) or
    ``sample`` (the bundled questions). With ``path`` a local ``.jsonl``/``.json``/``.parquet`` file is
    read (always offline); without it the hub copy of ``split`` is downloaded (``HUB_IDS``; default: the
    evaluation split of ``EVAL_SPLITS``). ``cop_base`` is MedMCQA's
    answer-index base for ``opa..opd`` files: 0 for the hub, 1 for the original JSON release; detected
    from the data when a file holds a 0 (→0) or a 4 (→1).

    Returns the Dataset when ``strict`` (rows that cannot be scored raise :class:`DataError`; odd but
    answerable rows load and are logged); with ``strict=False`` (unusable rows skipped) or ``with_report``
    returns ``(dataset, SkipReport)``, whose ``flagged`` lists the odd rows that were kept.
    """
    if name not in NORMALISERS:
        raise UsageError(f"unknown benchmark {name!r}; choose one of {sorted(NORMALISERS)}")
    split = split or EVAL_SPLITS.get(name, "test")
    if name == "sample" and path is None:
        path = sample_path()
    if path is None and name == "jsonl":
        raise UsageError("benchmark 'jsonl' needs a path")
    if path is not None:
        p = Path(path)
        rows = list(iter_rows(p))
        src = str(p)
        if name == "medmcqa" and cop_base is None:
            cops = {r.get("cop") for _, r in rows if isinstance(r, Mapping) and "cop" in r}
            cop_base = 0 if 0 in cops else 1 if 4 in cops else None
    else:
        rows, src = _hub_rows(name, split)
        if name == "medmcqa" and cop_base is None:
            cop_base = 0
    if limit is not None:
        rows = rows[:limit]
    ds, report = _build(rows, name, src, strict, cop_base=cop_base)
    if path is None and limit is None and split == EVAL_SPLITS.get(name):
        check_published_size(name, report)
    return (ds, report) if with_report or not strict else ds


def check_published_size(name: str, report: SkipReport) -> bool:
    """Warn when a benchmark's evaluation split does not hold its published number of rows (or some were
    skipped): accuracies would then not be comparable with the paper's. True when they match."""
    want = PUBLISHED_SIZES.get(name)
    if want is None or (report.total == want and report.kept == want):
        return True
    log.warning("%s: %d rows read, %d kept; the published %s %s split has %d: accuracies on it are not "
                "comparable with published ones", report.source, report.total, report.kept, name,
                EVAL_SPLITS[name], want)
    return False


def _hub_rows(name: str, split: str) -> tuple[list[tuple[int, Any]], str]:
    from datasets import load_dataset

    if name not in HUB_IDS:
        raise UsageError(f"benchmark {name!r} has no hub copy; pass path=")
    hub_id, config = HUB_IDS[name]
    try:
        if name in HUB_PARQUET:  # the parquet conversion of a dataset whose loading script is gone
            revision, data_dir = HUB_PARQUET[name]
            ds = load_dataset(hub_id, revision=revision, data_dir=data_dir, split=split)
        elif config:
            ds = load_dataset(hub_id, config, split=split)
        else:
            ds = load_dataset(hub_id, split=split)
    except Exception as e:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        raise DataError(f"could not load {hub_id} split {split!r} from the hub ({type(e).__name__}: {e}); "
                           f"download it and pass path= to load a local file") from e
    return list(enumerate(ds, start=1)), f"hf://{hub_id}/{split}"


def load_sample(limit: int | None = None):
    """The bundled sample questions as a Dataset (the offline default for the demo and the tests)."""
    return load_benchmark("sample", limit=limit)


def to_records(ds) -> list[dict[str, Any]]:
    return [dict(r) for r in ds]


# ---------------------------------------------------------------------------------------------------
# Decontamination and the paper's split
# ---------------------------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]")


def normalise_text(text: str) -> str:
    """Case, whitespace and punctuation folded: the key for near-exact duplicate detection."""
    return " ".join(_PUNCT.sub(" ", text.casefold()).split())


def _keys(ds) -> tuple[dict[str, str], dict[str, str]]:
    exact, norm = {}, {}
    for r in ds:
        exact.setdefault(r["question"] + "\x1f" + "\x1f".join(r["options"]), r["id"])
        norm.setdefault(normalise_text(r["question"]), r["id"])
    return exact, norm


def decontamination_report(train_splits: Mapping[str, Any], eval_sets: Mapping[str, Any]) -> dict[str, Any]:
    """Exact (stem + options) and normalised-stem duplicates between every training split and every
    evaluation set, and between the training splits themselves.

    Returns ``{"pairs": [{"train", "eval", "exact", "normalised", "examples"}], "overlap": total}``.
    """
    keys = {n: _keys(d) for n, d in {**train_splits, **eval_sets}.items()}
    pairs = []
    names = list(train_splits)
    targets = [(a, b) for a in names for b in eval_sets] + [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    for a, b in targets:
        (ea, na), (eb, nb) = keys[a], keys[b]
        exact = sorted(set(ea) & set(eb))
        norm = sorted(set(na) & set(nb))
        pairs.append({
            "train": a, "eval": b, "exact": len(exact), "normalised": len(norm),
            "examples": [[na[k], nb[k]] for k in norm[:5]],
        })
    counts = {n: len(d) for n, d in {**train_splits, **eval_sets}.items()}  # rows checked, per set
    return {"pairs": pairs, "overlap": sum(p["normalised"] for p in pairs), "counts": counts}


def contaminated_ids(train, eval_sets: Mapping[str, Any]) -> dict[str, list[str]]:
    """The ids of ``train`` rows whose normalised stem is in an evaluation set, by evaluation set: the rows that
    :func:`decontamination_report` counts, for a caller that drops them (imported traces)."""
    mine = _keys(train)[1]
    return {name: sorted(mine[k] for k in set(mine) & set(_keys(ds)[1])) for name, ds in eval_sets.items()}


class ContaminationError(ClinicalR1Error, RuntimeError):
    """Training and evaluation items overlap; the message lists the pairs."""


@dataclass(frozen=True)
class SplitSizes:
    sft: int = 5000  # cold-start SFT half (the paper: ~5,000 MedQA questions with R1 traces)
    rl: int = 5000  # CRPO half (the paper: the other ~5,000)
    dev: int = 178  # dev slice for SFT checkpoint selection; 5000+5000+178 = MedQA-USMLE train (10,178)
    test: int = 0  # held-out test slice; 0 for MedQA (it has its own test set), >0 for the bundled demo data


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A hard link where the filesystem has them, else a copy (a Google Drive mount on Colab has none)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_splits(train, out_dir: str | os.PathLike, sizes: SplitSizes | Mapping[str, int] = SplitSizes(),
                seed: int = 42, eval_sets: Mapping[str, Any] | None = None, allow_overlap: bool = False,
                dedupe: bool = True, sft_from: Iterable[str] | None = None) -> dict[str, Any]:
    """Split ``train`` into disjoint ``sft``/``rl``/``dev`` (and optional ``test``) JSONL files plus ``manifest.json``.

    Seeded (numpy ``default_rng(seed).permutation``) and reproducible. Items whose normalised stem repeats
    an earlier one are dropped first when ``dedupe`` (so halves are disjoint in text, not only in id).
    The decontamination check runs before anything is written; any overlap with ``eval_sets`` (or between
    the halves) raises :class:`ContaminationError` unless ``allow_overlap``.

    ``sft_from``: ids of the items that may go to the SFT half and the dev slice (those with a kept public
    trace, :mod:`clinical_r1.traces`): both are drawn, seeded, from them; the RL half and the test slice from
    the rest. RL then over-represents the questions without a kept trace (those the teacher got wrong).
    """
    import numpy as np

    sizes = sizes if isinstance(sizes, SplitSizes) else SplitSizes(**sizes)
    out = Path(out_dir)
    if dedupe:
        seen: set[str] = set()
        keep = []
        for i, r in enumerate(train):
            k = normalise_text(r["question"])
            if k not in seen:
                seen.add(k)
                keep.append(i)
        dropped = len(train) - len(keep)
        train = train.select(keep)
    else:
        dropped = 0
    need = sizes.sft + sizes.rl + sizes.dev + sizes.test
    if need > len(train):
        raise DataError(f"split sizes sft={sizes.sft} + rl={sizes.rl} + dev={sizes.dev} + test={sizes.test} = {need} "
                         f"exceed the {len(train)} training items available")
    order = np.random.default_rng(seed).permutation(len(train)).tolist()
    if sft_from is not None:  # sft, then dev, from the eligible items; the rest after them, in seeded order
        eligible, ids = set(sft_from), train["id"]
        pool = [i for i in order if ids[i] in eligible]
        if sizes.sft + sizes.dev > len(pool):
            raise DataError(f"split sizes sft={sizes.sft} + dev={sizes.dev} exceed the {len(pool)} training items "
                            f"with a kept trace (sft_from)")
        chosen = set(pool[: sizes.sft + sizes.dev])
        others = [i for i in order if i not in chosen]  # seeded order: questions without a trace and unused ones
        order = pool[: sizes.sft] + others[: sizes.rl] + pool[sizes.sft : sizes.sft + sizes.dev] + others[sizes.rl :]
    bounds = np.cumsum([0, sizes.sft, sizes.rl, sizes.dev, sizes.test]).tolist()
    idx = {n: order[bounds[i] : bounds[i + 1]] for i, n in enumerate(("sft", "rl", "dev", "test"))}
    splits = {n: train.select(sorted(i)) for n, i in idx.items() if n != "test" or sizes.test}
    report = decontamination_report(splits, dict(eval_sets or {}))
    if report["overlap"] and not allow_overlap:
        bad = [p for p in report["pairs"] if p["normalised"]]
        raise ContaminationError(
            "training/evaluation overlap: " + "; ".join(
                f"{p['train']}~{p['eval']}: {p['exact']} exact, {p['normalised']} normalised (e.g. {p['examples'][:2]})"
                for p in bad) + ". Remove them or pass allow_overlap=True (--allow-overlap) to proceed knowingly.")
    manifest = {
        "seed": seed,
        "sizes": {"sft": sizes.sft, "rl": sizes.rl, "dev": sizes.dev, "test": sizes.test},
        "source_count": len(train) + dropped,
        "duplicates_dropped": dropped,
        "sft_from": None if sft_from is None else len(eligible),  # items eligible for sft/dev (kept traces)
        "files": {},
        "decontamination": report,
        "allow_overlap": allow_overlap,
    }

    def fill(tmp: Path) -> dict[str, Any]:
        for n, d in splits.items():
            path = write_jsonl(to_records(d), tmp / f"{n}.jsonl")
            manifest["files"][n] = {"path": path.name, "count": len(d), "sha256": sha256_file(path)}
        write_json(manifest, tmp / "manifest.json")
        return manifest

    return write_split_set(out, fill)


_FILLING: set[Path] = set()  # temporary set folders being filled by this process
SPLIT_SET = ("sft.jsonl", "rl.jsonl", "dev.jsonl", "test.jsonl", "manifest.json", "eval")  # replaced together


def write_split_set(out_dir: str | os.PathLike, fill: Callable[[Path], Any]) -> Any:
    """Write a split's files and manifest as one set: ``fill(tmp)`` writes them into a temporary sibling folder,
    which then replaces ``out_dir`` (a crash leaves the old set or the new one, never a mix). Other files in
    ``out_dir`` (traces, the teacher's paid cache) are carried over by hard link. One writer at a time
    (:mod:`clinical_r1.locks`). Returns what ``fill`` returns."""

    from clinical_r1.locks import exclusive

    out = Path(out_dir)
    if out.resolve() in _FILLING:  # already the temporary folder of an enclosing set (prepare_data)
        return fill(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out, "split folder"):
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
        old = None
        _FILLING.add(tmp.resolve())
        try:
            result = fill(tmp)
            for entry in (out.iterdir() if out.is_dir() else []):
                if entry.name in SPLIT_SET or (tmp / entry.name).exists():
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
                else:
                    _link_or_copy(entry, tmp / entry.name)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.rename(out, old)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and not out.exists():
                os.rename(old, out)  # put the previous set back
            raise
        finally:
            _FILLING.discard(tmp.resolve())
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return result


def load_split(out_dir: str | os.PathLike, name: str):
    """One split written by :func:`make_splits` (``sft``, ``rl`` or ``dev``), checked against its manifest hash."""
    out = Path(out_dir)
    manifest = read_json(out / "manifest.json")
    if name not in manifest["files"]:
        raise UnknownName(f"{out}/manifest.json has no split {name!r}; it has {sorted(manifest['files'])}")
    path = out / manifest["files"][name]["path"]
    if sha256_file(path) != manifest["files"][name]["sha256"]:
        raise DataError(f"{path}: content hash differs from manifest.json; the split was modified")
    return load_benchmark("jsonl", path=path)
