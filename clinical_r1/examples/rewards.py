"""Example user rewards, written as a researcher would write them outside the package, and named by import path.

    # a training config (or notebook 04's reward_functions parameter, or an ablation-grid variant):
    reward:
      preset: crpo
      functions: {"clinical_r1.examples.rewards:contradicts_dx": -2.0}   # a penalty: the indicator, weighted -2

    python -m clinical_r1 crpo --config configs/cpu_demo_crpo.yaml \\
        --set 'reward.functions={"clinical_r1.examples.rewards:contradicts_dx": -2.0}'

Each is a plain TRL reward function (``completions`` plus dataset columns, ``**kwargs``) that returns one float per
completion, and declares the answer format it reads with :func:`clinical_r1.rewards.register_reward`. Weights never
live inside a reward: ``contradicts_dx`` is an indicator (its mean is the contradiction rate in the logs), and the
config's negative weight makes it a penalty.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from clinical_r1.formats import CRPO
from clinical_r1.parsing import completion_text, options_named
from clinical_r1.rewards import register_reward

# A <dx> sentence with one of these words rejects the one option it names.
REJECTION_CUE = re.compile(r"\b(?:not|no|unlikely|less likely|rule[sd]? out|ruled out|exclude[sd]?|inconsistent|"
                           r"against|incorrect|wrong|doesn't|does not|cannot|can't)\b", re.I)
_SENTENCE = re.compile(r"[^\n.;!?]+(?:[.;!?](?=\s|$)|\n|$)")
WORD_BUDGET = 30  # concise_answer: words an answer may use


def rejected_options(dx: str, options: Sequence[str]) -> set[str]:
    """The option letters ``dx`` rejects: a sentence (split at ``. ; ! ?`` before a space, and at line ends) that names
    exactly one option (:func:`clinical_r1.parsing.options_named`: ``option C``, ``(C)``, ``C.`` opening a line, or
    the option's text) and holds a rejection cue (``REJECTION_CUE``: not, unlikely, ruled out, excluded, ...).
    Deliberately simple: "C is unlikely" rejects C; "C rather than D" rejects nothing; "not B but C" names two
    options and rejects neither."""
    out: set[str] = set()
    for m in _SENTENCE.finditer(dx):
        sentence = m.group(0)
        named = options_named(sentence, options)
        if len(named) == 1 and REJECTION_CUE.search(sentence):
            out |= named
    return out


@register_reward(format="crpo")
def contradicts_dx(completions: list[Any], options: list[Sequence[str]] | None = None, **kwargs: Any) -> list[float]:
    """1.0 when the ``<conclusion>`` boxes an option that its own ``<dx>`` rejected (:func:`rejected_options`), else
    0.0 (also when either section or the single box is missing: the format rewards score those). Weight it
    negatively: a conclusion should not answer with an option its analysis argued against."""
    out = []
    for i, c in enumerate(completions):
        opts = list(options[i]) if options is not None and options[i] is not None else []
        p = CRPO.parse(c, opts or None)
        dx = p.sections.get("dx")
        bad = dx is not None and "conclusion" in p.sections and p.box_in_final and p.letter is not None \
            and p.letter in rejected_options(dx, opts)
        out.append(1.0 if bad else 0.0)
    return out


@register_reward
def concise_answer(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 when the answer uses at most ``WORD_BUDGET`` (30) whitespace-separated words, else 0.0: a length budget, as
    the paper discusses for verbose cold starts. Any answer format."""
    return [1.0 if len(completion_text(c).split()) <= WORD_BUDGET else 0.0 for c in completions]
