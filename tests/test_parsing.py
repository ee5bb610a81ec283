"""The one answer parser: strings and chat messages, tolerant boxes, the structure report."""

import pytest
from hypothesis import given, settings, strategies as st

from clinical_r1.parsing import box_letter, completion_text, extract_letter, find_boxes, is_correct, parse

OPTS = ["Graves disease", "Hashimoto thyroiditis", "Subacute thyroiditis", "Toxic adenoma"]
WELL = "<dx>\nTSH 12 mU/L, low free T4.\n</dx>\n<conclusion>\nHypothyroid. \\boxed{B}\n</conclusion>"


@pytest.mark.parametrize("content,letter", [
    ("C", "C"), (" C ", "C"), ("C.", "C"), ("(C)", "C"), ("\\text{C}", "C"), ("\\textbf{ C }", "C"),
    ("\\text{\\textbf{C}}", "C"), ("C. Subacute thyroiditis", "C"), ("C) subacute  thyroiditis", "C"),
    ("Subacute thyroiditis", "C"), ("c", None), ("CC", None), ("", None), ("E", None),
    ("C. Toxic adenoma", None), ("Thyroid storm", None), (None, None),
])
def test_box_letter(content, letter):
    assert box_letter(content, OPTS) == letter


def test_box_letter_without_options_accepts_any_capital():
    assert box_letter("H") == "H"
    assert box_letter("C. whatever text") is None  # restated text cannot be checked without options


def test_find_boxes_nested_bare_and_unclosed():
    boxes = find_boxes("a \\boxed{\\text{C}} b \\boxed c \\boxed {D} \\boxed{unclosed")
    assert [b.content for b in boxes] == ["\\text{C}", None, "D", None]


@pytest.mark.parametrize("completion", [
    WELL,
    [{"role": "assistant", "content": WELL}],
    {"role": "assistant", "content": WELL},
    [{"role": "assistant", "content": [{"type": "text", "text": WELL}]}],
])
def test_completion_forms(completion):
    assert completion_text(completion) == WELL
    assert extract_letter(completion) == "B"
    assert is_correct(completion, "B") and not is_correct(completion, "A")


def test_structure_report_well_formed():
    p = parse(WELL, "crpo", OPTS)
    assert p.well_formed and p.tags_once and p.in_order and p.box_in_final and p.clean_outside
    assert p.sections["dx"].strip() == "TSH 12 mU/L, low free T4."
    r = p.report()
    assert r["tags_present"] == {"dx": True, "conclusion": True} and r["letter"] == "B" and r["n_boxes"] == 1


@pytest.mark.parametrize("text,field", [
    ("<conclusion>x \\boxed{B}</conclusion><dx>y</dx>", "in_order"),
    ("<dx>a</dx><dx>b</dx><conclusion>\\boxed{B}</conclusion>", "tags_once"),
    ("<dx> </dx><conclusion>\\boxed{B}</conclusion>", "sections_nonempty"),
    ("<dx>a \\boxed{B}</dx><conclusion>so</conclusion>", "box_in_final"),
    ("<dx>a</dx><conclusion>\\boxed{B}</conclusion> trailing", "clean_outside"),
    ("<dx>a</dx><conclusion>\\boxed{B} \\boxed{B}</conclusion>", "n_boxes"),
])
def test_structure_failures(text, field):
    p = parse(text, "crpo")
    assert not p.well_formed
    value = getattr(p, field)
    assert value is False or (field == "n_boxes" and value == 2)


def test_grpo_format_and_unknown_format():
    assert parse("<think>r</think><answer>so \\boxed{A}</answer>", "grpo").well_formed
    assert not parse("<think>r</think>\\boxed{A}", "grpo").well_formed
    with pytest.raises(ValueError, match="unknown answer format"):
        parse("x", "xml")


def test_two_boxes_have_no_letter():
    assert extract_letter("\\boxed{A} or \\boxed{B}") is None
    assert extract_letter("\\boxed{A} and again \\boxed{A}") is None


def test_completion_text_rejects_other_types():
    with pytest.raises(TypeError):
        completion_text(42)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("<>/dxconlusi{}\\ABC .\n") + ["<dx>", "</dx>", "<conclusion>", "</conclusion>",
                                                                 "\\boxed{", "\\boxed", "}"]), max_size=80).map("".join))
def test_parser_never_raises(text):
    p = parse(text, "crpo", OPTS)
    assert p.letter in (None, "A", "B", "C", "D")
    assert isinstance(p.report(), dict)
    assert p.n_boxes == text.count("\\boxed")
