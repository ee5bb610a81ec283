"""CRPO rewards: table-driven cases, the r1-medical values, presets, fuzzing and linear time."""


import pytest
from hypothesis import given, settings, strategies as st

from clinical_r1 import rewards as R
from clinical_r1.rewards import PRESETS, cross_references, effective_token_ratio, get_preset, score

OPTS = ["Graves disease", "Hashimoto thyroiditis", "Subacute thyroiditis", "Toxic adenoma"]
DX = ("Initial impression: primary hypothyroidism. The patient has fatigue, weight gain and cold intolerance; "
      "TSH 12 mU/L with low free T4 points to primary hypothyroidism, and anti-TPO antibodies are positive. "
      "A is rejected because Graves disease causes suppressed TSH. C is rejected because subacute thyroiditis "
      "is painful. D is rejected because a toxic adenoma is hyperthyroid. B fits.")
CONC = "The TSH 12 mU/L with positive anti-TPO antibodies establishes autoimmune hypothyroidism. \\boxed{B}"


def crpo(dx=DX, conc=CONC):
    return f"<dx>\n{dx}\n</dx>\n<conclusion>\n{conc}\n</conclusion>"


CASES = [
    # name, completion, gold, expected (accuracy, clinical_reasoning), consistency predicate
    ("well-formed correct", crpo(), "B", (1.0, 1.5), lambda c: c == 1.0),
    ("well-formed incorrect", crpo(conc=CONC.replace("{B}", "{A}")), "B", (0.0, 1.5), lambda c: c == 1.0),
    ("no cross-reference", crpo(conc="Therefore the answer follows. \\boxed{B}"), "B", (1.0, 1.0), lambda c: c == 1.0),
    ("missing tags", f"{DX}\n{CONC}", "B", (1.0, 0.0), lambda c: c == 0.0),
    ("missing conclusion tag", f"<dx>{DX}</dx>\n{CONC}", "B", (1.0, 0.0), lambda c: 0.5 < c < 1.0),
    ("tags out of order", f"<conclusion>{CONC}</conclusion><dx>{DX}</dx>", "B", (1.0, 0.0), lambda c: c == 1.0),
    ("duplicated tags", crpo() + "\n<dx>more</dx>", "B", (1.0, 0.0), lambda c: 0.9 < c < 1.0),
    ("two boxes", crpo(conc=CONC + " or \\boxed{C}"), "B", (0.0, 0.0), lambda c: c == 1.0),
    ("box only inside dx", crpo(dx=DX + " \\boxed{B}", conc="TSH 12 mU/L decides it."), "B", (1.0, 0.0),
     lambda c: c == 1.0),
    ("lowercase letter", crpo(conc=CONC.replace("{B}", "{b}")), "B", (0.0, 0.0), lambda c: c == 1.0),
    ("letter not among options", crpo(conc=CONC.replace("{B}", "{F}")), "B", (0.0, 0.0), lambda c: c == 1.0),
    ("text after conclusion", crpo() + "\nHope this helps!", "B", (1.0, 0.0), lambda c: 0.9 < c < 1.0),
    ("chinese text", crpo(dx=DX + " 患者甲状腺功能减退，需要补充甲状腺激素治疗。"), "B", (1.0, 1.5), lambda c: c < 1.0),
    ("repetition loop", crpo(dx=DX + " and so on" * 200), "B", (1.0, 1.5), lambda c: c < 0.3),
    ("empty completion", "", "B", (0.0, 0.0), lambda c: c == 0.0),
    ("conversational", [{"role": "assistant", "content": crpo()}], "B", (1.0, 1.5), lambda c: c == 1.0),
    ("boxed text variant", crpo(conc=CONC.replace("{B}", "{\\text{ B }}")), "B", (1.0, 1.5), lambda c: c == 1.0),
]


@pytest.mark.parametrize("name,completion,gold,expected,cons_ok", CASES, ids=[c[0] for c in CASES])
def test_crpo_cases(name, completion, gold, expected, cons_ok):
    s = score(completion, gold, OPTS)
    assert (s["accuracy"], s["clinical_reasoning"]) == expected
    assert cons_ok(s["consistency"]), s["consistency"]
    assert s["total"] == pytest.approx(10 * s["accuracy"] + s["clinical_reasoning"] + 0.5 * s["consistency"])
    assert 0.0 <= s["total"] <= 12.0


def test_batch_functions_match_score_and_accept_trl_kwargs():
    comps = [c[1] for c in CASES]
    answers = [c[2] for c in CASES]
    opts = [OPTS] * len(comps)
    kw = {"prompts": ["p"] * len(comps), "completion_ids": [[1]] * len(comps), "trainer_state": None}
    acc = R.accuracy(comps, answer=answers, options=opts, **kw)
    cr = R.clinical_reasoning(comps, answer=answers, options=opts, **kw)
    cons = R.consistency(comps, answer=answers, options=opts, **kw)
    for i, c in enumerate(comps):
        s = score(c, answers[i], OPTS)
        assert (acc[i], cr[i], cons[i]) == (s["accuracy"], s["clinical_reasoning"], s["consistency"])


