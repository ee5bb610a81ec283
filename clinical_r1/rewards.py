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


MAX_XREF_WORDS = 20000  # sections are compared on their first 20,000 words: far beyond real completions,
# and it bounds the cost of adversarial megabyte inputs


def _content_words(text: str) -> list[str]:
    words = _WORD.findall(text.lower(), 0, MAX_XREF_WORDS * 20)
    return [w for w in words[:MAX_XREF_WORDS] if w not in STOPWORDS]


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
MIN_SENTENCE = 4  # sentences of at least this many tokens count once when repeated anywhere
_EXTRA_CODES = np.array(sorted(ord(c) for c in ENGLISH_EXTRA), dtype=np.uint32)
_WS_CODES = np.array([9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                      0x2028, 0x2029, 0x202F, 0x205F, 0x3000], dtype=np.uint32)
_SENTENCE_CODES = np.array([ord(c) for c in ".!?;\n"], dtype=np.uint32)
# accented Latin letters (eponyms: Sjögren, Ménière) and combining marks count as English too
_COMBINING = ((0x00C0, 0x00FF), (0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
_HASH_P = np.uint64(1099511628211)  # FNV prime: per-position multiplier of the token hash


def _powers(n: int) -> np.ndarray:
    """P**0 .. P**(n-1) modulo 2**64, by doubling (log n numpy steps)."""
    out = np.ones(max(n, 1), dtype=np.uint64)
    k = 1
    with np.errstate(over="ignore"):
        if len(out) > 1:
            out[1] = _HASH_P
            k = 2
        while k < len(out):
            m = min(k, len(out) - k)
            out[k : k + m] = out[:m] * (out[k - 1] * _HASH_P)
            k += m
    return out


def _segment_hash(values: np.ndarray, seg_start: np.ndarray, seg_index: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of each segment of ``values`` (segments start at ``seg_start``)."""
    offset = np.arange(len(values)) - seg_start[seg_index]
    with np.errstate(over="ignore"):
        weighted = (values.astype(np.uint64) + np.uint64(1)) * _powers(int(offset.max()) + 1 if len(offset) else 1)[offset]
    return np.add.reduceat(weighted, seg_start) if len(seg_start) else np.zeros(0, dtype=np.uint64)


def _runs_marked(eq: np.ndarray, p: int) -> np.ndarray:
    """Mask of tokens ``j + p`` for every run of ``eq`` (eq[j]: token j+p equals token j) at least ``p`` long."""
    padded = np.concatenate(([False], eq, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    s, e = edges[::2], edges[1::2]
    keep = (e - s) >= p
    diff = np.zeros(len(eq) + p + 1, dtype=np.int64)
    np.add.at(diff, s[keep] + p, 1)
    np.add.at(diff, e[keep] + p, -1)
    return np.cumsum(diff)[: len(eq) + p] > 0


def _loop_mask(ids: np.ndarray) -> np.ndarray:
    """True for tokens that repeat the span of up to ``MAX_LOOP`` tokens just before them (a loop counts once)."""
    n = len(ids)
    rep = np.zeros(n, dtype=bool)
    for p in range(1, min(MAX_LOOP, n // 2) + 1):
        eq = ids[p:] == ids[:-p]
        if eq.any():
            rep |= _runs_marked(eq, p)
    return rep


def effective_token_ratio(completion: Any, fmt: str = "crpo") -> float:
    """Share of whitespace-separated tokens that are effective; in [0, 1], 0 for an empty completion.

    A token is effective when it is (1) inside the format's sections (it starts between a section's
    open tag and the end of its close tag; every token counts for untagged formats), (2) English: ASCII,
    or typographic, unit, sub/superscript and Greek symbols (``ENGLISH_EXTRA``), accented Latin letters
    (Sjögren) and combining marks — a Chinese token is not — and (3) not degenerate repetition: a span of up to ``MAX_LOOP`` tokens repeated
    back-to-back counts once (case-folded), and a sentence of ≥ ``MIN_SENTENCE`` tokens repeated anywhere
    later counts once. Vectorised over code points (numpy): linear time, ~10 ms per MB.
    """
    p = parse(completion, fmt)
    cps = np.frombuffer(p.text.encode("utf-32-le"), dtype=np.uint32)
    if not len(cps):
        return 0.0
    ws = np.isin(cps, _WS_CODES)
    tok_start = ~ws & np.concatenate(([True], ws[:-1]))
    starts = np.flatnonzero(tok_start)
    if not len(starts):
        return 0.0
    chars = np.flatnonzero(~ws)
    tok_of_char = np.cumsum(tok_start)[chars] - 1
    # (2) English: a token is non-English when any of its characters is
    c = cps[chars]
    bad = (c > 127) & ~np.isin(c, _EXTRA_CODES)
    for lo, hi in _COMBINING:
        bad &= ~((c >= lo) & (c <= hi))
    english = np.bincount(tok_of_char[bad], minlength=len(starts)) == 0
    # (1) inside the sections
    if p.tags:
        inside = np.zeros(len(starts), dtype=bool)
        for a, b in p.spans.values():
            inside |= (starts >= a) & (starts < b)
    else:
        inside = np.ones(len(starts), dtype=bool)
    # (3) loops: token identities as 64-bit hashes of case-folded (ASCII) code points
    folded = np.where((c >= 65) & (c <= 90), c | 32, c)
    first_char = np.searchsorted(chars, starts)
    ids = _segment_hash(folded, first_char, tok_of_char)
    degenerate = _loop_mask(ids)
    # sentence duplicates: sentences end at . ! ? ; or a newline
    boundary = np.cumsum(np.isin(cps, _SENTENCE_CODES))
    sent_of_tok = boundary[starts] - np.isin(cps[starts], _SENTENCE_CODES)  # a token opening with "." stays behind
    sent_change = np.concatenate(([True], sent_of_tok[1:] != sent_of_tok[:-1]))
    sent_start = np.flatnonzero(sent_change)
    sent_index = np.cumsum(sent_change) - 1
    sent_hash = _segment_hash(ids, sent_start, sent_index)
    sent_len = np.diff(np.append(sent_start, len(starts)))
    _, first = np.unique(sent_hash, return_index=True)
    repeated = np.ones(len(sent_start), dtype=bool)
    repeated[first] = False
    degenerate |= (repeated & (sent_len >= MIN_SENTENCE))[sent_index]
    return float((inside & english & ~degenerate).mean())


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

_ASCII_ENGLISH = np.zeros(129, dtype=bool)  # ASCII letters, digits, space/tab/CR/LF and punctuation; index 128 = other
_ASCII_ENGLISH[32:127] = True
_ASCII_ENGLISH[[9, 10, 13]] = True


def r1_accuracy(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """r1-medical accuracy: 1 correct; 0 wrong or no box; -0.5 for one box not holding a single capital
    letter; -1 for ``\\boxed`` without braces; -n for n > 1 boxes."""
    out = []
    for i, c in enumerate(completions):
        p = parse(c, "cot")
        if p.n_boxes > 1:
            out.append(-float(p.n_boxes))
        elif p.box is None:
            out.append(0.0)
        elif p.box.content is None:
            out.append(-1.0)
        else:
            s = p.box.content.strip()
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
                boxes = find_boxes(body) if body.count("\\boxed") == 1 else []
                if len(boxes) == 1 and boxes[0].content is not None and (body[: boxes[0].start] + body[boxes[0].end :]).strip():
                    score += 0.5
        out.append(score)
    return out


def english(completions: list[Any], **_: Any) -> list[float]:
    """r1-medical language reward: the share of characters that are ASCII letters, digits, whitespace or punctuation."""
    out = []
    for c in completions:
        cps = np.frombuffer(completion_text(c).encode("utf-32-le"), dtype=np.uint32)
        out.append(float(_ASCII_ENGLISH[np.minimum(cps, 128)].mean()) if len(cps) else 0.0)
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
