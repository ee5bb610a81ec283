"""Judge-free text metrics on hand-made responses, hostile ones included, and their aggregate over a file.

    .venv/bin/pytest tests/test_textmetrics.py -x -q
"""

from __future__ import annotations

import json

import pytest

from clinical_r1.evaluate import EvaluationError
from clinical_r1.formats import get_format
from clinical_r1.textmetrics import (Findings, citation_density, cited_findings, cites_reasoning, distractor_rejection,
                                     option_mentions, rejected_options, response_length, response_metrics,
                                     stem_findings, summarize_generations)


def well_formed(text, fmt, options=None):
    """What the ``format_compliance`` column of the text metrics holds."""
    return get_format(fmt).well_formed(text, options)

STEM = "Her blood pressure is 150/95 mm Hg. Serum TSH is 12 mU/L. She has dry skin."
OPTIONS = ["Graves disease", "Hashimoto thyroiditis", "Subacute thyroiditis", "Pituitary adenoma"]
ITEM = {"id": "q0", "question": STEM, "options": OPTIONS, "answer": "B"}
GOOD = ("<dx>\nTSH 12 mU/L with dry skin suggests primary hypothyroidism. Graves disease is unlikely: it causes "
        "hyperthyroidism.\n(C) Subacute thyroiditis is painful and transient, so it does not explain this.\n"
        "Option D, a pituitary adenoma, would lower TSH; ruled out.\n</dx>\n"
        "<conclusion>\nA TSH of 12 mU/L with dry skin points to Hashimoto thyroiditis. \\boxed{B}\n</conclusion>")


def test_format_compliance_hostile():
    assert well_formed(GOOD, "crpo", OPTIONS)
    assert not well_formed(GOOD.replace("<dx>", ""), "crpo", OPTIONS)  # missing tag
    assert not well_formed(GOOD.replace("\\boxed{B}", "\\boxed{B} or \\boxed{C}"), "crpo")  # several boxes
    assert not well_formed("preamble " + GOOD, "crpo")  # text outside the sections
    assert well_formed(GOOD.replace("\\boxed{B}", "\\boxed{B. Hashimoto thyroiditis}"), "crpo", OPTIONS)
    assert not well_formed(GOOD, "grpo")
    assert well_formed("<think>x</think><answer>\\boxed{A}</answer>", "grpo")
    assert well_formed("step by step ... \\boxed{A}", "cot") and not well_formed("no box", "cot")


def test_cites_reasoning():
    assert cites_reasoning(GOOD, "crpo", OPTIONS) is True
    generic = GOOD.split("<conclusion>")[0] + "<conclusion>\nSo the answer follows. \\boxed{B}\n</conclusion>"
    assert cites_reasoning(generic, "crpo", OPTIONS) is False
    assert cites_reasoning(GOOD.split("<conclusion>")[0], "crpo") is False  # no conclusion section
    # malformed (text outside) but both sections present: still measured
    assert cites_reasoning("intro " + GOOD, "crpo", OPTIONS) is True
    grpo = GOOD.replace("dx>", "think>").replace("conclusion>", "answer>")
    assert cites_reasoning(grpo, "grpo", OPTIONS) is True and cites_reasoning(GOOD, "grpo", OPTIONS) is False
    assert cites_reasoning(GOOD, "cot") is None and cites_reasoning(GOOD, "direct") is None
    with pytest.raises(ValueError, match="unknown answer format"):
        cites_reasoning(GOOD, "xml")


def test_response_length():
    assert response_length("one two  three\nfour") == 4
    assert response_length([{"role": "assistant", "content": "a b"}]) == 2
    assert response_length("") == 0


