"""clinical_r1.judge: parsing, records, cache keys and reliability statistics, against a real local server.

    .venv/bin/pytest tests/test_judge.py -q
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from clinical_r1 import judge as J
from clinical_r1.judge import (JUDGE_METRICS, agreement, agreement_with_reference, cohen_kappa, judge_responses,
                               parse_judgement, reference_values, spearman, summarize_judgements)
from openai_server import FakeOpenAIServer, build_tiny_chat_model

KEY_ENV = "CLINICAL_R1_TEST_KEY"
OPTIONS = ["Graves disease", "Subacute thyroiditis", "Hashimoto thyroiditis", "Pituitary adenoma"]
QUESTION = "A 45-year-old woman has fatigue, weight gain and a TSH of 12 mU/L. Most likely diagnosis?"
GOOD = ("<dx>\nTSH 12 mU/L with weight gain means hypothyroidism. Graves (A) is wrong: TSH would be low.\n</dx>\n"
        "<conclusion>\nThe TSH of 12 mU/L decides it. \\boxed{C}\n</conclusion>")

# metric -> the judge's scripted reply (the server tells metrics apart by their system prompt)
SCRIPT = {
    "backtracking": '{"count": 2}',
    "backward_chaining": 'There is one instance.\n```json\n{"count": 1}\n```',
    "subgoal_setting": "<count>3</count>",
    "verification": "The response verifies its answer several times.",  # off-format: unparseable
    "faithfulness": '{"score": 4}',
    "cecd": '{"count": 5}',
    "drc": '{"rejected": ["A", "D", "C"]}',  # C is the gold answer: not a distractor
    "hallucination": "0",
}


def metric_of(request: dict) -> str:
    system = request["messages"][0]["content"]
    return next(name for name, m in JUDGE_METRICS.items() if m.definition == system)


def scripted(request: dict) -> str:
    return SCRIPT[metric_of(request)]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-judge-test")


def judge_cfg(srv: FakeOpenAIServer, model: str = "judge-1", **kw) -> dict:
    return {"model": model, "base_url": srv.base_url, "api_key_env": KEY_ENV, "timeout_s": 2.0, "max_retries": 1,
            "backoff_base_s": 0.01, "concurrency": 4, **kw}


def row(i: str, response: str = GOOD, model: str = "crpo") -> dict:
    return {"id": i, "model": model, "question": QUESTION, "options": OPTIONS, "answer": "C", "text": response}


@pytest.mark.parametrize("metric,text,expected", [
    ("backtracking", '{"count": 3}', 3),
    ("backtracking", 'Reasoning... {"count": "2"}', 2),
    ("backtracking", '```json\n{"Count": 1.0}\n```', 1),
    ("backtracking", 'Format is {"count": N}. Answer: {"count": 4}', 4),
    ("backtracking", '{"result": {"count": 2}}', 2),
    ("backtracking", "<count>7</count>", 7),
    ("backtracking", " 0 ", 0),
    ("backtracking", '{"count": -1}', None),
    ("backtracking", '{"count": 1.5}', None),
    ("backtracking", '{"count": true}', None),
    ("backtracking", "There are two instances.", None),
    ("backtracking", '{"score": 3}', None),
    ("backtracking", "", None),
    ("backtracking", None, None),
    ("faithfulness", '{"score": 5}', 5),
    ("faithfulness", '{"score": 0}', None),
    ("faithfulness", '{"score": 6}', None),
    ("faithfulness", "<score>2</score>", 2),
    ("drc", '{"rejected": ["a", "(D)"]}', ["A", "D"]),
    ("drc", '{"rejected": []}', []),
    ("drc", '{"rejected": "A, B"}', ["A", "B"]),
    ("drc", '{"rejected": ["F"]}', None),  # beyond the four options
    ("drc", '{"rejected": [1]}', None),
    ("drc", "3", None),
])
def test_parse_judgement(metric, text, expected):
    assert parse_judgement(text, metric, OPTIONS) == expected


def test_parse_is_bounded_on_huge_replies():
    text = "{" * 200_000 + '{"count": 1}'
    assert parse_judgement(text, "backtracking") == 1


def test_records_values_statuses_and_summary(tmp_path, key):
    rows = [row("q1"), row("q2", GOOD + " extra words here", model="grpo")]
    with FakeOpenAIServer(answer=scripted) as srv:
        records = judge_responses(rows, "all", judge_cfg(srv), tmp_path / "judge.jsonl")
        assert srv.total_requests == 16
        assert all(b.get("temperature") == 0.0 for b in srv.bodies)  # deterministic by default
    assert len(records) == 16
    by = {(r["id"], r["metric"]): r for r in records}
    assert by["q1", "backtracking"]["value"] == 2.0 and by["q1", "backward_chaining"]["value"] == 1.0
    assert by["q1", "subgoal_setting"]["value"] == 3.0 and by["q1", "hallucination"]["value"] == 0.0
    assert by["q1", "faithfulness"]["value"] == 4.0
    assert by["q1", "drc"]["value"] == pytest.approx(2 / 3) and by["q1", "drc"]["raw_value"] == ["A", "C", "D"]
    n_words = len(GOOD.split())
    assert by["q1", "cecd"]["value"] == pytest.approx(5 * 100 / n_words) and by["q1", "cecd"]["raw_value"] == 5
    bad = by["q1", "verification"]
    assert bad["status"] == "unparseable" and bad["value"] is None and bad["raw"] == SCRIPT["verification"]
    assert all(r["judge"] == "judge-1" and r["prompt_version"] == JUDGE_METRICS[r["metric"]].version for r in records)
    assert all(r["mode"] == "generate" for r in records)  # an API judge writes free text

    table = summarize_judgements(records)
    assert list(table["metric"].unique()) == list(JUDGE_METRICS)  # canonical metric order
    ver = table[(table.model == "crpo") & (table.metric == "verification")].iloc[0]
    assert ver["n"] == 0 and ver["n_unparseable"] == 1 and math.isnan(ver["mean"])
    bt = table[(table.model == "grpo") & (table.metric == "backtracking")].iloc[0]
    assert bt["mean"] == 2.0 and bt["n"] == 1 and bt["n_unparseable"] == 0
    assert not table[table.metric == "hallucination"]["higher_is_better"].any()
    assert set(table["mode"]) == {"generate"}


def test_cache_keys_judge_model_prompt_version_and_response(tmp_path, key, monkeypatch):
    cache = tmp_path / "judge.jsonl"
    same_text_two_models = [row("q1", model="crpo"), row("q1", model="sft")]
    with FakeOpenAIServer(answer=scripted) as srv:
        judge_responses(same_text_two_models, ["backtracking", "drc"], judge_cfg(srv), cache)
        assert srv.total_requests == 2  # one response text, judged once per metric
        again = judge_responses(same_text_two_models, ["backtracking", "drc"], judge_cfg(srv), cache)
        assert srv.total_requests == 2 and len(again) == 4  # the rerun paid nothing
        judge_responses([row("q1", GOOD + " Verified.")], ["backtracking"], judge_cfg(srv), cache)
        assert srv.total_requests == 3  # another response text
        judge_responses([row("q1")], ["backtracking"], judge_cfg(srv, model="judge-2"), cache)
        assert srv.total_requests == 4  # another judge model
        new = dataclasses.replace(JUDGE_METRICS["backtracking"], version="judge/backtracking/v2")
        monkeypatch.setitem(JUDGE_METRICS, "backtracking", new)
        judge_responses([row("q1")], ["backtracking"], judge_cfg(srv), cache)
        assert srv.total_requests == 5  # another prompt version
    purposes = {line.split('"purpose": "')[1].split('"')[0] for line in cache.read_text().splitlines()}
    assert purposes == {"judge/backtracking/v1", "judge/drc/v1", "judge/backtracking/v2"}


def test_k_sample_averaging_needs_temperature(tmp_path, key):
    calls = {"n": 0}

    def rising(request):
        calls["n"] += 1
        return f'{{"count": {calls["n"]}}}'

    with FakeOpenAIServer(answer=rising) as srv:
        with pytest.raises(ValueError, match="temperature"):
            judge_responses([row("q1")], ["verification"], judge_cfg(srv), None, k=3)
        recs = judge_responses([row("q1")], ["verification"], judge_cfg(srv, concurrency=1), tmp_path / "c.jsonl",
                               k=3, temperature=0.7)
        assert srv.total_requests == 3 and all(b["temperature"] == 0.7 for b in srv.bodies)
    assert recs[0]["value"] == 2.0 and recs[0]["n_samples"] == 3 and recs[0]["n_parsed"] == 3
    assert recs[0]["raw_value"] == [1, 2, 3]


def test_api_failures_are_recorded_not_dropped(tmp_path, key):
    with FakeOpenAIServer(answer=scripted, faults=lambda prompt, attempt: "503") as srv:
        recs = judge_responses([row("q1")], ["backtracking", "faithfulness"], judge_cfg(srv), None)
    assert [r["status"] for r in recs] == ["api_failure", "api_failure"] and "http_503" in recs[0]["error"]
    table = summarize_judgements(recs)
    assert list(table["n_failed"]) == [1, 1] and list(table["n"]) == [0, 0]


def test_row_validation():
    with pytest.raises(ValueError, match="row 0.*'question'"):
        J.normalise_row({"id": "x", "options": OPTIONS, "text": "t"}, 0, need_answer=False)
    with pytest.raises(ValueError, match="'answer'"):
        J.normalise_row({"id": "x", "question": "q", "options": OPTIONS, "text": "t"}, 0, need_answer=True)
    with pytest.raises(ValueError, match="no response text"):
        J.normalise_row({"id": "x", "question": "q", "options": OPTIONS}, 0, need_answer=False)
    with pytest.raises(KeyError, match="unknown judge metric"):
        J.resolve_metrics(["verbosity"])
    joined = J.attach_items([{"id": "a", "text": "t", "model": "m", "sample": 1}],
                            [{"id": "a", "question": "q", "options": ["x", "y"], "answer": "B"}])
    assert joined[0]["question"] == "q" and joined[0]["answer"] == "B"
    with pytest.raises(ValueError, match="'zz' is not among"):
        J.attach_items([{"id": "zz", "text": "t"}], [{"id": "a", "question": "q", "options": ["x"], "answer": "A"}])


def test_kappa_and_spearman_hand_computed():
    # po = 3/4; pa = 1/2, pb = 1/4; pe = 1/2·1/4 + 1/2·3/4 = 1/2; kappa = (3/4 - 1/2) / (1/2) = 0.5
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa([1, 1], [1, 1]))
    # ranks (1,2,3,4) vs (1,3,2,4): sum d^2 = 2; rho = 1 - 6·2 / (4·15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4])[0] == pytest.approx(0.8)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])[0])


def _rec(i, metric, value, status="ok", model="m"):
    return {"id": i, "model": model, "sample": 0, "metric": metric, "value": value, "status": status}


def test_agreement_between_two_judges():
    a = [_rec(f"q{i}", "backtracking", v) for i, v in enumerate([1, 2, 0, 0])]
    b = [_rec(f"q{i}", "backtracking", v) for i, v in enumerate([1, 0, 0, 0])]
    a += [_rec(f"q{i}", "faithfulness", v) for i, v in enumerate([1, 2, 3, 4])]
    b += [_rec(f"q{i}", "faithfulness", v) for i, v in enumerate([1, 3, 2, 4])]
    a.append(_rec("q9", "backtracking", None, status="unparseable"))  # not paired
    b.append(_rec("q9", "backtracking", 3))
    table = agreement(a, b).set_index("metric")
    assert table.loc["backtracking", "n"] == 4
    assert table.loc["backtracking", "kappa_any"] == pytest.approx(0.5)
    assert table.loc["backtracking", "agree_any"] == pytest.approx(0.75)
    assert table.loc["faithfulness", "spearman"] == pytest.approx(0.8)
    assert math.isnan(table.loc["faithfulness", "kappa_any"])  # "at least one" is not defined for a 1-5 score


def test_agreement_with_judge_free_metric():
    rows = [row(f"q{i}", " ".join(["word"] * n)) for i, n in enumerate([10, 30, 20])]
    ref = reference_values(rows, "completion_length")
    assert ref[("q0", "crpo", 0)] == 10.0
    recs = [_rec(f"q{i}", "cecd", v, model="crpo") for i, v in enumerate([1.0, 2.0, 3.0])]
    table = agreement_with_reference(recs, ref, ["cecd"])
    # ranks (1,2,3) vs (1,3,2): sum d^2 = 2; rho = 1 - 6·2 / (3·8) = 0.5
    assert table.iloc[0]["n"] == 3 and table.iloc[0]["spearman"] == pytest.approx(0.5)


@pytest.mark.slow
def test_local_judge_tiny_model_generate_mode(tmp_path):
    """The local free-text path end to end: a random tiny model's replies are kept as unparseable."""
    model, tok = build_tiny_chat_model()
    from clinical_r1.api import LocalBackend

    backend = LocalBackend(model, tok, name="tiny-judge", max_new_tokens=5, judge_mode="generate")
    recs = judge_responses([row("q1")], ["backtracking", "faithfulness"], backend, tmp_path / "c.jsonl")
    assert len(recs) == 2 and all(r["status"] in ("ok", "unparseable") and isinstance(r["raw"], str) for r in recs)
    assert all(r["mode"] == "generate" for r in recs)
    table = summarize_judgements(recs)
    assert (table["n"] + table["n_unparseable"]).tolist() == [1, 1]


