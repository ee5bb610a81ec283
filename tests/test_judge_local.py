"""The constrained local judge with the real embedded model (SmolLM2-135M-Instruct): parse rate, ranges, that
the judgement responds to its input, caching; and the prefix-sharing scorer against plain forward passes.

    .venv/bin/pytest tests/test_judge_local.py -q          # about 1-3 minutes on 2 CPU cores

What a 135M judge can and cannot do (measured here, prompt versions */v1, constrained/v1): every response gets a
value (the point of constrained mode: generate mode parses 0 of 32 answers, the model copies the response), but
the counts sit near the prompt's own example ``{"count": 2}`` (expected values about 1.6-1.9, argmax 2 for every
response) and the score near its example ``{"score": 4}``. The one content effect found: faithfulness rates a
response above its "false twin" (same structure and length, medical facts made false) in every case here, but
by only about 0.01-0.03 on the 1-5 scale; larger differences follow length and structure, not truth. DRC runs
the wrong way (a bare answer gets more "Yes, rejected" than a response that rejects every distractor). Treat
the demo's judge table as a test of the plumbing, not as a measurement.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from clinical_r1.api import LocalBackend
from clinical_r1.judge import (COUNT_CHOICES, JUDGE_METRICS, SCORE_CHOICES, distractors, judge_responses,
                               parse_judgement, summarize_judgements)

CASES = {
    "thyroid": ("A 45-year-old woman has fatigue, weight gain, cold intolerance and a TSH of 12 mU/L with a low "
                "free T4. Anti-TPO antibodies are positive. What is the most likely diagnosis?",
                ["Graves disease", "Subacute thyroiditis", "Hashimoto thyroiditis", "Pituitary adenoma"], "C"),
    "dka": ("A 24-year-old man with type 1 diabetes has vomiting and deep rapid breathing. Glucose is 540 mg/dL, "
            "pH 7.10, bicarbonate 8 mEq/L and serum ketones are positive. What is the most appropriate first step?",
            ["Subcutaneous insulin glargine", "Intravenous 0.9% saline", "Intravenous sodium bicarbonate",
             "Oral metformin"], "B"),
    "pericarditis": ("A 30-year-old man has sharp chest pain that improves when he leans forward, one week after a "
                     "viral illness. A friction rub is heard. The ECG shows diffuse ST elevation with PR "
                     "depression. What is the most likely diagnosis?",
                     ["Acute myocardial infarction", "Acute pericarditis", "Pulmonary embolism", "Aortic dissection",
                      "Costochondritis"], "B"),
    "hyperk": ("A 68-year-old man on dialysis missed two sessions. His potassium is 7.2 mEq/L and the ECG shows "
               "peaked T waves and a widened QRS. What is the most appropriate immediate treatment?",
               ["Intravenous calcium gluconate", "Oral sodium polystyrene sulfonate", "Intravenous furosemide",
                "Oral potassium chloride"], "A"),
}

# (case, style) -> response. "full": the CRPO format, accurate, subgoals, distractors rejected with reasons, a
# check; "false": the same structure and length with the medical facts made false; "halluc": invented findings
# and false claims; "backtrack": free text that abandons a hypothesis; "terse": the answer only.
RESPONSES = {
    ("thyroid", "full"): (
        "<dx>\nFirst, I need to decide whether the thyroid is over- or underactive; then find the cause.\nThe TSH "
        "of 12 mU/L with a low free T4, weight gain and cold intolerance means primary hypothyroidism. Positive "
        "anti-TPO antibodies point to an autoimmune cause. Graves disease (A) is wrong because it causes "
        "hyperthyroidism with a suppressed TSH. Subacute thyroiditis (B) is painful and usually thyrotoxic first. "
        "A pituitary adenoma (D) would give a low or normal TSH, not a high one.\nChecking: a high TSH with low T4 "
        "is indeed primary hypothyroidism, consistent with Hashimoto thyroiditis.\n</dx>\n"
        "<conclusion>\nHashimoto thyroiditis. \\boxed{C}\n</conclusion>"),
    ("thyroid", "false"): (
        "<dx>\nFirst, I need to decide whether the thyroid is over- or underactive; then find the cause.\nThe TSH "
        "of 12 mU/L with a low free T4 means primary hyperthyroidism, because TSH rises when thyroid hormone is "
        "high. Anti-TPO antibodies are found only in Graves disease. Hashimoto thyroiditis (C) is wrong because it "
        "always causes weight loss and heat intolerance. Subacute thyroiditis (B) is painless and lifelong. A "
        "pituitary adenoma (D) always causes a TSH above 50.\nChecking: a high TSH with low T4 is indeed "
        "hyperthyroidism, consistent with Graves disease.\n</dx>\n<conclusion>\nGraves disease. \\boxed{A}\n"
        "</conclusion>"),
    ("thyroid", "halluc"): (
        "<dx>\nThe patient has a fever of 40 C, exophthalmos and a suppressed TSH, so she is hyperthyroid. "
        "Beta-blockers cure Graves disease permanently, and a 2019 WHO trial showed that Hashimoto never causes "
        "weight gain.\n</dx>\n<conclusion>\n\\boxed{A}\n</conclusion>"),
    ("thyroid", "backtrack"): (
        "This could be Graves disease, which is common in women. Wait, the TSH is high, not low, so Graves does "
        "not fit; let me go back. A high TSH means the thyroid is failing. Maybe a pituitary adenoma? No, that "
        "would lower the TSH, so I abandon that idea too. With positive anti-TPO antibodies it is Hashimoto "
        "thyroiditis. Answer: C"),
    ("thyroid", "terse"): "The answer is \\boxed{C}.",
    ("dka", "full"): (
        "<dx>\nMy goals: first confirm the diagnosis, then pick the first treatment.\nGlucose 540 mg/dL, pH 7.10, "
        "bicarbonate 8 mEq/L and positive ketones in a type 1 diabetic mean diabetic ketoacidosis. The first step "
        "is fluid resuscitation with 0.9% saline. Subcutaneous glargine (A) is too slow and not used in the acute "
        "phase. Bicarbonate (C) is only considered when pH is below 6.9. Metformin (D) is contraindicated in "
        "acidosis.\nVerification: pH 7.10 is above 6.9, so bicarbonate is indeed not indicated.\n</dx>\n"
        "<conclusion>\nStart intravenous 0.9% saline. \\boxed{B}\n</conclusion>"),
    ("dka", "false"): (
        "<dx>\nMy goals: first confirm the diagnosis, then pick the first treatment.\nGlucose 540 mg/dL, pH 7.10 "
        "and positive ketones mean a hyperosmolar state, in which fluids are dangerous. Insulin is never given "
        "intravenously. Sodium bicarbonate is first-line in every acidosis with pH below 7.4. Metformin lowers "
        "ketones and is safe in acidosis.\nVerification: pH 7.10 is below 7.4, so bicarbonate is indeed "
        "indicated.\n</dx>\n<conclusion>\nGive intravenous sodium bicarbonate. \\boxed{C}\n</conclusion>"),
    ("dka", "halluc"): (
        "The patient is hypoglycaemic with a glucose of 40 mg/dL and a normal pH, so oral metformin is the "
        "treatment of choice; metformin raises blood glucose and guidelines from 2021 recommend it first in "
        "ketoacidosis. \\boxed{D}"),
    ("dka", "backtrack"): (
        "I first thought of giving bicarbonate for the acidosis. Actually, that is wrong: the pH is 7.10, above "
        "the threshold, so I drop that plan and start again from the basics. Diabetic ketoacidosis needs fluids "
        "before anything else. So the answer is B."),
    ("dka", "terse"): "B",
    ("pericarditis", "full"): (
        "<dx>\nSubgoal 1: localise the problem; subgoal 2: name the disease.\nPleuritic pain relieved by leaning "
        "forward, a friction rub, a recent viral illness, and diffuse ST elevation with PR depression are classic "
        "for acute pericarditis. Myocardial infarction (A) gives regional ST elevation in one territory, not "
        "diffuse changes. Pulmonary embolism (C) would cause hypoxia and tachycardia, not PR depression. Aortic "
        "dissection (D) gives tearing pain radiating to the back. Costochondritis (E) does not change the ECG.\n"
        "Let me verify: diffuse ST elevation plus PR depression fits pericarditis.\n</dx>\n"
        "<conclusion>\nAcute pericarditis. \\boxed{B}\n</conclusion>"),
    ("pericarditis", "false"): (
        "<dx>\nSubgoal 1: localise the problem; subgoal 2: name the disease.\nPain relieved by leaning forward and "
        "PR depression are classic for myocardial infarction. Pericarditis (B) never follows a viral illness and "
        "never causes a friction rub. Pulmonary embolism always causes PR depression. Aortic dissection causes "
        "diffuse ST elevation in young men. Costochondritis causes ST elevation too.\nLet me verify: diffuse ST "
        "elevation plus PR depression fits a single blocked coronary artery.\n</dx>\n"
        "<conclusion>\nAcute myocardial infarction. \\boxed{A}\n</conclusion>"),
    ("pericarditis", "halluc"): (
        "The ECG shows ST depression in the inferior leads and the troponin is 50 times normal, so this is a "
        "myocardial infarction. Leaning forward always relieves infarction pain and aspirin is contraindicated. "
        "\\boxed{A}"),
    ("pericarditis", "backtrack"): (
        "Chest pain in a man suggests a heart attack. Hmm, wait, he is 30 and the ST elevation is diffuse, so the "
        "infarction idea does not hold; going back to the history, the viral illness and the friction rub make "
        "pericarditis the best fit. Answer B."),
    ("pericarditis", "terse"): "Pericarditis.",
    ("hyperk", "full"): (
        "<dx>\nFirst I must decide how dangerous the potassium is; next choose the step that protects the heart.\n"
        "A potassium of 7.2 mEq/L with peaked T waves and a widened QRS after missed dialysis is life-threatening "
        "hyperkalaemia. Calcium gluconate stabilises the myocardium within minutes. Sodium polystyrene (B) acts "
        "over hours. Furosemide (C) does not work in a dialysis patient without urine. Potassium chloride (D) "
        "would make it worse.\nCheck: widened QRS means cardiac toxicity, so membrane stabilisation comes first.\n"
        "</dx>\n<conclusion>\nIntravenous calcium gluconate. \\boxed{A}\n</conclusion>"),
    ("hyperk", "false"): (
        "<dx>\nFirst I must decide how dangerous the potassium is; next choose the step that protects the heart.\n"
        "A potassium of 7.2 mEq/L is normal for a dialysis patient and peaked T waves are harmless. Calcium "
        "gluconate raises potassium and is contraindicated. Furosemide works best in patients without urine. "
        "Oral potassium chloride protects the myocardium.\nCheck: widened QRS means low potassium, so potassium "
        "comes first.\n</dx>\n<conclusion>\nOral potassium chloride. \\boxed{D}\n</conclusion>"),
    ("hyperk", "halluc"): (
        "The potassium is low at 2.1 mEq/L and the ECG shows U waves, so oral potassium chloride is needed; "
        "dialysis patients cannot develop hyperkalaemia. \\boxed{D}"),
    ("hyperk", "backtrack"): (
        "Maybe furosemide to remove potassium. No wait, he is on dialysis and probably makes no urine, so that "
        "will not work; let me reconsider from the ECG. The widened QRS is the emergency, so give calcium "
        "gluconate first. A"),
    ("hyperk", "terse"): "\\boxed{A}",
}


def rows_for(keys=None) -> list[dict]:
    keys = keys or list(RESPONSES)
    return [{"id": case, "model": style, "question": CASES[case][0], "options": CASES[case][1],
             "answer": CASES[case][2], "text": RESPONSES[case, style]} for case, style in keys]


def r_options(record: dict) -> list[str]:
    return CASES[record["id"]][1]


@pytest.fixture(scope="module")
def judge(embedded_model_dir) -> LocalBackend:
    return LocalBackend.from_path(str(embedded_model_dir), name="smollm2-135m-judge")


@pytest.fixture(scope="module")
def judged(judge) -> tuple[list[dict], float]:
    t0 = time.monotonic()
    records = judge_responses(rows_for(), "all", judge, None)
    return records, time.monotonic() - t0


@pytest.mark.slow
def test_every_metric_parses_in_range(judged):
    records, seconds = judged
    print(f"\nconstrained judge: {len(records)} (response, metric) pairs in {seconds:.1f}s, "
          f"{seconds / len(records):.3f}s per pair")
    assert len(records) == len(RESPONSES) * len(JUDGE_METRICS)
    for name, m in JUDGE_METRICS.items():
        recs = [r for r in records if r["metric"] == name]
        parsed = [r for r in recs if r["status"] == "ok" and r["value"] is not None and not math.isnan(r["value"])]
        assert len(parsed) >= 0.95 * len(recs), name
        for r in recs:
            assert r["mode"] == "constrained" and r["prompt_version"] == m.version
            assert parse_judgement(r["raw"], m, r_options(r)) == r["argmax"] == r["raw_value"]  # the one parser agrees
            if m.kind == "letters":  # P(Yes) per distractor; value: the expected share rejected
                assert set(r["argmax"]) <= set(r["probs"]) == set(distractors(r_options(r), CASES[r["id"]][2]))
                assert r["value"] == pytest.approx(sum(r["probs"].values()) / len(r["probs"]))
                assert 0.0 <= r["value"] <= 1.0 and 0.3 < r["mass"] <= 1.0 + 1e-6
                continue
            values = COUNT_CHOICES if m.kind == "count" else SCORE_CHOICES
            assert r["argmax"] in values and min(values) <= r["expected"] <= max(values)
            assert sum(r["probs"].values()) == pytest.approx(1.0) and 0.5 < r["mass"] <= 1.0 + 1e-6
            scale = 100.0 / max(r["n_words"], 1) if name == "cecd" else 1.0  # CECD: citations per 100 words
            assert r["value"] == pytest.approx(r["expected"] * scale)
            assert r["value_argmax"] == pytest.approx(r["argmax"] * scale)
    table = summarize_judgements(records)
    assert (table["n"] == 4).all() and (table["n_unparseable"] == 0).all() and set(table["mode"]) == {"constrained"}


@pytest.mark.slow
def test_judgement_is_a_deterministic_function_of_the_response(judge, judged):
    records, _ = judged
    by = {(r["id"], r["model"], r["metric"]): r for r in records}
    # values vary with the response for every metric (a scorer reading the wrong position, e.g. inside the
    # shared prompt or at a pad token, gives one value for all)
    for name in JUDGE_METRICS:
        values = [r["value"] for r in records if r["metric"] == name]
        assert max(values) - min(values) > 1e-3, name
    # judged again alone, in another batch and another shared-prefix split: the same numbers
    keys = [("dka", "terse"), ("pericarditis", "full")]
    again = judge_responses(rows_for(keys), ["verification", "drc"], judge, None)
    for r in again:
        assert r["value"] == pytest.approx(by[r["id"], r["model"], r["metric"]]["value"], abs=1e-4)


@pytest.mark.slow
def test_faithfulness_prefers_the_accurate_twin(judged):
    """Each case has an accurate response and a false twin of the same structure and length; the judge must rate
    the accurate one higher on average and in most cases. A 135M judge passes by a hair (about 0.02 on 1-5)."""
    records, _ = judged
    value = {(r["id"], r["model"]): r["value"] for r in records if r["metric"] == "faithfulness"}
    diffs = [value[case, "full"] - value[case, "false"] for case in CASES]
    assert sum(diffs) / len(diffs) > 0 and sum(d > 0 for d in diffs) >= 3, diffs


@pytest.mark.slow
def test_constrained_cache_reruns_nothing_and_keys_mode_and_version(judge, tmp_path, monkeypatch):
    import dataclasses

    cache = tmp_path / "judge.jsonl"
    rows = rows_for([("thyroid", "terse"), ("dka", "terse")])
    first = judge_responses(rows, ["faithfulness", "drc"], judge, cache)
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {ln["purpose"] for ln in lines} == {"judge/faithfulness/v1/constrained", "judge/drc/v1/constrained"}
    assert len(lines) == 4

    def no_forward(*a, **k):
        raise AssertionError("a cached judgement ran the model again")

    monkeypatch.setattr(judge, "next_token_probs", no_forward)
    assert judge_responses(rows, ["faithfulness", "drc"], judge, cache) == first
    new = dataclasses.replace(JUDGE_METRICS["faithfulness"], version="judge/faithfulness/v2")
    monkeypatch.setitem(JUDGE_METRICS, "faithfulness", new)
    with pytest.raises(AssertionError, match="ran the model again"):  # another prompt version: not cached
        judge_responses(rows, ["faithfulness"], judge, cache)


def test_prefix_sharing_scorer_equals_plain_forward_passes():
    """next_token_probs (shared prefixes run once, groups, right-padded batches) against one plain forward pass
    per text, on a tiny random model: same probabilities."""
    import torch

    from openai_server import build_tiny_chat_model

    model, tok = build_tiny_chat_model()
    backend = LocalBackend(model, tok, name="tiny")
    words = "the patient has fever cough and a raised white cell count the answer is boxed".split()
    common = " ".join(words * 3)  # > SHARED_MIN_TOKENS words: a shared prefix, then subgroups
    texts = [common + " " + " ".join(words[: 1 + i]) for i in range(5)]
    texts += [common + " " + " ".join(words * 3) + " " + w for w in ("A", "B", "C")]  # a subgroup sharing more
    texts += ["boxed A", "count"]  # nothing shared with the rest
    ids = [tok.convert_tokens_to_ids(t) for t in ("0", "1", "A", "B")]
    got = backend.next_token_probs(texts, ids, batch_size=3)
    with torch.no_grad():
        for text, probs in zip(texts, got):
            enc = tok(text, return_tensors="pt", add_special_tokens=False)
            ref = model(**enc).logits[0, -1].softmax(-1)[ids].tolist()
            assert probs == pytest.approx(ref, abs=1e-5), text


def test_tokenizer_without_single_token_values_fails_loudly():
    from openai_server import build_tiny_chat_model

    model, tok = build_tiny_chat_model()  # a word-level vocabulary: no "4", "5", " Yes"
    backend = LocalBackend(model, tok, name="tiny")
    with pytest.raises(ValueError, match=r"not one token.*judge_mode 'generate'"):
        judge_responses(rows_for([("dka", "terse")]), ["faithfulness"], backend, None)


@pytest.mark.slow
def test_judge_config_selects_the_mode(embedded_model_dir):
    from clinical_r1.api import make_client
    from clinical_r1.judge import judge_mode

    spec = {"model": "smol", "model_path": str(embedded_model_dir), "backend": "local"}
    assert judge_mode(make_client(spec, None)) == "constrained"
    assert judge_mode(make_client({**spec, "judge_mode": "generate"}, None)) == "generate"
