"""Prompt kinds as chat messages; each names the format the parser checks."""

import pytest

from clinical_r1.parsing import parse
from clinical_r1.prompts import FORMAT_OF, PROMPT_KINDS, build_messages, crpo_target, format_options, grpo_target

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
    assert parse(crpo_target("Finding TSH 12 mU/L.", "So \\boxed{B}"), FORMAT_OF["crpo"]).well_formed
    assert parse(grpo_target("think", "So \\boxed{B}"), FORMAT_OF["grpo"]).well_formed


def test_unknown_kind_and_option_format():
    with pytest.raises(ValueError, match="unknown prompt kind"):
        build_messages(ITEM, "socratic")
    assert format_options(["x", "y"]) == "A. x\nB. y"
