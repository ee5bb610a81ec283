"""Accuracy, majority vote, bootstrap, McNemar and bad generations files, on hand-computed examples.

    .venv/bin/pytest tests/test_evaluate.py -x -q
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clinical_r1 import evaluate as ev
from clinical_r1.evaluate import (EvaluationError, accuracy_table, bootstrap_ci, compare, evaluate, load_paper_reference,
                                  majority_vote, mcnemar_exact)
from clinical_r1.formats import FORMATS
from clinical_r1.generate import GenerationError
from clinical_r1.rewards import accuracy

OPTIONS = ["Graves disease", "Hashimoto thyroiditis", "Subacute thyroiditis", "Pituitary adenoma"]
WELL = "<dx>TSH 12 mU/L, dry skin.</dx>\n<conclusion>TSH 12 mU/L fits. \\boxed{%s}</conclusion>"


def _ds(k: int, subgroups: list[str] | None = None, sources: list[str] | None = None) -> list[dict]:
    return [{"id": f"q{i}", "question": f"stem {i}", "options": OPTIONS, "answer": "B",
             "source": (sources or ["s"] * k)[i], "subgroup": (subgroups or [""] * k)[i], "explanation": "",
             "meta": "{}"} for i in range(k)]


def _write(path: Path, texts: dict[tuple[str, int], str], meta: dict | None = None, dataset: str | None = "medqa") -> Path:
    path.write_text("".join(json.dumps({"id": i, "sample": s, "text": t, "n_tokens": len(t.split()),
                                        "finish_reason": "stop", "dataset": dataset, "model": "m",
                                        "prompt_kind": "crpo"}) + "\n" for (i, s), t in texts.items()))
    if meta is not None:
        Path(str(path) + ".meta.json").write_text(json.dumps(meta))
    return path


def _meta(n: int = 1, dataset: str = "medqa") -> dict:
    return {"model": "m", "dataset": dataset, "prompt_kind": "crpo", "temperature": 0.7 if n > 1 else 0.0,
            "top_p": 1.0, "max_new_tokens": 64, "n": n, "seed": 3, "backend": "transformers"}


# ---------------------------------------------------------------------------------------------------
# Majority vote, bootstrap, McNemar
# ---------------------------------------------------------------------------------------------------


def test_majority_vote_and_tie_break():
    assert majority_vote(["A", "B", "B"]) == "B"
    assert majority_vote(["A", "B"]) == "A"  # tie: earliest first vote
    assert majority_vote([None, "B", "A", "A", "B"]) == "B"  # A and B tie at 2; B voted first (sample 1)
    assert majority_vote(["C", None, None, None]) == "C"  # invalid answers do not vote
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_bootstrap_hand_computed():
    assert bootstrap_ci([0.7] * 10) == (0.7, 0.7)
    # two items {0, 1}: resample means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert bootstrap_ci([0, 1], n_boot=4000, seed=1) == (0.0, 1.0)
    lo, hi = bootstrap_ci([0, 1], n_boot=4000, seed=1, confidence=0.4)  # the 30th..70th percentiles
    assert (lo, hi) == (0.5, 0.5)
    # ratio of sums: 3 correct of 4 valid answers in every resample of identical items
    assert bootstrap_ci([3, 3], denominators=[4, 4]) == (0.75, 0.75)


def test_bootstrap_matches_loop_and_chunking(monkeypatch):
    v = np.random.default_rng(0).integers(0, 2, size=57).astype(float)
    lo, hi = bootstrap_ci(v, n_boot=500, seed=5)
    rng = np.random.default_rng(5)
    stats = [v[rng.integers(0, len(v), size=len(v))].mean() for _ in range(500)]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])))
    monkeypatch.setattr(ev, "BOOT_CHUNK", 57 * 7)  # 7 resamples per chunk: same draws, same interval
    assert bootstrap_ci(v, n_boot=500, seed=5) == (lo, hi)
    assert lo < v.mean() < hi
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


def test_mcnemar_hand_computed():
    # 8 pairs A right/B wrong, 2 pairs A wrong/B right, 5 both right, 3 both wrong:
    # p = 2 * P(X <= 2 | n=10, 1/2) = 2 * (1 + 10 + 45) / 1024 = 0.109375
    a = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 3
    b = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 3
    r = mcnemar_exact(a, b)
    assert (r["a_only"], r["b_only"], r["both"], r["neither"]) == (8, 2, 5, 3)
    assert r["p_value"] == pytest.approx(0.109375)
    assert mcnemar_exact([1] * 5, [0] * 5)["p_value"] == pytest.approx(2 / 32)
    assert mcnemar_exact([1, 0], [1, 0])["p_value"] == 1.0


# ---------------------------------------------------------------------------------------------------
# Accuracy from files, with hostile text
# ---------------------------------------------------------------------------------------------------


def _completions(fmt: str) -> st.SearchStrategy[str]:
    """Completions in the spirit of ``fmt``: random text, the format's tags, boxes holding letters (any case),
    option texts (with and without their letter), wrappers or garbage, bare and unclosed boxes, several boxes."""
    tags = FORMATS[fmt].tags
    content = st.one_of(st.sampled_from(["A", "B", "C", "D", "E", "b", " B ", "B.", "(B)", "\\text{B}", "{B}", "",
                                         "B. " + OPTIONS[1], "A. " + OPTIONS[1], "BB", "answer: B"] + OPTIONS),
                        st.text(max_size=10))
    box = content.map(lambda c: "\\boxed{" + c + "}")
    piece = st.one_of(
        st.text(max_size=20),
        st.sampled_from([f"<{t}>" for t in tags] + [f"</{t}>" for t in tags]),
        box,
        st.sampled_from(["\\boxed", "\\boxed {B}", "\\boxed{", "}", "{", "$", "\n"]),
    )
    soup = st.lists(piece, max_size=10).map("".join)
    body = st.lists(st.one_of(st.text(max_size=15), piece), max_size=3).map("".join)
    first, last = tags
    sections = st.builds(lambda a, b, c, x, z: f"{a}<{first}>{b}</{first}><{last}>{c} {x}</{last}>{z}",
                         st.sampled_from(["", " ", "intro "]), body, body, box, st.sampled_from(["", "\n", " more"]))
    return st.one_of(soup, sections)


@pytest.mark.parametrize("fmt", ["crpo", "grpo"])
def test_training_accuracy_and_evaluation_agree(tmp_path_factory, fmt):
    """The accuracy reward and evaluation decide "correct" identically on any completion (one is_correct)."""
    @settings(max_examples=100, deadline=None)
    @given(st.lists(_completions(fmt), min_size=1, max_size=8), st.sampled_from("ABCD"))
    def check(texts, gold):
        path = _write(tmp_path_factory.mktemp("agree") / "g.jsonl",
                      {(f"q{i}", 0): t for i, t in enumerate(texts)}, _meta())
        ds = [{**r, "answer": gold} for r in _ds(len(texts))]
        evaluated = ev.load_answers(path, ds, dataset_name="medqa").correct[:, 0].tolist()
        trained = accuracy(texts, answer=[gold] * len(texts), options=[OPTIONS] * len(texts))
        assert trained == [float(c) for c in evaluated]

    check()


def test_accuracy_with_hostile_answers(tmp_path):
    texts = {
        ("q0", 0): WELL % "B",  # well-formed, correct
        ("q1", 0): "No tags at all, but the answer is \\boxed{B}",  # missing tags: still a valid letter
        ("q2", 0): "\\boxed{A} or maybe \\boxed{B}",  # several boxes: invalid
        ("q3", 0): "<conclusion>\\boxed{B. Hashimoto thyroiditis}</conclusion>",  # option restated: B
        ("q4", 0): "\\boxed{Hashimoto thyroiditis}",  # option text only: B
        ("q5", 0): "\\boxed{C. Hashimoto thyroiditis}",  # letter and text disagree: invalid
        ("q6", 0): "\\boxed{F}",  # beyond the options: invalid
        ("q7", 0): "<dx>thinking",  # truncated, no box: invalid
        ("q8", 0): WELL % "A",  # valid, wrong
        ("q9", 0): "",  # empty: invalid
    }
    path = _write(tmp_path / "g.jsonl", texts, _meta())
    res = evaluate(path, _ds(10), out_path=tmp_path / "res.json", n_boot=300, seed=4, dataset_name="medqa")
    o = res["overall"]
    assert (o["n_questions"], o["n_valid"], o["n_correct"]) == (10, 5, 4)
    assert o["accuracy"] == pytest.approx(0.4) and o["valid_ratio"] == pytest.approx(0.5)
    assert o["accuracy_valid"] == pytest.approx(0.8) and o["majority_accuracy"] == pytest.approx(0.4)
    assert o["accuracy_ci"][0] < 0.4 < o["accuracy_ci"][1]
    assert "by_subgroup" not in res and "by_source" not in res
    saved = json.loads((tmp_path / "res.json").read_text())
    assert saved["overall"]["accuracy"] == pytest.approx(0.4)
    assert saved["model"] == "m" and saved["dataset"] == "medqa" and saved["prompt_kind"] == "crpo"
    assert saved["decoding"] == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64, "n": 1, "seed": 3}
    assert saved["bootstrap"]["seed"] == 4 and saved["bootstrap"]["n_boot"] == 300
    assert set(saved["provenance"]) == {"commit", "dirty", "versions", "device"}
    assert not list(tmp_path.glob(".res.json*"))  # no temporary file left behind
    row = accuracy_table([res])[0]
    assert (row["accuracy"], row["valid_ratio"], row["accuracy_valid"], row["n_questions"]) == (40.0, 50.0, 80.0, 10)


def test_majority_at_n_and_subgroups(tmp_path):
    # N = 3. q0: B B A -> B (correct); q1: A B B -> B; q2: A C None -> A (tie, first); q3: None x3 -> invalid
    votes = {"q0": ["B", "B", "A"], "q1": ["A", "B", "B"], "q2": ["A", "C", None], "q3": [None, None, None]}
    texts = {(q, s): (WELL % x if x else "no answer") for q, xs in votes.items() for s, x in enumerate(xs)}
    path = _write(tmp_path / "g.jsonl", texts, _meta(n=3))
    ds = _ds(4, subgroups=["step1", "step1", "step2&3", "step2&3"], sources=["medqa", "medqa", "medqa", "other"])
    res = evaluate(path, ds, n_boot=200)
    o = res["overall"]
    assert o["n_answers"] == 12 and o["n_correct"] == 4 and o["n_valid"] == 8
    assert o["accuracy"] == pytest.approx(4 / 12) and o["majority_accuracy"] == pytest.approx(0.5)
    assert o["majority_valid_ratio"] == pytest.approx(0.75)
    assert o["accuracy_per_sample"] == pytest.approx([0.25, 0.5, 0.25])
    sg = res["by_subgroup"]
    assert set(sg) == {"step1", "step2&3"}
    assert sg["step1"]["accuracy"] == pytest.approx(4 / 6) and sg["step1"]["majority_accuracy"] == 1.0
    assert sg["step2&3"]["accuracy"] == 0.0 and sg["step2&3"]["n_questions"] == 2
    assert set(res["by_source"]) == {"medqa", "other"} and res["by_source"]["other"]["n_valid"] == 0
    assert res["n_samples"] == 3 and res["decoding"]["n"] == 3


def test_compare_paired(tmp_path):
    ds = _ds(10)
    a = _write(tmp_path / "a.jsonl", {(f"q{i}", 0): WELL % ("B" if i < 8 else "A") for i in range(10)}, _meta())
    b = _write(tmp_path / "b.jsonl", {(f"q{i}", 0): WELL % ("B" if i in (0, 8) else "C") for i in range(10)}, _meta())
    r = compare(a, b, ds, n_boot=500)
    assert r["a"]["accuracy"] == pytest.approx(0.8) and r["b"]["accuracy"] == pytest.approx(0.2)
    assert r["difference"] == pytest.approx(0.6)
    assert r["difference_ci"][0] > 0 and r["p_a_not_better"] < 0.05
    # discordant: A only right on q1..q7 (7), B only right on q8 (1): p = 2 * 9 / 256
    assert (r["mcnemar"]["a_only"], r["mcnemar"]["b_only"]) == (7, 1)
    assert r["mcnemar"]["p_value"] == pytest.approx(2 * 9 / 256)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


def test_generations_from_another_dataset(tmp_path):
    path = _write(tmp_path / "g.jsonl", {("q0", 0): WELL % "B", ("zz-1", 0): WELL % "B"}, _meta())
    with pytest.raises(EvaluationError, match=r"1 id\(s\) are not in the dataset.*'zz-1'"):
        evaluate(path, _ds(2))
    path = _write(tmp_path / "h.jsonl", {("q0", 0): WELL % "B", ("q1", 0): WELL % "B"}, _meta(dataset="medmcqa"),
                  dataset="medmcqa")
    with pytest.raises(EvaluationError, match="generated on dataset 'medmcqa', evaluated as 'medqa'"):
        evaluate(path, _ds(2), dataset_name="medqa")
    with pytest.raises(EvaluationError, match="mixes generations of several datasets"):
        evaluate(_write(tmp_path / "k.jsonl", {("q0", 0): "x", ("q1", 0): "y"}, _meta(), dataset="medmcqa"), _ds(2))


def test_missing_samples(tmp_path):
    texts = {("q0", 0): WELL % "B", ("q0", 1): WELL % "B", ("q1", 0): WELL % "B"}  # q1#1 and q2 missing
    path = _write(tmp_path / "g.jsonl", texts, _meta(n=2))
    with pytest.raises(EvaluationError, match=r"2 question\(s\) have fewer than 2 samples: 'q1 \(missing samples \[1\]\)', "
                                              r"'q2 \(missing samples \[0, 1\]\)'"):
        evaluate(path, _ds(3))
    res = evaluate(path, _ds(3), allow_missing=True, n_boot=100)
    o = res["overall"]
    assert o["n_missing"] == 3 and o["n_answers"] == 6 and o["n_correct"] == 3 and o["valid_ratio"] == 0.5
    assert res["missing"] == {"q1": [1], "q2": [0, 1]}
    bad = _write(tmp_path / "b.jsonl", {("q0", 0): "x", ("q0", 2): "y"}, _meta(n=2))
    with pytest.raises(EvaluationError, match="sample indices beyond n=2: 'q0#2'"):
        evaluate(bad, _ds(1))


def test_torn_lines(tmp_path):
    path = _write(tmp_path / "g.jsonl", {("q0", 0): WELL % "B", ("q1", 0): WELL % "B"}, _meta())
    whole = path.read_text()
    path.write_text(whole + '{"id": "q2", "sample": 0, "te')  # torn last line: tolerated, q2 missing
    res = evaluate(path, _ds(3), allow_missing=True, n_boot=100)
    assert res["missing"] == {"q2": [0]} and res["overall"]["n_correct"] == 2
    lines = whole.splitlines(keepends=True)
    path.write_text(lines[0][:20] + "\n" + lines[1])  # torn line in the middle: an error naming it
    with pytest.raises(GenerationError, match="g.jsonl: line 1: invalid JSON"):
        evaluate(path, _ds(2))
    with pytest.raises(FileNotFoundError, match="no such generations file"):
        evaluate(tmp_path / "nope.jsonl", _ds(2))


# ---------------------------------------------------------------------------------------------------
# The paper's numbers
# ---------------------------------------------------------------------------------------------------

METHODS = ["baseline_cot", "grpo", "crpo", "cold_start_grpo", "cold_start_crpo"]
PAPER = {
    "accuracy": {"medqa": [41.95, 50.35, 52.41, 51.07, 53.07], "medmcqa": [46.78, 49.87, 55.13, 48.86, 58.10],
                 "medxpertqa": [10.51, 12.64, 14.88, 12.64, 16.14]},
    "cognitive_behaviours": {"backtracking": [0.36, 0.40, 0.73, 1.88, 2.49],
                             "backward_chaining": [0.19, 0.25, 0.62, 1.00, 1.06],
                             "subgoal_setting": [2.04, 1.88, 2.51, 3.39, 4.23],
                             "verification": [0.18, 0.17, 0.53, 0.89, 1.28]},
    "faithfulness": {"faithfulness": [4.66, 4.71, 7.13, 7.66, 12.95], "cecd": [1.42, 1.51, 5.36, 2.31, 5.76],
                     "drc": [1.84, 1.75, 2.79, 2.33, 3.36], "hallucination": [0.40, 0.85, 0.64, 0.81, 0.66]},
}


def test_paper_reference_holds_exactly_the_reported_numbers():
    ref = load_paper_reference()
    assert ref["source"]["arxiv"] == "2512.00601" and ref["source"]["version"] == "v1"
    assert ref["methods"] == METHODS
    for table, rows in PAPER.items():
        got = {row: [ref[table]["values"][row][m] for m in METHODS] for row in ref[table]["values"]}
        assert got == rows, table
    assert ref["cognitive_behaviours"]["dataset"] == ref["faithfulness"]["dataset"] == "medmcqa"
    assert ref["faithfulness"]["lower_is_better"] == ["hallucination"]
    assert ref["accuracy"]["unit"] == "percent"


def test_paper_reference_shape_errors(tmp_path):
    bad = tmp_path / "ref.json"
    bad.write_text(json.dumps({"methods": ["a", "b"], "accuracy": {"values": {"medqa": {"a": 1}}},
                               "cognitive_behaviours": {"values": {"x": {"a": 1, "b": 2}}},
                               "faithfulness": {"values": {"y": {"a": 1, "b": 2}}}}))
    with pytest.raises(ValueError, match=r"accuracy.medqa has methods \['a'\], expected \['a', 'b'\]"):
        load_paper_reference(bad)
