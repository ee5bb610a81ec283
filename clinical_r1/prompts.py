"""Prompt kinds, built as chat messages for the model's chat template.

    from clinical_r1.prompts import build_messages
    msgs = build_messages(item, kind="crpo")      # item: a record with question, options

Kinds:
- ``crpo``: ``<dx>`` hypothesis-driven analysis, then ``<conclusion>`` citing it, ending in one ``\\boxed{X}``.
- ``grpo``: the generic thinking format ``<think>…</think><answer>… \\boxed{X}</answer>``.
- ``cot``: plain chain of thought ending in ``\\boxed{X}`` (the paper's baseline prompt).
- ``direct``: the answer letter only, boxed.

Each kind names the answer format the parser checks (``FORMAT_OF``), so the prompt and the reward
can never disagree about what a well-formed answer is.

The crpo prompt describes its sections in prose and never shows a tag with text inside it: a small model
copies a literal template (``<dx>First state your initial clinical impression…</dx>``) into its answer
instead of analysing the case, as the 135M demo model did after 30 SFT steps.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from clinical_r1.parsing import LETTERS

PROMPT_KINDS = ("crpo", "grpo", "cot", "direct")
FORMAT_OF = {"crpo": "crpo", "grpo": "grpo", "cot": "cot", "direct": "direct"}

SYSTEM_PROMPTS: dict[str, str] = {
    "crpo": (
        "You are an experienced clinician answering a multiple-choice clinical question. Write your analysis "
        "inside <dx> and </dx>: your initial impression, the key findings with their values and units, and a "
        "verdict on every option. Then write your conclusion inside <conclusion> and </conclusion>: cite the "
        "findings from your analysis that decide the answer and end with the answer letter as \\boxed{X}."
    ),
    "grpo": (
        "A conversation between User and Assistant. The assistant first thinks about the reasoning "
        "process and then gives the answer. The reasoning is enclosed in <think> </think> and the answer "
        "in <answer> </answer>, i.e. <think> reasoning here </think><answer> answer here </answer>. "
        "The answer ends with the single option letter as \\boxed{X}."
    ),
    "cot": (
        "You are a medical expert. Think step by step about the clinical question, then give the single "
        "answer letter at the end as \\boxed{X}."
    ),
    "direct": "You are a medical expert. Reply with the single answer letter only, as \\boxed{X}.",
}


def format_options(options: Sequence[str]) -> str:
    """``A. first option`` lines, one per option, in letter order."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def user_prompt(question: str, options: Sequence[str]) -> str:
    return f"{question.strip()}\n\n{format_options(options)}"


def build_messages(item: Mapping[str, Any], kind: str = "crpo", system: bool = True) -> list[dict[str, str]]:
    """Chat messages for one record (``question``, ``options``) and one prompt kind.

    ``system=False`` folds the instructions into the user turn, for chat templates without a system role.
    """
    if kind not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown prompt kind {kind!r}; choose one of {list(PROMPT_KINDS)}")
    user = user_prompt(item["question"], item["options"])
    if system:
        return [{"role": "system", "content": SYSTEM_PROMPTS[kind]}, {"role": "user", "content": user}]
    return [{"role": "user", "content": f"{SYSTEM_PROMPTS[kind]}\n\n{user}"}]


def crpo_target(dx: str, conclusion: str) -> str:
    """The SFT target text for the crpo format from its two section bodies."""
    return f"<dx>\n{dx.strip()}\n</dx>\n<conclusion>\n{conclusion.strip()}\n</conclusion>"


def grpo_target(think: str, answer: str) -> str:
    """The target text for the grpo format from its two section bodies."""
    return f"<think>\n{think.strip()}\n</think>\n<answer>\n{answer.strip()}\n</answer>"
