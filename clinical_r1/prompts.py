"""Prompt kinds, built as chat messages for the model's chat template.

    from clinical_r1.prompts import build_messages
    msgs = build_messages(item, kind="crpo")      # item: a record with question, options

Each prompt kind is an answer format of :mod:`clinical_r1.formats` (``crpo``, ``grpo``, ``cot``, ``direct``),
and its system prompt is that format's ``instructions``: the prompt, the SFT target and the reward read one
object, so they can never disagree about what a well-formed answer is.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from clinical_r1.errors import UsageError
from clinical_r1.formats import FORMATS
from clinical_r1.parsing import LETTERS

PROMPT_KINDS = tuple(FORMATS)


def format_options(options: Sequence[str]) -> str:
    """``A. first option`` lines, one per option, in letter order."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def user_prompt(question: str, options: Sequence[str]) -> str:
    return f"{question.strip()}\n\n{format_options(options)}"


def build_messages(item: Mapping[str, Any], kind: str = "crpo", system: bool = True) -> list[dict[str, str]]:
    """Chat messages for one record (``question``, ``options``) and one prompt kind.

    ``system=False`` folds the instructions into the user turn, for chat templates without a system role.
    """
    if kind not in FORMATS:
        raise UsageError(f"unknown prompt kind {kind!r}; choose one of {list(PROMPT_KINDS)}")
    instructions = FORMATS[kind].instructions
    user = user_prompt(item["question"], item["options"])
    if system:
        return [{"role": "system", "content": instructions}, {"role": "user", "content": user}]
    return [{"role": "user", "content": f"{instructions}\n\n{user}"}]
