"""clinical_r1.distill: scripted teacher answers through a real local server -> filtered, converted traces.

    .venv/bin/pytest tests/test_distill.py -q
"""

from __future__ import annotations

import json

import pytest

from clinical_r1.distill import DROP_REASONS, choose_prompt_kind, convert, distill, validate_item
from clinical_r1.formats import COT, CRPO
from clinical_r1.parsing import is_correct
from openai_server import FakeOpenAIServer, build_tiny_chat_model

KEY_ENV = "CLINICAL_R1_TEST_KEY"
OPTIONS = ["Graves disease", "Subacute thyroiditis", "Hashimoto thyroiditis", "Pituitary adenoma"]
REASONING = "TSH is 12 mU/L with low free T4 and anti-TPO antibodies, so primary hypothyroidism. Option A is wrong."

# item id -> what the reasoner teacher returns (content, reasoning_content); gold answer is C for all.
REASONER_SCRIPT = {
    "r_ok": ("The raised TSH with anti-TPO antibodies decides it. **Answer:** $\\boxed{C}$", REASONING),
    "r_think": (f"<think>{REASONING}</think>\nAutoimmune hypothyroidism fits best: \\boxed{{C}}", ""),
    "r_boxed_reasoning": ("Final: \\boxed{C. Hashimoto thyroiditis}", REASONING + " So \\boxed{C}."),
    "r_wrong": ("Hyperthyroid picture. \\boxed{A}", REASONING),
    "r_two": ("Either \\boxed{C} or \\boxed{D}.", REASONING),
    "r_nobox": ("The answer is C.", REASONING),
    "r_unreadable": ("\\boxed{Z}", REASONING),
    "r_empty": ("Hashimoto. \\boxed{C}", "   "),
    "r_badfmt": ("\\boxed{C}", "I will write </dx> early. " + REASONING),
    "r_fail": ("\\boxed{C}", REASONING),  # the server always answers 500 for this one
}
EXPECTED = {"r_ok": None, "r_think": None, "r_boxed_reasoning": None, "r_wrong": "wrong_answer",
            "r_two": "multiple_boxes", "r_nobox": "no_box", "r_unreadable": "unreadable_box",
            "r_empty": "empty_reasoning", "r_badfmt": "invalid_format", "r_fail": "api_failure"}


def item(i: str, answer: str = "C") -> dict:
    return {"id": i, "question": f"[{i}] A 45-year-old woman has fatigue, weight gain and a goitre. Diagnosis?",
            "options": OPTIONS, "answer": answer, "source": "sample", "subgroup": "", "explanation": "", "meta": "{}"}


def item_id_of(request: dict) -> str:
    text = request["messages"][-1]["content"]
    return text[text.index("[") + 1: text.index("]")]


def reasoner_answer(request: dict) -> dict:
    content, reasoning = REASONER_SCRIPT[item_id_of(request)]
    return {"content": content, "reasoning_content": reasoning}


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-distill-test")


def teacher(srv: FakeOpenAIServer, model: str, **kw) -> dict:
    return {"model": model, "base_url": srv.base_url, "api_key_env": KEY_ENV, "timeout_s": 2.0, "max_retries": 1,
            "backoff_base_s": 0.01, "concurrency": 3, **kw}


def test_reasoner_teacher_filtering_conversion_and_resume(tmp_path, key):
    items = [item(i) for i in REASONER_SCRIPT]
    out, cache = tmp_path / "traces.jsonl", tmp_path / "teacher_cache.jsonl"
    with FakeOpenAIServer(answer=reasoner_answer, faults={"[r_fail]": ["500"] * 10}) as srv:
        report = distill(items, teacher(srv, "deepseek-reasoner"), out, cache)
        body = srv.bodies[0]
    assert report["prompt_kind"] == "cot" and report["teacher"] == "deepseek-reasoner"
    assert [m["role"] for m in body["messages"]] == ["user"]  # reasoners: instructions in the user turn
    assert body["messages"][0]["content"].startswith(COT.instructions)
    expected_drops = {r: sum(v == r for v in EXPECTED.values()) for r in DROP_REASONS}
    assert report["dropped"] == expected_drops
    assert report["kept"] == 3 and report["n_items"] == 10
    assert report["dropped_ids"]["wrong_answer"] == ["r_wrong"] and report["dropped_ids"]["api_failure"] == ["r_fail"]

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r_ok", "r_think", "r_boxed_reasoning"]
    for r in rows:
        assert set(r) == {"id", "question", "options", "answer", "dx", "conclusion", "teacher", "source"}
        target = CRPO.render(r["dx"], r["conclusion"])
        assert CRPO.well_formed(target, r["options"]) and is_correct(target, "C", r["options"])
        assert r["dx"] == REASONING or r["dx"] == REASONING + " So C."
        assert r["conclusion"].endswith("\\boxed{C}") and r["conclusion"].count("\\boxed") == 1
    assert rows[0]["conclusion"] == "The raised TSH with anti-TPO antibodies decides it. **Answer:** \\boxed{C}"
    assert rows[2]["conclusion"] == "Final: \\boxed{C}"  # the box is normalised to its letter
    assert not list(tmp_path.glob(".traces.jsonl.*"))  # atomic write left no temporary file

    with FakeOpenAIServer(answer=reasoner_answer) as srv:  # rerun: the endpoint has recovered
        again = distill(items, teacher(srv, "deepseek-reasoner"), out, cache)
        assert srv.total_requests == 1 and srv.requests_for("[r_fail]") == 1  # only the failed item is re-sent
    assert again["kept"] == 4 and again["dropped"]["api_failure"] == 0
    assert again["usage"]["cache_hits"] == 9


