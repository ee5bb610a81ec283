"""The bundled, project-written sample data: original questions and exemplary CRPO traces.

    .venv/bin/pytest tests/test_resources.py -q

Loads both files with plain ``json`` (no package loader), checks the question set's shape and balance,
and tests the gold: every question has exactly one trace, and every trace, wrapped by ``CRPO.render``,
earns the maximum CRPO reward.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest

from clinical_r1.formats import CRPO
from clinical_r1.rewards import score

RESOURCES = Path(__file__).resolve().parents[1] / "clinical_r1" / "resources"
QUESTION_KEYS = {"id", "question", "options", "answer", "explanation", "specialty"}
TRACE_KEYS = {"id", "dx", "conclusion"}
LETTERS = "ABCDE"
MAX_SCORE = {"accuracy": 1.0, "clinical_reasoning": 1.5, "consistency": 1.0, "total": 12.0}
# a clinical value with its unit, as the stems must quote them ("TSH 12 mU/L", "BP 150/95 mm Hg", "38.9°C")
VALUE_WITH_UNIT = re.compile(r"\d+(?:\.\d+)?(?:/\d+)?\s*(?:mm Hg|°C|mg/dL|mEq/L|mU/L|U/L|g/dL|ng/mL|/mm3|mmol/L|/min|%|kg)")


def _read(name: str) -> list[dict]:
    path = RESOURCES / name
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise AssertionError(f"{path}:{n}: invalid JSON: {e}") from e
    return rows


QUESTIONS = _read("sample_questions.jsonl")
TRACES = _read("sample_traces.jsonl")
BY_ID = {q["id"]: q for q in QUESTIONS}


def test_question_set_size_and_unique_ids():
    assert len(QUESTIONS) >= 64
    ids = [q["id"] for q in QUESTIONS]
    assert len(set(ids)) == len(ids), [i for i, c in collections.Counter(ids).items() if c > 1]


@pytest.mark.parametrize("q", QUESTIONS, ids=lambda q: q["id"])
def test_question_fields(q):
    assert set(q) == QUESTION_KEYS, f"{q['id']}: keys {sorted(q)}"
    assert len(q["options"]) in (4, 5), f"{q['id']}: {len(q['options'])} options"
    assert all(isinstance(o, str) and o.strip() for o in q["options"]), f"{q['id']}: empty option"
    assert len({o.strip().lower() for o in q["options"]}) == len(q["options"]), f"{q['id']}: duplicate options"
    assert not any(re.match(r"^[A-E][.)]\s", o) for o in q["options"]), f"{q['id']}: option has a letter prefix"
    assert q["answer"] in LETTERS[: len(q["options"])], f"{q['id']}: gold {q['answer']!r} out of range"
    assert q["question"].rstrip().endswith("?"), f"{q['id']}: no question line"
    assert len(VALUE_WITH_UNIT.findall(q["question"])) >= 2, f"{q['id']}: too few values with units"
    assert q["explanation"].strip() and q["specialty"].strip()


def test_question_set_balance():
    specialties = collections.Counter(q["specialty"] for q in QUESTIONS)
    assert len(specialties) >= 10, specialties
    sizes = collections.Counter(len(q["options"]) for q in QUESTIONS)
    assert sizes[4] >= 15 and sizes[5] >= 15, sizes
    letters = collections.Counter(q["answer"] for q in QUESTIONS)
    assert set(letters) == set(LETTERS), letters
    assert max(letters.values()) - min(letters.values()) <= 0.1 * len(QUESTIONS), letters


def test_every_question_has_exactly_one_trace():
    assert len(TRACES) == len(QUESTIONS) == 64
    ids = [t["id"] for t in TRACES]
    assert len(set(ids)) == len(ids), [i for i, c in collections.Counter(ids).items() if c > 1]
    assert not set(ids) - set(BY_ID), f"traces for unknown ids: {sorted(set(ids) - set(BY_ID))}"
    assert not set(BY_ID) - set(ids), f"questions without a trace: {sorted(set(BY_ID) - set(ids))}"
    assert ids == sorted(ids), "traces are not ordered by id"


@pytest.mark.parametrize("t", TRACES, ids=lambda t: t["id"])
def test_trace_shape(t):
    q = BY_ID[t["id"]]
    assert set(t) == TRACE_KEYS, f"{t['id']}: keys {sorted(t)}"
    dx, conclusion = t["dx"], t["conclusion"]
    assert dx.startswith("Initial impression:"), t["id"]
    assert 80 <= len(dx.split()) <= 200, f"{t['id']}: dx has {len(dx.split())} words"
    assert 20 <= len(conclusion.split()) <= 60, f"{t['id']}: conclusion has {len(conclusion.split())} words"
    missing = [L for L in LETTERS[: len(q["options"])] if f"{L} (" not in dx]
    assert not missing, f"{t['id']}: dx does not evaluate option(s) {missing}"
    assert "\\boxed" not in dx, f"{t['id']}: box inside dx"
    assert conclusion.count("\\boxed") == 1 and conclusion.endswith(f"\\boxed{{{q['answer']}}}"), t["id"]
    assert conclusion not in dx, f"{t['id']}: conclusion copies dx"


@pytest.mark.parametrize("t", TRACES, ids=lambda t: t["id"])
def test_trace_target_scores_maximum(t):
    q = BY_ID[t["id"]]
    target = CRPO.render(t["dx"], t["conclusion"])
    assert score(target, q["answer"], q["options"]) == MAX_SCORE, t["id"]


COMPACT = _read("sample_traces_compact.jsonl")


def test_compact_traces_are_the_full_traces_compacted():
    """The bundled compact file is exactly ``distill.compact_trace`` of the full traces (they cannot drift)."""
    from clinical_r1.distill import compact_trace

    assert [compact_trace(t, BY_ID[t["id"]]) for t in TRACES] == COMPACT


@pytest.mark.parametrize("t", COMPACT, ids=lambda t: t["id"])
def test_compact_trace_is_short_and_scores_maximum(t):
    q = BY_ID[t["id"]]
    target = CRPO.render(t["dx"], t["conclusion"])
    full = next(f for f in TRACES if f["id"] == t["id"])
    assert len(target.split()) <= 0.5 * len(CRPO.render(full["dx"], full["conclusion"]).split()), t["id"]
    assert t["dx"].count(" accepted.") == 1 and f"{q['answer']} accepted." in t["dx"], t["id"]
    assert score(target, q["answer"], q["options"]) == MAX_SCORE, t["id"]