def test_stem_findings_and_citation_density():
    f = stem_findings(STEM, OPTIONS)
    assert f == Findings(values=frozenset({"150/95mmhg", "12mu/l"}), labs=frozenset({"blood pressure", "tsh"}),
                         phrases=frozenset({("serum", "tsh"), ("dry", "skin")}))
    assert f.total == 6
    # cites 12 mU/L (value), TSH (test), "dry skin" (phrase): 3 of 6
    assert cited_findings("TSH 12 mU/L and dry skin suggest hypothyroidism", STEM, OPTIONS) == (3, 6)
    assert citation_density("TSH 12 mU/L and dry skin suggest hypothyroidism", STEM, OPTIONS) == 0.5
    assert citation_density("BP 150/95 mmHg, serum TSH 12 mU/L, dry skin", STEM, OPTIONS) == 1.0
    assert citation_density("\\boxed{B}", STEM, OPTIONS) == 0.0
    assert citation_density("anything", "Which of the following is true?", OPTIONS) is None  # no findings
    # pairs that merely restate an option are not findings of the case
    assert ("hashimoto", "thyroiditis") not in stem_findings(STEM + " Hashimoto thyroiditis runs in her family.",
                                                             OPTIONS).phrases


def test_distractor_rejection():
    assert rejected_options(GOOD, OPTIONS) == {0, 2, 3}
    assert distractor_rejection(GOOD, OPTIONS, "B") == 1.0
    # a cue belongs to the option it follows, not to the one before it
    assert rejected_options("B is the answer. C is unlikely.", OPTIONS) == {2}
    assert distractor_rejection("B is the answer. C is unlikely.", OPTIONS, "B") == pytest.approx(1 / 3)
    assert distractor_rejection("A is correct. B is not. Option C is unlikely.", OPTIONS, "A") == pytest.approx(2 / 3)
    # named by text, rejected after it; named without rejection does not count
    assert rejected_options("Graves disease does not explain the high TSH.", OPTIONS) == {0}
    assert rejected_options("Pituitary adenoma fits well.", OPTIONS) == set()
    assert distractor_rejection("\\boxed{B}", OPTIONS, "B") == 0.0  # a box is not a rejection
    assert distractor_rejection("", OPTIONS, "B") == 0.0


def test_distractor_rejection_hostile_option_text():
    opts = ["Not a candidate for surgery", "Immediate surgery", "Observation", "Antibiotics"]
    # "Not" inside the option's own text is not a rejection cue
    assert rejected_options("Not a candidate for surgery fits best.", opts) == set()
    assert rejected_options("Antibiotics are not indicated.", opts) == {3}
    # a lone capital "A" as an article is not a mention of option A
    assert option_mentions("A patient with fever.", opts) == []
    assert [i for _, _, i in option_mentions("A. Not a candidate for surgery\nB) Immediate", opts)] == [0, 0, 1]


def test_response_metrics_and_summary(tmp_path):
    m = response_metrics(GOOD, ITEM, "crpo")
    assert m["format_compliance"] and m["cross_reference"] and m["distractor_rejection"] == 1.0
    assert m["n_tokens"] == len(GOOD.split()) and 0 < m["citation_density"] <= 1
    path = tmp_path / "g.jsonl"
    rows = [{"id": "q0", "sample": 0, "text": GOOD, "n_tokens": 90},
            {"id": "q0", "sample": 1, "text": "\\boxed{A} \\boxed{B}", "n_tokens": 10}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "g.jsonl.meta.json").write_text(json.dumps({"prompt_kind": "crpo", "n": 2}))
    s = summarize_generations(path, [ITEM], per_response=True)
    assert s["format"] == "crpo" and s["n_responses"] == 2
    assert s["format_compliance"] == {"mean": 0.5, "n": 2} and s["cross_reference"] == {"mean": 0.5, "n": 2}
    assert s["n_tokens"] == {"mean": 50.0, "n": 2} and s["distractor_rejection"]["mean"] == 0.5
    assert len(s["responses"]) == 2
    assert summarize_generations(path, [ITEM], fmt="cot")["cross_reference"] == {"mean": None, "n": 0}
    path.write_text(json.dumps({"id": "other-7", "sample": 0, "text": "x"}) + "\n")
    with pytest.raises(EvaluationError, match="not in the dataset.*other-7"):
        summarize_generations(path, [ITEM])
