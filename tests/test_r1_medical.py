"""The r1-medical preset equals the authors' released reward on every input.

The rules are the facts of ``compute_score`` in verl/utils/reward_score/medical_rule_based.py of the public
repository BoyangGu1/Clinical-R1-3B (training branch). ``reference`` below is a plain transcription of
those rules with the regular expressions they use; the package's implementation is written for linear time
and must agree with it everywhere.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinical_r1.rewards import R1_EOS, get_preset, r1_preprocess, score

ENGLISH_SET = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n" ".,!?;:'\"()[]{}<>-_/\\|`~@#$%^&*+=")


def reference(text: str, gold: str, eos: str = R1_EOS) -> dict[str, float]:
    """The rules as stated, with the regexes they name (quadratic on adversarial input; small cases only)."""
    s = text.split(eos)[0].strip()
    s = s.replace("<\\think>", "</think>").replace("<\\answer>", "</answer>")
    if "## Final Response" in s:
        s = s.split("## Final Response")[1].strip()
    n = s.count("\\boxed")
    if n == 1:
        m = re.search(r"\\boxed\{(.*?)\}", s)
        if m is None:
            acc = -1.0
        elif m.group(1) in list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
            acc = 1.0 if m.group(1) == gold else 0.0
        else:
            acc = -0.5
    else:
        acc = -float(n)
    m = re.search(r"^<think>.*?</think>\s*<answer>(.*?)</answer>$", s, re.DOTALL)
    fmt = 0.0
    if m:
        fmt = 1.0
        body = m.group(1).strip()
        boxes = re.findall(r"(\\boxed\{.*?\})", body)
        if len(boxes) == 1 and boxes[0] != body:
            fmt += 0.5
    eng = sum(ch in ENGLISH_SET for ch in s) / len(s) if s else 0.0
    return {"accuracy": acc, "format": fmt, "english": eng, "total": 10 * acc + fmt + 0.5 * eng}


GOOD = "<think>TSH is high.</think>\n<answer>The answer is \\boxed{B}</answer>"

CASES = [
    # (completion, gold, expected subset)
    (GOOD, "B", {"accuracy": 1, "format": 1.5, "english": 1, "total": 11.5 + 0.5}),
    (GOOD, "C", {"accuracy": 0, "format": 1.5}),
    ("<think>r</think><answer>\\boxed{B}</answer>", "B", {"accuracy": 1, "format": 1.0}),  # box is the whole body
    ("<think>r</think><answer> \\boxed{B} </answer>", "B", {"format": 1.0}),  # the body is stripped first
    ("<think>r</think><answer>\\boxed{ C }</answer>", "C", {"accuracy": -0.5}),  # no stripping inside the box
    ("<think>r</think><answer>\\boxed{c}</answer>", "C", {"accuracy": -0.5}),  # no case folding
    ("<think>r</think><answer>\\boxed{BC}</answer>", "B", {"accuracy": -0.5}),
    ("<think>r</think><answer>\\boxed{\nB}</answer>", "B", {"accuracy": -1}),  # no {...} on the box's line
    ("<think>r</think><answer>\\boxed B</answer>", "B", {"accuracy": -1, "format": 1.0}),
    ("<think>r</think><answer>\\boxed{B} or \\boxed{C}</answer>", "B", {"accuracy": -2, "format": 1.0}),
    ("no box at all", "B", {"accuracy": 0, "format": 0}),
    ("<think>r</think> stray <answer>So \\boxed{B}</answer>", "B", {"accuracy": 1, "format": 0}),  # text between
    ("<think>r</think>\n\t <answer>So \\boxed{B}</answer>", "B", {"format": 1.5}),  # only whitespace between
    (" <think>r</think><answer>So \\boxed{B}</answer>", "B", {"format": 1.5}),  # a leading space is stripped
    ("<think>r</think><answer>So \\boxed{B}</answer> tail", "B", {"format": 0}),
    ("<think>r<\\think><answer>So \\boxed{B}<\\answer>", "B", {"format": 1.5}),  # repaired closers
    ("<think>r</think><answer>So \\boxed{B}</answer><|im_end|>\\boxed{C}", "B", {"accuracy": 1, "format": 1.5}),
    ("<think>a</think><answer>x</answer> <think>b</think><answer>So \\boxed{B}</answer>", "B", {"format": 1.5}),
    ("draft \\boxed{C} ## Final Response\n<think>r</think><answer>So \\boxed{B}</answer>", "B",
     {"accuracy": 1, "format": 1.5}),
    ("", "B", {"accuracy": 0, "format": 0, "english": 0, "total": 0}),
    ("<think>r\ud800</think><answer>So \\boxed{B}</answer>", "B", {"accuracy": 1, "format": 1.5}),  # a lone surrogate
]


@pytest.mark.parametrize("completion,gold,expected", CASES)
def test_rules_table(completion, gold, expected):
    got = score(completion, gold, preset="r1-medical")
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), (key, got)
    assert got == pytest.approx(reference(completion, gold))


@pytest.mark.parametrize("ch,counts", [(" ", True), ("\n", True), ("\t", False), ("\r", False), ("°", False),
                                       ("µ", False), ("–", False), ("’", False), ("~", True), ("\\", True)])
def test_english_character_set(ch, counts):
    text = "<think>ab</think><answer>So \\boxed{B}</answer>"
    mixed = text.replace("ab", "a" + ch + "b")
    got = score(mixed, "B", preset="r1-medical")["english"]
    assert got == pytest.approx((len(mixed) - (not counts)) / len(mixed))


def test_preprocess():
    assert r1_preprocess("  <think>x<\\think> <|im_end|> rest") == "<think>x</think>"
    assert r1_preprocess("a ## Final Response b ## Final Response c") == "b"


def test_weights_are_the_authors():
    assert get_preset("r1-medical").weights == {"r1_accuracy": 10.0, "r1_format": 1.0, "english": 0.5,
                                                 "completion_length": 0.0}


PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<\\think>", "<\\answer>", "\\boxed", "\\boxed{",
          "{", "}", "A", "B", "c", " ", "\n", "\t", "\r", "°", "患", "So ", "## Final Response", R1_EOS, "x y"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14), st.sampled_from(list("ABC")))
def test_matches_the_transcription_on_layouts(pieces, gold):
    text = "".join(pieces)
    assert score(text, gold, preset="r1-medical") == pytest.approx(reference(text, gold))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.sampled_from(list("ABC")))
def test_matches_the_transcription_on_any_text(text, gold):
    assert score(text, gold, preset="r1-medical") == pytest.approx(reference(text, gold))


def test_linear_time_on_many_answer_openers():
    """The lazy regex backtracks over every ``</think><answer>`` pair; the implementation stays linear."""
    import time

    text = "<think>" + "</think><answer>\\boxed{" * 40_000 + "x"
    t = time.perf_counter()
    assert score(text, "A", preset="r1-medical")["format"] == 0.0
    assert time.perf_counter() - t < 1.0
