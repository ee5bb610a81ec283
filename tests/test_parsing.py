"""The one answer parser: strings and chat messages, tolerant boxes, the structure report, the answer formats."""

import pytest
from hypothesis import given, settings, strategies as st

from clinical_r1.formats import CRPO, FORMATS, AnswerFormat, get_format, parse
from clinical_r1.parsing import (box_letter, committed_answer, completion_text, extract_letter, find_boxes, is_correct,
                                 is_correct_letter)

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
    with pytest.raises(ValueError, match=r"unknown answer format 'xml'; known formats: \['cot', 'crpo', 'direct'"):
        parse("x", "xml")
    with pytest.raises(ValueError, match="unknown answer format"):
        get_format("xml")


def test_each_format_owns_its_tags_and_structure_check():
    assert {n: f.tags for n, f in FORMATS.items()} == {
        "crpo": ("dx", "conclusion"), "grpo": ("think", "answer"), "cot": (), "direct": ()}
    assert all(f.name == n and "\\boxed{X}" in f.instructions for n, f in FORMATS.items())
    assert CRPO.parse(WELL, OPTS) is parse(WELL, "crpo", OPTS)  # one memoised parse
    assert CRPO.well_formed(WELL) and not FORMATS["grpo"].well_formed(WELL)
    assert FORMATS["cot"].well_formed(WELL)  # untagged formats judge the single box only
    assert FORMATS["cot"].well_formed("so \\boxed{B}") and not FORMATS["direct"].well_formed("\\boxed{B} \\boxed{B}")
    with pytest.raises(ValueError, match="renders 2 section bodies"):
        CRPO.render("only one body")
    with pytest.raises(ValueError, match="renders 0 section bodies"):
        FORMATS["cot"].render("text")


def test_a_new_format_is_one_object():
    xml = AnswerFormat("xml", ("reasoning", "final"), "Reason in <reasoning>, answer in <final> as \\boxed{X}.")
    target = xml.render("TSH 12 mU/L.", "So \\boxed{B}")
    assert target == "<reasoning>\nTSH 12 mU/L.\n</reasoning>\n<final>\nSo \\boxed{B}\n</final>"
    p = xml.parse(target, OPTS)
    assert xml.well_formed(target) and p.fmt == "xml" and p.letter == "B"
    assert p.sections["reasoning"].strip() == "TSH 12 mU/L."
    assert not xml.well_formed(WELL) and is_correct(target, "B")


def test_correctness_compares_the_trusted_gold_letter():
    assert is_correct_letter("B", "B") and not is_correct_letter(None, "B") and not is_correct_letter("A", "B")
    # the gold is validated where data enters the package (data.load_benchmark); inside it is trusted as is
    assert not is_correct(WELL, " b")


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


# ---------------------------------------------------------------------------------------------------
# committed_answer: the one option a box-less answer (public R1 traces) commits to
# ---------------------------------------------------------------------------------------------------

RX = ["Ampicillin", "Ceftriaxone", "Nitrofurantoin", "Doxycycline", "Autoimmune hepatitis"]


@pytest.mark.parametrize("text,letter,kept", [
    ("**Answer:** C. Nitrofurantoin\n\n**Explanation:**\n- **A. Ampicillin**: resistance.\n- **B. Ceftriaxone**: no.",
     "C", "**Answer:** C. Nitrofurantoin"),
    ("The correct answer is **B. Ceftriaxone**.\n\n**Key points:** Ampicillin (A) fails.", "B",
     "The correct answer is **B. Ceftriaxone**."),
    ("C. Nitrofurantoin\n\nIt is safe in pregnancy, unlike D.", "C", "C. Nitrofurantoin"),
    ("The best choice is **C.** Nitrofurantoin", "C", "The best choice is **C.** Nitrofurantoin"),
    ("**Final Answer**\n\nD. Doxycycline\n\nAmpicillin is wrong.", "D", "**Final Answer**\n\nD. Doxycycline"),
    ("The answer is (C). Ampicillin (A) is wrong.", "C", "The answer is (C)."),
    ("Nitrofurantoin is the treatment of choice.\n\nAmpicillin resistance is common.", "C",
     "Nitrofurantoin is the treatment of choice."),
    ("A 25-year-old woman: treat with **Nitrofurantoin**.", "C", "A 25-year-old woman: treat with **Nitrofurantoin**."),
    ("**Answer: E. Autoimmune hepatitis**", "E", "**Answer: E. Autoimmune hepatitis**"),
    ("**Answer:** B. Ceftriaxone or C. Nitrofurantoin", None, ""),          # two options in one statement
    ("**Answer:** C\n\nIn summary, the answer is B.", None, ""),             # two statements disagree
    ("Ampicillin fails here.\n\n**Answer:** C", None, ""),                    # the opening names another option
    ("The patient has cystitis; several drugs work.", None, ""),             # no option named
    ("A urinary infection in pregnancy.", None, ""),                          # an article is not a letter
])
def test_committed_answer(text, letter, kept):
    c = committed_answer(text, RX)
    assert c.letter == letter and text[: c.end] == kept
    assert c.letter is None or c.named == (letter,)


def test_committed_answer_counts_the_longer_option_text_only():
    opts = ["Hepatitis", "Autoimmune hepatitis", "Cholangitis"]
    assert committed_answer("The answer is autoimmune hepatitis.", opts).letter == "B"
    assert committed_answer("The answer is hepatitis.", opts).letter == "A"
    assert committed_answer("The answer is F.", RX).letter is None  # beyond the options