def test_judge_mode_selection_and_validation(key):
    from clinical_r1.api import ChatConfig, LocalBackend, make_client

    model, tok = build_tiny_chat_model()
    assert J.judge_mode(make_client(LocalBackend(model, tok), None)) == "constrained"  # the local default
    assert J.judge_mode(make_client(LocalBackend(model, tok), None), "generate") == "generate"
    api = make_client({"model": "m", "api_key_env": KEY_ENV}, None)
    assert J.judge_mode(api) == "generate"
    with pytest.raises(ValueError, match="constrained mode needs a local model"):
        judge_responses([row("q1")], ["backtracking"], api, None, mode="constrained")
    with pytest.raises(ValueError, match="use backend: local"):
        ChatConfig.from_dict({"model": "m", "judge_mode": "constrained"})
    with pytest.raises(ValueError, match="judge_mode"):
        ChatConfig(model="m", backend="local", judge_mode="logprobs")
    with pytest.raises(ValueError, match="deterministic"):
        judge_responses([row("q1")], ["backtracking"], LocalBackend(model, tok), None, k=3, temperature=0.7)


def test_constrained_record_values():
    """Argmax, probability-weighted value, CECD per 100 words and DRC shares from given next-token probabilities."""
    r = J.normalise_row(row("q1"), 0, need_answer=True)
    counts = [0.1, 0.2, 0.5, 0.2] + [0.0] * 6  # raw P over "0".."9", mass 1.0
    rec = J._constrained_record(r, JUDGE_METRICS["backtracking"], [counts], "j")
    assert rec["argmax"] == rec["raw_value"] == 2 and rec["value"] == pytest.approx(0.2 + 1.0 + 0.6)
    assert rec["status"] == "ok" and rec["mode"] == "constrained" and parse_judgement(rec["raw"], "backtracking") == 2
    rec = J._constrained_record(r, JUDGE_METRICS["cecd"], [counts], "j")
    assert rec["value"] == pytest.approx(1.8 * 100 / len(GOOD.split())) and rec["expected"] == pytest.approx(1.8)
    rec = J._constrained_record(r, JUDGE_METRICS["faithfulness"], [[0.0, 0.0, 0.1, 0.3, 0.1]], "j")  # mass 0.5
    assert rec["mass"] == pytest.approx(0.5) and rec["probs"]["4"] == pytest.approx(0.6) and rec["argmax"] == 4
    assert rec["value"] == pytest.approx(3 * 0.2 + 4 * 0.6 + 5 * 0.2)
    # distractors A, B, D (gold C): P(Yes) 0.8, 0.25, 0.5 after renormalising Yes/No
    rec = J._constrained_record(r, JUDGE_METRICS["drc"], [[0.4, 0.1], [0.1, 0.3], [0.2, 0.2]], "j")
    assert rec["probs"] == pytest.approx({"A": 0.8, "B": 0.25, "D": 0.5}) and rec["argmax"] == ["A"]
    assert rec["value"] == pytest.approx(1.55 / 3) and rec["value_argmax"] == pytest.approx(1 / 3)
    assert parse_judgement(rec["raw"], "drc", OPTIONS) == ["A"]