def test_trl_weighted_sum_reproduces_R():
    p = get_preset("crpo")
    comps, answers = [crpo(), crpo(conc="So \\boxed{A}")], ["B", "B"]
    per_func = [f(comps, answer=answers, options=[OPTS, OPTS]) for f in p.functions()]
    totals = [sum(w * col[i] for w, col in zip(p.weight_list(), per_func)) for i in range(2)]
    assert totals == [score(c, "B", OPTS)["total"] for c in comps]
    assert p.max_total == 12.0 and get_preset("crpo").with_weights(k=20).max_total == 22.0


def test_cross_reference_rule():
    assert cross_references("TSH 12 mU/L and fatigue", "Given TSH 12 mU/L, hypothyroid")  # shared value
    assert cross_references("marked cold intolerance with weight gain, constipation, dry skin and hoarse voice",
                            "the cold intolerance with weight gain settles it")
    assert not cross_references("fatigue and weight gain", "answer is obvious")
    # restating an option's text is not citing a finding
    assert not cross_references("chronic autoimmune lymphocytic thyroiditis", "chronic autoimmune lymphocytic thyroiditis",
                                options=["Chronic autoimmune lymphocytic thyroiditis"])
    # a near-copy of the analysis is not a cross-reference
    assert not cross_references(DX, DX)


@pytest.mark.parametrize("preset,completion,gold,expected", [
    ("r1-medical", "<think>r</think><answer>So \\boxed{B}</answer>", "B", {"accuracy": 1, "format": 1.5, "english": 1}),
    ("r1-medical", "<think>r</think><answer>\\boxed{B}</answer>", "B", {"accuracy": 1, "format": 1.0}),
    ("r1-medical", "<think>r</think><answer>So \\boxed{C}</answer>", "B", {"accuracy": 0, "format": 1.5}),
    ("r1-medical", "<think>r</think><answer>none</answer>", "B", {"accuracy": 0, "format": 1.0}),
    ("r1-medical", "<think>r</think><answer>\\boxed{b}</answer>", "B", {"accuracy": -0.5}),
    ("r1-medical", "<think>r</think><answer>\\boxed{B. Hashimoto}</answer>", "B", {"accuracy": -0.5}),
    ("r1-medical", "<think>r</think><answer>\\boxed B</answer>", "B", {"accuracy": -1, "format": 1.0}),
    ("r1-medical", "<think>r</think><answer>\\boxed{B} \\boxed{B} \\boxed{C}</answer>", "B", {"accuracy": -3}),
    ("r1-medical", "answer: \\boxed{B}", "B", {"accuracy": 1, "format": 0}),
    ("r1-medical", "<think>r</think><answer>x</answer> trailing", "B", {"format": 0}),
    ("r1-medical", "<think>r</think><answer>答案 \\boxed{B}</answer>", "B", {"accuracy": 1, "format": 1.5}),
    ("grpo", "<think>r</think><answer>So \\boxed{B}</answer>", "B", {"accuracy": 1, "format": 1, "total": 11}),
    ("grpo", "<think>r</think>\n<answer>\\boxed{B}</answer> x", "B", {"accuracy": 1, "format": 0, "total": 10}),
    ("grpo", "<think></think><answer>\\boxed{B}</answer>", "B", {"format": 0}),
])
def test_other_presets(preset, completion, gold, expected):
    s = score(completion, gold, OPTS, preset=preset)
    for k, v in expected.items():
        assert s[k] == pytest.approx(v), (k, s)


def test_r1_english_share():
    s = score("<think>ab</think><answer>答案 \\boxed{B}</answer>", "B", preset="r1-medical")
    text = "<think>ab</think><answer>答案 \\boxed{B}</answer>"
    assert s["english"] == pytest.approx((len(text) - 2) / len(text))
    assert s["total"] == pytest.approx(10 * 1 + 1.5 + 0.5 * s["english"])


def test_presets_registry_and_errors():
    assert set(PRESETS) >= {"crpo", "grpo", "r1-medical", "crpo-no-xref", "crpo-no-consistency"}
    for p in PRESETS.values():
        assert [f.__name__ for f in p.functions()] == list(p.weights)
    assert list(score(crpo(), "B", preset="crpo")) == ["accuracy", "clinical_reasoning", "consistency", "total"]
    assert list(score("x", "B", preset="grpo")) == ["accuracy", "format", "total"]
    assert list(score("x", "B", preset="r1-medical")) == ["accuracy", "format", "english", "total"]
    with pytest.raises(KeyError, match="unknown reward preset 'crpo2'.*known presets"):
        get_preset("crpo2")
    with pytest.raises(KeyError, match="unknown reward"):
        R.get_reward("nope")
    no_xref = score(crpo(), "B", OPTS, preset="crpo-no-xref")
    assert "clinical_reasoning" not in no_xref and no_xref["crpo_format"] == 1.0 and no_xref["total"] == 11.5
    assert score(crpo(), "B", OPTS, preset="crpo-no-consistency")["total"] == 11.5


