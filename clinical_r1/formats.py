"""The answer formats: one object per format owns its tags, its prompt instructions, its parse, its structure
check and the rendering of an SFT target.

    from clinical_r1.formats import get_format
    crpo = get_format("crpo")
    crpo.instructions                                   # the crpo system prompt
    target = crpo.render("TSH 12 mU/L ...", "... \\\\boxed{B}")   # the SFT target from the section bodies
    crpo.parse(target).letter, crpo.well_formed(target)  # "B", True

Formats (each is also a prompt kind of :mod:`clinical_r1.prompts`):
- ``crpo``: ``<dx>`` hypothesis-driven analysis, then ``<conclusion>`` citing it, ending in one ``\\boxed{X}``.
- ``grpo``: the generic thinking format ``<think>…</think><answer>… \\boxed{X}</answer>``.
- ``cot``: plain chain of thought ending in ``\\boxed{X}`` (the paper's baseline prompt).
- ``direct``: the answer letter only, boxed.

Adding a format is adding one :class:`AnswerFormat` to ``FORMATS``: the prompt, the SFT target, the rewards
and the text metrics then agree on it. The generic machinery (boxes, letters, the structure report) lives in
:mod:`clinical_r1.parsing`, which imports nothing from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from clinical_r1.errors import UnknownName
from clinical_r1.parsing import Parsed, parse_structure


@dataclass(frozen=True)
class AnswerFormat:
    """One answer format: its name, its section tags in order (the last one holds the box; none for untagged
    formats) and the instructions shown in its system prompt."""

    name: str
    tags: tuple[str, ...]
    instructions: str

    def parse(self, completion: Any, options: Sequence[str] | None = None) -> Parsed:
        """The structure report of ``completion`` (string or chat messages) in this format (memoised)."""
        return parse_structure(completion, self.name, self.tags, options)

    def well_formed(self, completion: Any, options: Sequence[str] | None = None) -> bool:
        """Every tag exactly once, in order, non-empty, nothing outside, one box in the last section (for an
        untagged format: exactly one box holding a letter). See :attr:`clinical_r1.parsing.Parsed.well_formed`."""
        return self.parse(completion, options).well_formed

    def render(self, *bodies: str) -> str:
        """The target text from one body per section, in tag order: ``<tag>\\nbody\\n</tag>`` joined by newlines
        (bodies stripped). SFT trains on it; untagged formats have no sections to render."""
        if not self.tags or len(bodies) != len(self.tags):
            raise ValueError(f"format {self.name!r} renders {len(self.tags)} section bodies {self.tags}, "
                             f"got {len(bodies)}")
        return "\n".join(f"<{t}>\n{b.strip()}\n</{t}>" for t, b in zip(self.tags, bodies))


# The crpo prompt describes its sections in prose and never shows a tag with text inside it: a small model copies
# a literal template (``<dx>First state your initial clinical impression…</dx>``) into its answer instead of
# analysing the case, as the 135M demo model did after 30 SFT steps.
CRPO = AnswerFormat("crpo", ("dx", "conclusion"), (
    "You are an experienced clinician answering a multiple-choice clinical question. Write your analysis "
    "inside <dx> and </dx>: your initial impression, the key findings with their values and units, and a "
    "verdict on every option. Then write your conclusion inside <conclusion> and </conclusion>: cite the "
    "findings from your analysis that decide the answer and end with the answer letter as \\boxed{X}."
))
GRPO = AnswerFormat("grpo", ("think", "answer"), (
    "A conversation between User and Assistant. The assistant first thinks about the reasoning "
    "process and then gives the answer. The reasoning is enclosed in <think> </think> and the answer "
    "in <answer> </answer>, i.e. <think> reasoning here </think><answer> answer here </answer>. "
    "The answer ends with the single option letter as \\boxed{X}."
))
COT = AnswerFormat("cot", (), (
    "You are a medical expert. Think step by step about the clinical question, then give the single "
    "answer letter at the end as \\boxed{X}."
))
DIRECT = AnswerFormat("direct", (), (
    "You are a medical expert. Reply with the single answer letter only, as \\boxed{X}."
))

FORMATS: dict[str, AnswerFormat] = {f.name: f for f in (CRPO, GRPO, COT, DIRECT)}


def get_format(name: str) -> AnswerFormat:
    """The answer format called ``name``; a ``ValueError`` naming the known formats otherwise."""
    if name not in FORMATS:
        raise UnknownName(f"unknown answer format {name!r}; known formats: {sorted(FORMATS)}")
    return FORMATS[name]


def parse(completion: Any, fmt: str = "crpo", options: Sequence[str] | None = None) -> Parsed:
    """Parse ``completion`` (string or chat messages) against the answer format named ``fmt``.

        >>> parse("<dx>TSH 12 mU/L ...</dx><conclusion>... \\\\boxed{C}</conclusion>", "crpo").letter
        'C'
    """
    return get_format(fmt).parse(completion, options)
