"""Prompt kinds as chat messages; each is an answer format, whose instructions are its system prompt."""

import pytest

from clinical_r1.formats import CRPO, FORMATS, GRPO
from clinical_r1.prompts import PROMPT_KINDS, build_messages, format_options

# The texts as they were before the formats owned them: prompts and SFT targets must not drift (a changed
# prompt or target is a different experiment, and cached teacher answers are keyed by the prompt).
CRPO_PROMPT = (
    "You are an experienced clinician answering a multiple-choice clinical question. Write your analysis "
    "inside <dx> and </dx>: your initial impression, the key findings with their values and units, and a "
    "verdict on every option. Then write your conclusion inside <conclusion> and </conclusion>: cite the "
    "findings from your analysis that decide the answer and end with the answer letter as \\boxed{X}."
)
GRPO_PROMPT = (
    "A conversation between User and Assistant. The assistant first thinks about the reasoning "
    "process and then gives the answer. The reasoning is enclosed in <think> </think> and the answer "
    "in <answer> </answer>, i.e. <think> reasoning here </think><answer> answer here </answer>. "
    "The answer ends with the single option letter as \\boxed{X}."
)
COT_PROMPT = ("You are a medical expert. Think step by step about the clinical question, then give the single "
              "answer letter at the end as \\boxed{X}.")
DIRECT_PROMPT = "You are a medical expert. Reply with the single answer letter only, as \\boxed{X}."

ITEM = {"question": "A 40-year-old woman has fatigue.", "options": ["Anemia", "Hypothyroidism", "Depression"]}


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_messages(kind):
    msgs = build_messages(ITEM, kind)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "\\boxed{X}" in msgs[0]["content"]
    assert "A. Anemia\nB. Hypothyroidism\nC. Depression" in msgs[1]["content"]
    folded = build_messages(ITEM, kind, system=False)
    assert len(folded) == 1 and msgs[0]["content"] in folded[0]["content"]


def test_crpo_prompt_names_its_sections():
    system = build_messages(ITEM, "crpo")[0]["content"]
    for tag in ("<dx>", "</dx>", "<conclusion>", "</conclusion>"):
        assert tag in system


def test_targets_parse_as_their_format():
    assert CRPO.well_formed(CRPO.render("Finding TSH 12 mU/L.", "So \\boxed{B}"))
    assert GRPO.well_formed(GRPO.render("think", "So \\boxed{B}"))
    assert not GRPO.well_formed(CRPO.render("Finding TSH 12 mU/L.", "So \\boxed{B}"))


def test_prompt_texts_are_unchanged():
    assert PROMPT_KINDS == ("crpo", "grpo", "cot", "direct")
    assert {k: FORMATS[k].instructions for k in PROMPT_KINDS} == {
        "crpo": CRPO_PROMPT, "grpo": GRPO_PROMPT, "cot": COT_PROMPT, "direct": DIRECT_PROMPT}
    assert build_messages(ITEM, "crpo")[0] == {"role": "system", "content": CRPO_PROMPT}
    assert build_messages(ITEM, "crpo", system=False)[0]["content"] == (
        CRPO_PROMPT + "\n\nA 40-year-old woman has fatigue.\n\nA. Anemia\nB. Hypothyroidism\nC. Depression")


def test_rendered_targets_are_unchanged():
    # bodies are stripped; each section opens and closes on its own line
    assert CRPO.render("  TSH 12 mU/L.\n", "\nSo \\boxed{B} ") == (
        "<dx>\nTSH 12 mU/L.\n</dx>\n<conclusion>\nSo \\boxed{B}\n</conclusion>")
    assert GRPO.render("think ", " So \\boxed{B}") == "<think>\nthink\n</think>\n<answer>\nSo \\boxed{B}\n</answer>"


def test_unknown_kind_and_option_format():
    with pytest.raises(ValueError, match="unknown prompt kind"):
        build_messages(ITEM, "socratic")
    assert format_options(["x", "y"]) == "A. x\nB. y"