def test_chat_teacher_answers_in_crpo_format(tmp_path, key):
    def answer(request):
        i = item_id_of(request)
        if i == "c_ok":
            return ("Sure.\n<dx>\nInitial impression: hypothyroidism. TSH 12 mU/L, anti-TPO positive; "
                    "option D would give a low TSH, so it is rejected. \\boxed{C}\n</dx>\n<conclusion>\n"
                    "TSH 12 mU/L with anti-TPO antibodies means Hashimoto thyroiditis. \\boxed{C}\n</conclusion>")
        return "<dx>\nHypothyroid.\n</dx>\n<conclusion>\nSo \\boxed{B}\n</conclusion>"

    with FakeOpenAIServer(answer=answer) as srv:
        report = distill([item("c_ok"), item("c_wrong")], teacher(srv, "qwen2.5-72b-instruct"),
                         tmp_path / "t.jsonl", None)
        assert [m["role"] for m in srv.bodies[0]["messages"]] == ["system", "user"]
        assert srv.bodies[0]["messages"][0]["content"] == CRPO.instructions
    assert report["prompt_kind"] == "crpo" and report["kept"] == 1 and report["dropped"]["wrong_answer"] == 1
    row = json.loads((tmp_path / "t.jsonl").read_text())
    assert row["dx"].startswith("Initial impression") and "\\boxed" not in row["dx"] and row["dx"].endswith("C")
    assert row["conclusion"] == "TSH 12 mU/L with anti-TPO antibodies means Hashimoto thyroiditis. \\boxed{C}"


@pytest.mark.parametrize("content,reasoning,reason", [
    ("\\boxed{C}", REASONING, None),
    ("\\boxed{(C)}", REASONING, None),
    ("\\boxed{Hashimoto thyroiditis}", REASONING, None),  # the exact option text names the letter
    ("\\boxed{B}", REASONING, "wrong_answer"),
    ("\\boxed{C}\\boxed{C}", REASONING, "multiple_boxes"),
    ("no box at all", REASONING, "no_box"),
    ("\\boxed{}", REASONING, "unreadable_box"),
    ("\\boxed{C}", "", "empty_reasoning"),
    ("\\boxed{C}", "<conclusion>nested</conclusion>", "invalid_format"),
    ("<think></think>\\boxed{C}", "", "empty_reasoning"),
])
def test_convert_cases(content, reasoning, reason):
    conv = convert(content, reasoning, "C", OPTIONS)
    assert conv.reason == reason
    if reason is None:
        assert conv.conclusion == "\\boxed{C}" and conv.dx == REASONING


def test_prompt_kind_choice_and_item_validation(tmp_path, key):
    assert choose_prompt_kind("deepseek-reasoner") == "cot"
    assert choose_prompt_kind("DeepSeek-R1-Distill-Qwen-7B") == "cot"
    assert choose_prompt_kind("deepseek-chat") == "crpo"
    assert choose_prompt_kind("deepseek-reasoner", "crpo") == "crpo"
    with pytest.raises(ValueError, match="prompt_kind"):
        choose_prompt_kind("m", "essay")
    with pytest.raises(ValueError, match="row 3.*'options'"):
        validate_item({"id": "x", "question": "q", "answer": "A"}, 3)
    with pytest.raises(ValueError, match="answer 'E'"):
        validate_item({"id": "x", "question": "q", "options": ["a", "b"], "answer": "E"}, 0)
    # the edge of distill: the gold letter is folded once here and trusted by convert and the output rows
    assert validate_item({"id": "x", "question": "q", "options": ["a", "b"], "answer": " b"}, 0) == "B"
    with FakeOpenAIServer() as srv:
        with pytest.raises(ValueError, match="duplicate id 'a'"):
            distill([item("a"), item("a")], teacher(srv, "m"), tmp_path / "o.jsonl", None)
        assert srv.total_requests == 0


@pytest.mark.slow
def test_local_teacher_tiny_model(tmp_path):
    """The local transformers backend runs end to end; a random tiny model's answers are all dropped, by reason."""
    model, tok = build_tiny_chat_model()
    from clinical_r1.api import LocalBackend

    report = distill([item("l1"), item("l2")], LocalBackend(model, tok, name="tiny", max_new_tokens=6),
                     tmp_path / "t.jsonl", tmp_path / "c.jsonl")
    assert report["n_items"] == 2 and report["kept"] + sum(report["dropped"].values()) == 2
    assert report["usage"]["answers_received"] == 2 and report["usage"]["backend"] == "local"
    assert (tmp_path / "t.jsonl").exists()