def test_consistency_rules():
    assert effective_token_ratio("") == 0.0
    assert effective_token_ratio(crpo(dx="Temp 38.9°C, Na⁺ low, μg and ± and – dash, it’s fine, Sjögren and Ménière")) == 1.0
    loop = crpo(dx="I think so. " * 50)
    assert effective_token_ratio(loop) < 0.15  # the loop counts once: 3 of 150 tokens, plus the conclusion
    sentence_dup = crpo(dx="The serum sodium is very low here. Other text follows now. The serum sodium is very low here.")
    assert effective_token_ratio(sentence_dup) < 1.0


ZH = "患者乏力体重增加畏寒促甲状腺激素升高游离甲状腺素降低抗甲状腺过氧化物酶抗体阳性提示桥本甲状腺炎"


@pytest.mark.parametrize("script,text", [("chinese", ZH), ("japanese", "甲状腺機能低下症の疑いがあります" * 3),
                                         ("thai", "ผู้ป่วยมีอาการอ่อนเพลียและน้ำหนักเพิ่มขึ้น" * 2)])
def test_consistency_weighs_scripts_without_spaces_by_length(script, text):
    """Language mixing lowers the ratio by its share: a <dx> one-fifth foreign script (by characters)
    scores at least 0.15 below the same completion without it, although it has no spaces to split on."""
    clean = effective_token_ratio(crpo())
    assert clean == 1.0
    n = len(DX) // 4  # the added run is a fifth of the new <dx>
    foreign = (text * (n // len(text) + 1))[:n]
    mixed = effective_token_ratio(crpo(dx=DX[: len(DX) // 2] + foreign + DX[len(DX) // 2 :]))
    assert mixed <= clean - 0.15, (script, mixed)
    # the drop grows with the share: a tenth costs less than a fifth, but still costs
    tenth = effective_token_ratio(crpo(dx=DX + foreign[: n // 2]))
    assert mixed < tenth < clean


def test_gold_on_bundled_samples_scores_full():
    """Test the gold: the project's exemplary traces get the full CRPO reward on their real items."""
    from clinical_r1.data import load_sample, sample_traces_path
    from clinical_r1.files import read_jsonl
    from clinical_r1.formats import CRPO

    items = {r["id"]: r for r in load_sample()}
    traces = read_jsonl(sample_traces_path())
    assert traces
    for t in traces:
        item = items[t["id"]]
        s = score(CRPO.render(t["dx"], t["conclusion"]), item["answer"], item["options"])
        assert s["total"] == 12.0, (t["id"], s)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=300), st.sampled_from(list("ABCDE")),
       st.sampled_from(sorted(PRESETS)))
def test_rewards_never_raise_and_are_bounded(text, gold, preset):
    p = get_preset(preset)
    s = score(text, gold, OPTS + ["Euthyroid sick syndrome"], preset=preset)
    assert s["total"] <= p.max_total + 1e-9
    if preset != "r1-medical":
        assert s["total"] >= 0.0
    assert 0.0 <= effective_token_ratio(text) <= 1.0


ADVERSARIAL = {
    "nested tags and boxes": ("<dx><conclusion>\\boxed{A}</dx>{{{{" * 20000 + "\\boxed{" * 20000)[:1_000_000],
    "unclosed box": "\\boxed{" + "a" * 1_000_000,
    "repetition loop": "<dx>" + "so so so " * 110_000 + "</dx>",
    "chinese": "<dx>" + "患者甲状腺 " * 160_000 + "</dx>",
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_megabyte_is_linear(name):
    """A 1 MB adversarial completion scores quickly (a generous bound; benchmarks/ measures it precisely)."""
    import time

    text = ADVERSARIAL[name]
    t = time.perf_counter()
    for preset in ("crpo", "grpo", "r1-medical"):
        s = score(text, "A", OPTS, preset=preset)
        assert s["total"] <= get_preset(preset).max_total
    assert time.perf_counter() - t < 2.0


def test_reward_benchmark_runs_and_saves_cold_medians(tmp_path):
    """benchmarks/reward_throughput.py at toy sizes: it prints, saves JSON, and times cold calls."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("reward_throughput", bench / "reward_throughput.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        path = mod.main(["--n", "6", "--tokens", "80", "--adversarial-bytes", "20000", "--repeats", "1",
                         "--adversarial-repeats", "3", "--step-seconds", "50", "--completions-per-step", "8",
                         "--results-dir", str(tmp_path)])
    finally:
        sys.path.remove(str(bench))
    res = json.loads(Path(path).read_text())
    assert res["settings"]["adversarial_statistic"] == "median, cold"
    crpo = res["presets"]["crpo"]
    assert set(crpo["adversarial_ms"]) >= {"chinese_text", "repetition_loop"} and crpo["adversarial_bound_ms"] == 50.0
