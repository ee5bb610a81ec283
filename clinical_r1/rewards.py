"""CRPO rewards: one plain function per verifiable objective, and presets of (functions, weights).

Each reward has TRL's signature ``f(completions, **dataset_columns) -> list[float]`` and works for
standard (string) and conversational (message list) completions; TRL logs it as
``rewards/<function name>/mean``. Weights never live inside a reward: a preset pairs functions with
weights, and ``GRPOConfig(reward_weights=..., multi_objective_aggregation="sum_then_normalize")``
reproduces the paper's reward exactly:

    R = k·accuracy + clinical_reasoning + 0.5·consistency        (k = 10, maximum k + 2)

    >>> from clinical_r1.rewards import score
    >>> score("<dx>...</dx><conclusion>... \\\\boxed{B}</conclusion>", answer="B")

Zero-weight rewards are diagnostics: TRL logs them every step for free.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from clinical_r1.parsing import FORMATS, completion_text, find_boxes, parse

RewardFn = Callable[..., list[float]]

# ---------------------------------------------------------------------------------------------------
# Cross-reference: does the conclusion cite a specific finding established in <dx>?
# ---------------------------------------------------------------------------------------------------

STOPWORDS = frozenset(
    """a an the and or but if then than that this these those is are was were be been being of to in on at
    by for with without from as into onto over under about after before between during is it its it's
    this which who whom whose what when where why how not no nor so such very can could should would may
    might must will shall do does did done has have had having he she they them his her their our we you
    i me my your yours also there here both each either neither any all some most more less other
    patient patients option options answer correct likely most best""".split()
)
XREF_NGRAM = 3  # shared run of this many content words counts as a citation
NEAR_COPY_CONTAINMENT = 0.8  # conclusion n-grams found in <dx> above this share ...
NEAR_COPY_LENGTH = 0.6  # ... with the conclusion at least this long relative to <dx> = a near-copy
_WORD = re.compile(r"[a-z0-9]+(?:[.'/-][a-z0-9]+)*")
_VALUE = re.compile(
    r"(\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?)\s*"
    r"(%|°\s*[cf]|mm\s*hg|mmhg|mg/dl|mmol/l|meq/l|mu/l|miu/l|u/l|iu/l|g/dl|ng/ml|pg/ml|µg/dl|ug/dl|"
    r"/mm3|/µl|/ul|/min|bpm|kg|cm|mm|ml|mg|years?|weeks?|days?|hours?|months?)"
)


def _content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _values(text: str) -> set[str]:
    return {re.sub(r"\s+", "", f"{a}{u}") for a, u in _VALUE.findall(text.lower())}


def cross_references(dx: str, conclusion: str, options: Sequence[str] | None = None) -> bool:
    """The cross-reference rule (verifiable, hard to game).

    The conclusion cross-references ``<dx>`` when both hold:
    1. it restates a specific finding from ``<dx>``: a run of ``XREF_NGRAM`` (3) consecutive content
       words (stop-words removed) that occurs in both, and that is not contained in any option text
       (restating the answer is not citing a finding), **or** a clinical value with its unit that
       occurs in both (``TSH 12 mU/L`` → ``12mu/l``, ``BP 150/95 mmHg`` → ``150/95mmhg``);
    2. it is not a near-copy of ``<dx>``: not (≥ 80% of its 3-grams occur in ``<dx>`` and it has
       ≥ 60% of ``<dx>``'s length in content words).
    """
    dx_words, cc_words = _content_words(dx), _content_words(conclusion)
    if not dx_words or not cc_words:
        return False
    dx_grams, cc_grams = _ngrams(dx_words, XREF_NGRAM), _ngrams(cc_words, XREF_NGRAM)
    shared = dx_grams & cc_grams
    if shared and options:
        option_grams: set[tuple[str, ...]] = set()
        for o in options:
            option_grams |= _ngrams(_content_words(o), XREF_NGRAM)
        shared -= option_grams
    cites = bool(shared) or bool(_values(dx) & _values(conclusion))
    if not cites:
        return False
    if cc_grams:
        containment = len(cc_grams & dx_grams) / len(cc_grams)
        if containment >= NEAR_COPY_CONTAINMENT and len(cc_words) >= NEAR_COPY_LENGTH * len(dx_words):
            return False
    return True


# ---------------------------------------------------------------------------------------------------
# Consistency: the effective-token ratio
# ---------------------------------------------------------------------------------------------------

# Non-ASCII characters that still count as English text: typography, units, Greek letters of medicine.
ENGLISH_EXTRA = frozenset("°µμ±‐‑‒–—‘’“”•·…×÷≤≥≈≠→←↑↓↔‰′″™®©½¼¾αβγδεκλπστωΔ"
                          "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻₀₁₂₃₄₅₆₇₈₉₊₋\u00a0\u2009\u202f")
MAX_LOOP = 20  # repeated spans of up to this many tokens are detected as loops
_TOKEN = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?;\n]")


def _is_english(token: str) -> bool:
    if token.isascii():
        return True
    return all(c.isascii() or c in ENGLISH_EXTRA or unicodedata.category(c).startswith("M") for c in token)


def _loop_mask(ids: np.ndarray) -> np.ndarray:
    """True for tokens that repeat the span just before them (a loop counts once)."""
    n = len(ids)
    rep = np.zeros(n, dtype=bool)
    for p in range(1, min(MAX_LOOP, n // 2) + 1):
        eq = ids[p:] == ids[:-p]  # eq[j]: token j+p equals token j
        if not eq.any():
            continue
        # run lengths of consecutive True in eq; a run of >= p means a whole span of p was repeated
        padded = np.concatenate(([False], eq, [False]))
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        for s, e in zip(edges[::2], edges[1::2]):
            if e - s >= p:
                rep[s + p : e + p] = True
    return rep


def effective_token_ratio(completion: Any, fmt: str = "crpo") -> float:
    """Share of whitespace tokens that are effective; in [0, 1], 0 for an empty completion.

    A token is effective when it is (1) inside the format's sections (from the first open tag of a
    section to its close tag; every token for untagged formats), (2) English: ASCII, or typographic,
    unit and Greek symbols (``ENGLISH_EXTRA``) — a Chinese token is not, and (3) not degenerate
    repetition: a span of up to ``MAX_LOOP`` tokens repeated back-to-back counts once, and a sentence
    (≥ 4 tokens) repeated anywhere later counts once.
    """
    p = parse(completion, fmt)
    text = p.text
    matches = list(_TOKEN.finditer(text))
    if not matches:
        return 0.0
    tokens = [m.group(0) for m in matches]
    starts = np.fromiter((m.start() for m in matches), dtype=np.int64, count=len(matches))
    if p.tags:
        inside = np.zeros(len(tokens), dtype=bool)
        for a, b in p.spans.values():
            inside |= (starts >= a) & (starts < b)
    else:
        inside = np.ones(len(tokens), dtype=bool)
    english = np.fromiter((_is_english(t) for t in tokens), dtype=bool, count=len(tokens))
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(t.lower(), len(vocab)) for t in tokens), dtype=np.int64, count=len(tokens))
    degenerate = _loop_mask(ids)
    # sentence-level duplicates anywhere in the completion
    seen: set[str] = set()
    bounds = [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    prev = 0
    for b in bounds:
        sentence = " ".join(text[prev:b].split()).lower()
        if len(sentence.split()) >= 4:
            if sentence in seen:
                lo, hi = np.searchsorted(starts, prev), np.searchsorted(starts, b)
                degenerate[lo:hi] = True
            else:
                seen.add(sentence)
        prev = b
    effective = inside & english & ~degenerate
    return float(effective.mean())


# ---------------------------------------------------------------------------------------------------
# The reward functions (TRL signature). Names are metric names.
# ---------------------------------------------------------------------------------------------------


def _options_at(options: Any, i: int) -> Sequence[str] | None:
    if options is None:
        return None
    o = options[i]
    return list(o) if o is not None else None


def accuracy(completions: list[Any], answer: list[str], options: list[Sequence[str]] | None = None, **_: Any) -> list[float]:
    """1.0 iff the completion holds exactly one ``\\boxed{}`` whose letter is the gold letter, else 0.0."""
    out = []
    for i, c in enumerate(completions):
        p = parse(c, "cot", _options_at(options, i))
        out.append(1.0 if p.letter is not None and p.letter == str(answer[i]).strip().upper() else 0.0)
    return out


def crpo_format(completions: list[Any], options: list[Sequence[str]] | None = None, **_: Any) -> list[float]:
    """1.0 when the completion is ``<dx>`` body ``</dx>`` ``<conclusion>`` body ``</conclusion>`` — each tag
    once, in order, bodies non-empty, only whitespace outside, the single box inside ``<conclusion>``."""
    return [1.0 if parse(c, "crpo", _options_at(options, i)).well_formed else 0.0 for i, c in enumerate(completions)]


def cross_reference(completions: list[Any], options: list[Sequence[str]] | None = None, **_: Any) -> list[float]:
    """1.0 when the completion is well-formed crpo and its conclusion cross-references ``<dx>``
    (see :func:`cross_references`)."""
    out = []
    for i, c in enumerate(completions):
        opts = _options_at(options, i)
        p = parse(c, "crpo", opts)
        ok = p.well_formed and cross_references(p.sections["dx"], p.sections["conclusion"], opts)
        out.append(1.0 if ok else 0.0)
    return out


def clinical_reasoning(completions: list[Any], options: list[Sequence[str]] | None = None, **kw: Any) -> list[float]:
    """``crpo_format`` (0/1) plus 0.5 when the well-formed conclusion cross-references ``<dx>``; in {0, 1, 1.5}."""
    fmt = crpo_format(completions, options=options)
    xref = cross_reference(completions, options=options)
    return [f + 0.5 * x for f, x in zip(fmt, xref)]


def consistency(completions: list[Any], **_: Any) -> list[float]:
    """The effective-token ratio of the crpo format, in [0, 1] (see :func:`effective_token_ratio`)."""
    return [effective_token_ratio(c, "crpo") for c in completions]


def format(completions: list[Any], options: list[Sequence[str]] | None = None, **_: Any) -> list[float]:  # noqa: A001
    """1.0 for a well-formed ``<think>…</think><answer>… \\boxed{X}</answer>`` completion, else 0.0 (GRPO baseline)."""
    return [1.0 if parse(c, "grpo", _options_at(options, i)).well_formed else 0.0 for i, c in enumerate(completions)]


def completion_length(completions: list[Any], **_: Any) -> list[float]:
    """Diagnostic: completion length in whitespace tokens (log with weight 0)."""
    return [float(len(completion_text(c).split())) for c in completions]


# --- the authors' released recipe (r1-medical), reproduced for comparison --------------------------

_ASCII_ENGLISH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \t\n\r"
                           "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def r1_accuracy(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """r1-medical accuracy: 1 correct; 0 wrong or no box; -0.5 for one box not holding a single capital
    letter; -1 for ``\\boxed`` without braces; -n for n > 1 boxes."""
    out = []
    for i, c in enumerate(completions):
        boxes = find_boxes(completion_text(c))
        if len(boxes) > 1:
            out.append(-float(len(boxes)))
        elif not boxes:
            out.append(0.0)
        elif boxes[0].content is None:
            out.append(-1.0)
        else:
            s = boxes[0].content.strip()
            if len(s) == 1 and "A" <= s <= "Z":
                out.append(1.0 if s == str(answer[i]).strip().upper() else 0.0)
            else:
                out.append(-0.5)
    return out


def r1_format(completions: list[Any], **_: Any) -> list[float]:
    """r1-medical format: 1 when the response starts with ``<think>``, ends with ``</answer>`` and has
    ``</think>`` then ``<answer>`` between; +0.5 when the answer section holds exactly one box plus other text."""
    out = []
    for c in completions:
        t = completion_text(c).strip()
        score = 0.0
        if t.startswith("<think>") and t.endswith("</answer>"):
            a = t.find("</think>", len("<think>"))
            b = t.find("<answer>", a + len("</think>")) if a != -1 else -1
            if a != -1 and b != -1 and b + len("<answer>") <= len(t) - len("</answer>"):
                score = 1.0
                body = t[b + len("<answer>") : len(t) - len("</answer>")]
                boxes = find_boxes(body)
                if len(boxes) == 1 and boxes[0].content is not None and (body[: boxes[0].start] + body[boxes[0].end :]).strip():
                    score += 0.5
        out.append(score)
    return out


def english(completions: list[Any], **_: Any) -> list[float]:
    """r1-medical language reward: the share of characters that are ASCII letters, digits, whitespace or punctuation."""
    out = []
    for c in completions:
        t = completion_text(c)
        out.append(sum(ch in _ASCII_ENGLISH for ch in t) / len(t) if t else 0.0)
    return out


# ---------------------------------------------------------------------------------------------------
# Registry and presets
# ---------------------------------------------------------------------------------------------------

REWARDS: dict[str, RewardFn] = {
    f.__name__: f
    for f in (accuracy, clinical_reasoning, consistency, crpo_format, cross_reference, format,
              completion_length, r1_accuracy, r1_format, english)
}


@dataclass(frozen=True)
class Preset:
    """A named reward: reward function names with their weights, and the answer format it trains."""

    name: str
    weights: dict[str, float]  # reward name -> weight; weight 0 = logged diagnostic
    prompt: str  # prompt kind whose format the preset rewards
    summary: str

    def functions(self) -> list[RewardFn]:
        return [get_reward(n) for n in self.weights]

    def weight_list(self) -> list[float]:
        return list(self.weights.values())

    @property
    def components(self) -> list[str]:
        return [n for n, w in self.weights.items() if w != 0]

    @property
    def max_total(self) -> float:
        top = {"accuracy": 1.0, "clinical_reasoning": 1.5, "consistency": 1.0, "crpo_format": 1.0,
               "cross_reference": 1.0, "format": 1.0, "r1_accuracy": 1.0, "r1_format": 1.5, "english": 1.0}
        return sum(w * top.get(n, 0.0) for n, w in self.weights.items() if w > 0)


def crpo_weights(k: float = 10.0, cross_reference_bonus: bool = True, consistency_weight: float = 0.5) -> dict[str, float]:
    """The CRPO weights: ``k``·accuracy + clinical_reasoning + 0.5·consistency, with ablation switches."""
    w = {"accuracy": float(k)}
    if cross_reference_bonus:
        w.update(clinical_reasoning=1.0, crpo_format=0.0, cross_reference=0.0)
    else:
        w.update(crpo_format=1.0, cross_reference=0.0)
    w["consistency"] = float(consistency_weight)
    w["completion_length"] = 0.0
    return w


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("crpo", crpo_weights(), "crpo", "10·accuracy + clinical_reasoning + 0.5·consistency (the paper's CRPO)"),
        Preset("crpo-no-xref", crpo_weights(cross_reference_bonus=False), "crpo",
               "ablation: CRPO without the cross-reference bonus"),
        Preset("crpo-no-consistency", crpo_weights(consistency_weight=0.0), "crpo",
               "ablation: CRPO without the consistency term"),
        Preset("grpo", {"accuracy": 10.0, "format": 1.0, "completion_length": 0.0}, "grpo",
               "10·accuracy + format (the paper's GRPO baseline)"),
        Preset("r1-medical", {"r1_accuracy": 10.0, "r1_format": 1.0, "english": 0.5, "completion_length": 0.0}, "grpo",
               "the authors' released recipe: 10·accuracy + format + 0.5·english"),
    )
}


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; known rewards: {sorted(REWARDS)}")
    return REWARDS[name]


def get_preset(name: str, k: float | None = None) -> Preset:
    """A preset by name; ``k`` overrides the accuracy weight (the paper's k ablation)."""
    if name not in PRESETS:
        raise KeyError(f"unknown reward preset {name!r}; known presets: {sorted(PRESETS)}")
    p = PRESETS[name]
    if k is not None:
        acc = "r1_accuracy" if "r1_accuracy" in p.weights else "accuracy"
        p = Preset(p.name, {**p.weights, acc: float(k)}, p.prompt, p.summary)
    return p


def score(completion: Any, answer: str, options: Sequence[str] | None = None, preset: str = "crpo",
          k: float | None = None) -> dict[str, float]:
    """Each weighted component of ``preset`` by name, plus ``total`` (the weighted sum), for one completion.

    Component names: ``accuracy, clinical_reasoning, consistency`` (crpo), ``accuracy, format`` (grpo),
    ``accuracy, format, english`` (r1-medical).
    """
    p = get_preset(preset, k)
    cols = {"answer": [answer], "options": [list(options)] if options is not None else None}
    out: dict[str, float] = {}
    total = 0.0
    for name, w in p.weights.items():
        if w == 0:
            continue
        v = get_reward(name)([completion], **cols)[0]
        out[_PUBLIC_NAME.get(name, name)] = v
        total += w * v
    out["total"] = total
    return out


_PUBLIC_NAME = {"r1_accuracy": "accuracy", "r1_format": "format"}

assert set(FORMATS) >= {"crpo", "grpo"}
