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

import logging
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from clinical_r1.formats import CRPO, FORMATS, GRPO, parse
from clinical_r1.errors import UnknownName, UsageError
from clinical_r1.parsing import clear_cache, completion_text, is_correct

log = logging.getLogger(__name__)

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


MAX_XREF_WORDS = 20000  # sections are compared on their first 20,000 words ...
MAX_XREF_CHARS = 100_000  # ... within their first 100,000 characters (~25k tokens, 6x the paper's 4,096-token
# completions): far beyond real completions, and it bounds the cost of adversarial megabyte inputs


@lru_cache(maxsize=256)
def content_words(text: str) -> tuple[str, ...]:
    """The lower-cased words of ``text`` without ``STOPWORDS``, in order (within the ``MAX_XREF_*`` bounds)."""
    words = _WORD.findall(text[:MAX_XREF_CHARS].lower())
    return tuple(w for w in words[:MAX_XREF_WORDS] if w not in STOPWORDS)


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@lru_cache(maxsize=256)
def clinical_values(text: str) -> frozenset[str]:
    """The clinical values with their units in ``text``, normalised: ``BP 150/95 mmHg`` -> ``150/95mmhg``."""
    return frozenset(re.sub(r"\s+", "", f"{a}{u}") for a, u in _VALUE.findall(text[:MAX_XREF_CHARS].lower()))


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
    return cross_reference_report(dx, conclusion, options)["ok"]


def cross_reference_report(dx: str, conclusion: str, options: Sequence[str] | None = None) -> dict[str, bool]:
    """Why :func:`cross_references` decides as it does, for the reward-hacking monitors (``clinical_r1.monitors``).

    ``option_only``: the sections share 3-grams of content words but every one lies in an option's text, and
    no clinical value is shared (a restated answer was all the conclusion had); ``cites``: rule 1 holds;
    ``near_copy``: it cites, but the near-copy guard (rule 2) refused it; ``ok``: ``cross_references(...)``.
    """
    dx_words, cc_words = content_words(dx), content_words(conclusion)
    out = {"option_only": False, "cites": False, "near_copy": False, "ok": False}
    if not dx_words or not cc_words:
        return out
    dx_grams, cc_grams = _ngrams(dx_words, XREF_NGRAM), _ngrams(cc_words, XREF_NGRAM)
    shared = dx_grams & cc_grams
    findings = set(shared)
    for o in options or ():
        findings -= _ngrams(content_words(o), XREF_NGRAM)
    values = bool(clinical_values(dx) & clinical_values(conclusion))
    out["option_only"] = bool(shared) and not findings and not values
    out["cites"] = bool(findings) or values
    copied = bool(cc_grams) and len(shared) / len(cc_grams) >= NEAR_COPY_CONTAINMENT \
        and len(cc_words) >= NEAR_COPY_LENGTH * len(dx_words)
    out["near_copy"] = out["cites"] and copied
    out["ok"] = out["cites"] and not copied
    return out


# ---------------------------------------------------------------------------------------------------
# Consistency: the effective-token ratio
# ---------------------------------------------------------------------------------------------------

# Non-ASCII characters that still count as English text: typography, units, Greek letters of medicine.
ENGLISH_EXTRA = frozenset("°µμ±‐‑‒–—‘’“”•·…×÷≤≥≈≠→←↑↓↔‰′″™®©½¼¾αβγδεκλπστωΔ"
                          "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻₀₁₂₃₄₅₆₇₈₉₊₋\u00a0\u2009\u202f")
MAX_LOOP = 20  # repeated spans of up to this many tokens are detected as loops
MIN_SENTENCE = 4  # sentences of at least this many tokens count once when repeated anywhere
_WS_CODES = [9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
             0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
_SENTENCE_CODES = [ord(c) for c in ".!?;\n。！？；"]
# accented Latin letters (eponyms: Sjögren, Ménière) and combining marks count as English too
_COMBINING = ((0x00C0, 0x00FF), (0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
# Scripts written without spaces between words: each character is one token, so a paragraph of Chinese
# weighs by its length (about one token per character, close to what Qwen's tokenizer gives) instead of
# counting as one whitespace "token". Thai, Lao, Tibetan, Myanmar, Khmer, CJK (radicals, punctuation, kana,
# ideographs, compatibility and full-width forms) and Yi; Hangul is written with spaces and is not listed.
NO_SPACE_SCRIPTS = ((0x0E00, 0x0FFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x2E80, 0x2FDF), (0x3000, 0x312F),
                    (0x31C0, 0x9FFF), (0xA000, 0xA4CF), (0xF900, 0xFAFF), (0xFE30, 0xFE4F), (0xFF00, 0xFFEF),
                    (0x20000, 0x3FFFF))
_WS, _ENGLISH, _SENTENCE, _NO_SPACE = 1, 2, 4, 8
_CLASS = np.zeros(0x10001, dtype=np.uint8)  # character classes of the BMP; index 0x10000 = any astral character
_CLASS[:128] |= _ENGLISH
_CLASS[sorted(ord(c) for c in ENGLISH_EXTRA)] |= _ENGLISH
for _lo, _hi in _COMBINING:
    _CLASS[_lo : _hi + 1] |= _ENGLISH
for _lo, _hi in NO_SPACE_SCRIPTS:
    _CLASS[_lo : min(_hi, 0xFFFF) + 1] |= _NO_SPACE
_CLASS[_WS_CODES] = _WS  # whitespace wins (U+3000, the ideographic space, is a space)
_CLASS[_SENTENCE_CODES] |= _SENTENCE


def _char_classes(cps: np.ndarray) -> np.ndarray:
    """``_CLASS`` bits of each code point (one table lookup; astral CJK ideographs get ``_NO_SPACE``)."""
    cls = np.take(_CLASS, cps, mode="clip")  # any astral code point reads the last entry
    if cps.dtype != np.uint8 and len(cps) and cps.max() > 0xFFFF:
        cls[(cps >= 0x20000) & (cps <= 0x3FFFF)] |= _NO_SPACE
    return cls


_HASH_P = np.uint64(1099511628211)  # FNV prime: per-position multiplier of the token hash


_HASH_P_INV = np.uint64(pow(int(_HASH_P), -1, 2**64))  # P is odd, so it has an inverse modulo 2**64
_POW = np.ones(1, dtype=np.uint64)  # P**i and P**-i modulo 2**64, grown on demand and kept
_POW_INV = np.ones(1, dtype=np.uint64)


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**0 .. P**(n-1) and their inverses modulo 2**64 (doubling: log n numpy steps, cached)."""
    global _POW, _POW_INV
    with np.errstate(over="ignore"):
        while len(_POW) < n:
            k = len(_POW)
            _POW = np.concatenate((_POW, _POW * (_POW[-1] * _HASH_P)))
            _POW_INV = np.concatenate((_POW_INV, _POW_INV * (_POW_INV[-1] * _HASH_P_INV)))
            assert len(_POW) == 2 * k
    return _POW[:n], _POW_INV[:n]


def _segment_hash(values: np.ndarray, seg_start: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of each segment of ``values`` (segments start at ``seg_start``):
    sum of (v + 1) * P**offset, computed as a prefix-position sum scaled back by P**-start."""
    if not len(seg_start):
        return np.zeros(0, dtype=np.uint64)
    pw, inv = _power_tables(len(values))
    with np.errstate(over="ignore"):
        weighted = (values.astype(np.uint64) + np.uint64(1)) * pw
        return np.add.reduceat(weighted, seg_start) * inv[seg_start]


def _runs_marked(eq: np.ndarray, p: int) -> np.ndarray:
    """Mask of tokens ``j + p`` for every run of ``eq`` (eq[j]: token j+p equals token j) at least ``p`` long."""
    padded = np.concatenate(([False], eq, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    s, e = edges[::2], edges[1::2]
    keep = (e - s) >= p
    n = len(eq) + p + 1
    diff = np.bincount(s[keep] + p, minlength=n) - np.bincount(e[keep] + p, minlength=n)
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


class _Tokens(NamedTuple):
    classes: np.ndarray  # _CLASS bits per code point
    starts: np.ndarray  # code-point index where each token starts
    char_pos: np.ndarray  # code-point index of each non-space character
    chars: np.ndarray  # the non-space code points
    tok_of_char: np.ndarray  # token index of each non-space character
    first_char: np.ndarray  # index into ``chars`` of each token's first character


@lru_cache(maxsize=64)
def _tokens(text: str) -> _Tokens:
    """The tokens of ``text``: whitespace-separated words, one per character in ``NO_SPACE_SCRIPTS``
    (memoised: consistency and completion_length read the same completion in one step)."""
    if text.isascii():  # the common case: one byte per character, no script without spaces
        cps = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    else:
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    cls = _char_classes(cps)
    ws = (cls & _WS) != 0
    # a token starts at a non-space after a space; in scripts without spaces every character starts one,
    # and so does the character after it
    after = ws.copy() if cps.dtype == np.uint8 else ws | ((cls & _NO_SPACE) != 0)
    tok_start = np.empty_like(ws)
    tok_start[0:1] = True
    tok_start[1:] = after[:-1]
    if cps.dtype != np.uint8:
        tok_start |= after & ~ws
    tok_start &= ~ws
    char_pos = np.flatnonzero(~ws)
    start_flags = tok_start[char_pos]
    tok_of_char = np.cumsum(start_flags, dtype=np.int64) - 1
    first_char = np.flatnonzero(start_flags)
    return _Tokens(cls, char_pos[first_char], char_pos, cps[char_pos], tok_of_char, first_char)


def clear_caches() -> None:
    """Forget memoised parses and token views (benchmarks time cold calls, as each new completion is)."""
    clear_cache()
    for f in (_tokens, content_words, clinical_values):
        f.cache_clear()


def effective_token_ratio(completion: Any, fmt: str = "crpo") -> float:
    """Share of tokens that are effective; in [0, 1], 0 for an empty completion.

    Tokens are whitespace-separated words, except in scripts written without spaces (``NO_SPACE_SCRIPTS``:
    Chinese, Japanese, Thai, ...), where each character is a token: mixing in another language lowers the
    ratio by its share of the text. A token is effective when it is (1) inside the format's sections (it
    starts between a section's open tag and the end of its close tag; every token counts for untagged
    formats), (2) English: ASCII, or typographic, unit, sub/superscript and Greek symbols
    (``ENGLISH_EXTRA``), accented Latin letters (Sjögren) and combining marks, and (3) not degenerate
    repetition: a span of up to ``MAX_LOOP`` tokens repeated back-to-back counts once (case-folded), and a
    sentence of ≥ ``MIN_SENTENCE`` tokens repeated anywhere later counts once. Vectorised over code points
    (numpy): linear time, 15-30 ms per MB on one core.
    """
    p = parse(completion, fmt)
    t = _tokens(p.text)
    starts, cls, c, tok_of_char = t.starts, t.classes, t.chars, t.tok_of_char
    if not len(starts):
        return 0.0
    # (2) English: a token is non-English when any of its characters is
    bad = (cls[t.char_pos] & _ENGLISH) == 0
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
    ids = _segment_hash(folded, t.first_char)
    degenerate = _loop_mask(ids)
    # sentence duplicates: sentences end at . ! ? ; or a newline
    is_end = (cls & _SENTENCE).astype(bool)
    boundary = np.cumsum(is_end)
    sent_of_tok = boundary[starts] - is_end[starts]  # a token opening with "." stays behind
    sent_change = np.concatenate(([True], sent_of_tok[1:] != sent_of_tok[:-1]))
    sent_start = np.flatnonzero(sent_change)
    sent_index = np.cumsum(sent_change) - 1
    sent_hash = _segment_hash(ids, sent_start)
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
    """1.0 iff the completion is correct by :func:`clinical_r1.parsing.is_correct` (exactly one ``\\boxed{}``,
    whose letter is the gold letter), else 0.0: the rule evaluation uses."""
    return [1.0 if is_correct(c, answer[i], _options_at(options, i)) else 0.0 for i, c in enumerate(completions)]


def crpo_format(completions: list[Any], options: list[Sequence[str]] | None = None, **_: Any) -> list[float]:
    """1.0 when the completion is ``<dx>`` body ``</dx>`` ``<conclusion>`` body ``</conclusion>`` — each tag
    once, in order, bodies non-empty, only whitespace outside, the single box inside ``<conclusion>``
    (``CRPO.well_formed``, :mod:`clinical_r1.formats`)."""
    return [1.0 if CRPO.well_formed(c, _options_at(options, i)) else 0.0 for i, c in enumerate(completions)]


def cross_reference(completions: list[Any], options: list[Sequence[str]] | None = None, **_: Any) -> list[float]:
    """1.0 when the completion is well-formed crpo and its conclusion cross-references ``<dx>``
    (see :func:`cross_references`)."""
    out = []
    for i, c in enumerate(completions):
        opts = _options_at(options, i)
        p = CRPO.parse(c, opts)
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
    """1.0 for a well-formed ``<think>…</think><answer>… \\boxed{X}</answer>`` completion (``GRPO.well_formed``),
    else 0.0 (GRPO baseline)."""
    return [1.0 if GRPO.well_formed(c, _options_at(options, i)) else 0.0 for i, c in enumerate(completions)]


def completion_length(completions: list[Any], **_: Any) -> list[float]:
    """Diagnostic: completion length in tokens as ``consistency`` counts them: words, and one per character
    of scripts written without spaces (log with weight 0)."""
    return [float(len(_tokens(completion_text(c)).starts)) for c in completions]


# --- the authors' released recipe (r1-medical), reproduced for comparison --------------------------
# Facts of ``compute_score`` in verl/utils/reward_score/medical_rule_based.py of the public repository
# BoyangGu1/Clinical-R1-3B (the training branch, "train" in the question index), written anew here:
# total = 10·accuracy + format + 0.5·english, on the completion preprocessed by :func:`r1_preprocess`.

R1_EOS = "<|im_end|>"  # the EOS text of Qwen2.5-Instruct (the authors' policy); text after it is cut
R1_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
R1_ENGLISH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n"
                       ".,!?;:'\"()[]{}<>-_/\\|`~@#$%^&*+=")  # only space and newline count as whitespace
_R1_TABLE = np.zeros(129, dtype=bool)  # index 128 = any other character
_R1_TABLE[[ord(ch) for ch in R1_ENGLISH]] = True
_R1_BOX = re.compile(r"\\boxed\{(.*?)\}")  # the first box's content: no newline inside, nothing stripped
_R1_ANSWER_OPEN = re.compile(r"\s*<answer>")


def r1_preprocess(text: str, eos: str = R1_EOS) -> str:
    """The authors' preprocessing: cut at the EOS text, ``strip()``, repair ``<\\think>``/``<\\answer>``
    closers, and keep only what follows a ``## Final Response`` heading (up to a second one), a rule they
    wrote for HuatuoGPT-o1 that applies to every completion."""
    t = text.split(eos, 1)[0].strip() if eos else text.strip()
    t = t.replace("<\\think>", "</think>").replace("<\\answer>", "</answer>")
    if "## Final Response" in t:
        t = t.split("## Final Response", 2)[1].strip()
    return t


def r1_accuracy_of(t: str, gold: str) -> float:
    """Accuracy of a preprocessed completion: with exactly one ``\\boxed``, 1/0 for a single capital letter
    right/wrong, -0.5 for any other content, -1 when it has no ``{...}`` on its line; with n != 1 boxes, -n."""
    n = t.count("\\boxed")
    if n != 1:
        return -float(n)
    m = _R1_BOX.search(t)
    if m is None:
        return -1.0
    content = m.group(1)
    if len(content) == 1 and content in R1_LETTERS:
        return 1.0 if content == gold else 0.0
    return -0.5


def _r1_answer_body(t: str) -> str | None:
    """The ``<answer>`` body when ``t`` matches ``^<think>.*?</think>\\s*<answer>(.*?)</answer>$`` (DOTALL),
    else None. Linear time: the first ``</think>`` followed by ``\\s*<answer>`` that leaves room for the
    final ``</answer>`` decides, as the lazy regex does."""
    end = len(t) - len("</answer>")
    if not (t.startswith("<think>") and t.endswith("</answer>")):
        return None
    i = t.find("</think>", len("<think>"))
    while i != -1:
        m = _R1_ANSWER_OPEN.match(t, i + len("</think>"))
        if m is not None and m.end() <= end:
            return t[m.end() : end]
        i = t.find("</think>", i + 1)
    return None


def _r1_single_box_with_text(body: str) -> bool:
    """True when the stripped body holds exactly one ``\\boxed{...}`` (matched as ``\\boxed\\{.*?\\}``,
    no newline inside) and something else besides it. Linear time."""
    body = body.strip()
    found: list[tuple[int, int]] = []
    pos = body.find("\\boxed{")
    while pos != -1 and len(found) < 2:
        close, nl = body.find("}", pos + 7), body.find("\n", pos + 7)
        if close != -1 and (nl == -1 or close < nl):
            found.append((pos, close + 1))
            pos = body.find("\\boxed{", close + 1)
        else:  # no box closes on this line: no later start on it can close either
            pos = -1 if nl == -1 else body.find("\\boxed{", nl)
    return len(found) == 1 and found[0] != (0, len(body))


def r1_format_of(t: str) -> float:
    """Format of a preprocessed completion: 1 for the ``<think>…</think> <answer>…</answer>`` layout (only
    whitespace between the sections, nothing outside), +0.5 when the answer holds one box and other text."""
    body = _r1_answer_body(t)
    if body is None:
        return 0.0
    return 1.5 if _r1_single_box_with_text(body) else 1.0


def r1_english_of(t: str) -> float:
    """Share of characters in ``R1_ENGLISH``; 0 for the empty string."""
    cps = np.frombuffer(t.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return float(_R1_TABLE[np.minimum(cps, 128)].mean()) if len(cps) else 0.0


def r1_accuracy(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """r1-medical accuracy (see :func:`r1_accuracy_of`): the authors' rule, reimplemented faithfully for the
    r1-medical preset. It is not the package's :func:`clinical_r1.parsing.is_correct` (which ``accuracy`` and
    evaluation use): it reads the completion after :func:`r1_preprocess`, accepts only a bare capital letter
    in the box, and scores malformed answers below a wrong one."""
    return [r1_accuracy_of(r1_preprocess(completion_text(c)), answer[i]) for i, c in enumerate(completions)]


def r1_format(completions: list[Any], **_: Any) -> list[float]:
    """r1-medical format, in {0, 1, 1.5} (see :func:`r1_format_of`)."""
    return [r1_format_of(r1_preprocess(completion_text(c))) for c in completions]


def english(completions: list[Any], **_: Any) -> list[float]:
    """r1-medical language reward: the share of characters that are ASCII letters, digits, space, newline or
    ASCII punctuation (tab, CR and non-ASCII symbols do not count)."""
    return [r1_english_of(r1_preprocess(completion_text(c))) for c in completions]


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
    """A named reward: reward function names with their weights, and the answer format it trains.

    The first weight is the preset's accuracy reward: its weight is the paper's ``k``
    (:meth:`with_weights`), the only place where ``k`` turns into a reward weight.
    """

    name: str
    weights: dict[str, float]  # reward name -> weight, the accuracy reward first; weight 0 = logged diagnostic
    prompt: str  # prompt kind whose format the preset rewards
    summary: str
    sources: dict[str, str] = field(default_factory=dict)  # user reward name -> its import path (or its name when
    # it is registered in this process only); built-ins have none

    @property
    def accuracy_reward(self) -> str:
        return next(iter(self.weights))

    def with_weights(self, k: float | None = None, weights: Mapping[str, float] | None = None) -> "Preset":
        """This preset with the accuracy weight set to ``k`` (when given), then ``weights`` (reward name ->
        weight) replacing or adding the named rewards' weights."""
        new = dict(self.weights)
        if k is not None:
            new[self.accuracy_reward] = float(k)
        new.update({n: float(w) for n, w in (weights or {}).items()})
        return replace(self, weights=new)

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


def crpo_weights(cross_reference_bonus: bool = True, consistency_weight: float = 0.5) -> dict[str, float]:
    """The CRPO weights: 10·accuracy + clinical_reasoning + 0.5·consistency, with ablation switches. The paper's
    k = 10 is the accuracy weight; ``reward.k`` replaces it (:meth:`Preset.with_weights`)."""
    w = {"accuracy": 10.0}
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
    """A reward by name: built-in (``REWARDS``), registered in this process (:func:`register_reward`, or loaded by
    import path), or an import path ``"package.module:function"`` (loaded and registered now)."""
    if name in REWARDS:
        return REWARDS[name]
    if name in USER_REWARDS:
        return USER_REWARDS[name]
    if is_import_path(name):
        return USER_REWARDS[load_reward(name)]
    raise UnknownName(f"unknown reward {name!r}; known rewards: {sorted(REWARDS)}, registered in this process: "
                      f"{sorted(USER_REWARDS)}; name a function by import path 'package.module:function', or register "
                      f"it in this process with clinical_r1.rewards.register_reward")


def get_preset(name: str) -> Preset:
    """A preset by name (its weights with :meth:`Preset.with_weights`)."""
    if name not in PRESETS:
        raise UnknownName(f"unknown reward preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]


def score(completion: Any, answer: str, options: Sequence[str] | None = None, preset: str = "crpo",
          k: float | None = None) -> dict[str, float]:
    """Each weighted component of ``preset`` by name, plus ``total`` (the weighted sum), for one completion.

    Component names: ``accuracy, clinical_reasoning, consistency`` (crpo), ``accuracy, format`` (grpo),
    ``accuracy, format, english`` (r1-medical).
    """
    p = get_preset(preset).with_weights(k=k)
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


# ---------------------------------------------------------------------------------------------------
# Rewards from outside the package: import paths and registered functions
# ---------------------------------------------------------------------------------------------------

# Keywords TRL's GRPOTrainer passes every reward function besides the dataset columns (TRL 1.x).
TRL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra", "environments")
USER_REWARDS: dict[str, RewardFn] = {}  # name -> a reward registered in this process (register_reward, import paths)
USER_SOURCES: dict[str, str] = {}  # name -> the import path "package.module:function" it was loaded from
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a metric name: rewards/<name>/mean, advantage_share/<name>


class RewardError(UsageError):
    """A user reward that cannot train: it does not import, has the wrong signature, shadows a built-in reward,
    or scores a batch badly (before training, or at a step). The message names the reward and the fix."""


def is_import_path(ref: str) -> bool:
    """``"package.module:function"`` (a reference by import path) rather than a reward name."""
    return ":" in ref


def register_reward(fn: RewardFn | None = None, *, name: str | None = None, format: str | None = None):  # noqa: A002
    """Make a reward function known by ``name`` (default: its ``__name__``) in this process, so a training config
    can name it in ``reward.functions`` and ``reward.weights``. Use as ``@register_reward`` or
    ``@register_reward(name="guideline_citation", format="crpo")``; returns the function unchanged.

    ``format`` is the answer format the reward reads (``crpo``, ``grpo``, ``cot``, ``direct``; stored as the
    function's ``answer_format``): training checks it against the prompt. None: any format, the preset's.
    A registration lives in this process only: a notebook kernel, not the papermill kernels of later notebooks or
    the grid. Define the function in a module and name it by import path to reach those.
    """
    if fn is None:
        return lambda f: register_reward(f, name=name, format=format)
    reward_name = name or getattr(fn, "__name__", "")
    if format is not None:
        if format not in FORMATS:
            raise RewardError(f"reward {reward_name!r}: unknown answer format {format!r}; use one of {sorted(FORMATS)} "
                              f"or None (the preset's)")
        fn.answer_format = format
    fn.reward_name = reward_name
    _register(reward_name, fn, source=None)
    return fn


def _register(name: str, fn: Any, source: str | None) -> RewardFn:
    where = f"reward {source or name!r}"
    if not callable(fn):
        raise RewardError(f"{where} is a {type(fn).__name__}, not a callable; name a function")
    if not _NAME.fullmatch(name or ""):
        raise RewardError(f"{where}: its name {name!r} is not a metric name (letters, digits, _); register it "
                          f"with register_reward(name=...)")
    if name in REWARDS:
        raise RewardError(f"{where}: its name {name!r} shadows the built-in reward {name!r}; rename the function or "
                          f"register it under another name (register_reward(name=...))")
    check_signature(fn, name)
    if getattr(fn, "__name__", None) != name:  # TRL names the metric after __name__
        fn = _renamed(fn, name)
    if name in USER_REWARDS and source and USER_SOURCES.get(name) not in (None, source):
        raise RewardError(f"{where}: the name {name!r} is already taken by {USER_SOURCES[name]}; register one of "
                          f"them under another name (register_reward(name=...))")
    if name in USER_REWARDS and USER_REWARDS[name] is not fn:
        log.info("reward %r registered again (replaces the earlier function)", name)
    USER_REWARDS[name] = fn
    if source:
        USER_SOURCES[name] = source
    elif name in USER_SOURCES and not _same(USER_SOURCES[name], fn):
        del USER_SOURCES[name]
    return fn


def _renamed(fn: Any, name: str) -> RewardFn:
    import functools

    @functools.wraps(fn)
    def named(*args: Any, **kwargs: Any) -> list[float]:
        return fn(*args, **kwargs)

    named.__name__ = name
    return named


def _same(source: str, fn: Any) -> bool:
    try:
        return _import(source) is getattr(fn, "__wrapped__", fn)
    except RewardError:
        return False


def check_signature(fn: Any, name: str, columns: Sequence[str] | None = None) -> None:
    """TRL calls a reward as ``fn(prompts=..., completions=..., completion_ids=..., <each dataset column>=...,
    trainer_state=..., log_metric=..., log_extra=...)``: the function needs ``**kwargs`` and no argument TRL
    cannot fill (checked against the dataset ``columns`` when given)."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise RewardError(f"reward {name!r}: its signature cannot be read ({e}); name a plain function") from None
    params = list(sig.parameters.values())
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        raise RewardError(f"reward {name!r}{sig}: add **kwargs; TRL passes {', '.join(TRL_KEYWORDS[:6])} and every "
                          f"dataset column as keywords")
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL) and p.default is p.empty and p.kind is not p.VAR_POSITIONAL:
            raise RewardError(f"reward {name!r}{sig}: argument {p.name!r} is positional-only; TRL passes keywords "
                              f"(completions=..., answer=...): drop the '/'")
    known = set(TRL_KEYWORDS) | set(columns or ())
    for p in params:
        required = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and columns is not None and p.name not in known:
            raise RewardError(f"reward {name!r}{sig}: TRL cannot fill the argument {p.name!r}: it is neither a TRL "
                              f"keyword nor a column of the training data {sorted(columns)}; give it a default or "
                              f"add the column")


def _import(ref: str) -> Any:
    import importlib

    module, _, qualname = ref.partition(":")
    if not module or not qualname:
        raise RewardError(f"reward {ref!r}: an import path is 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise RewardError(f"reward {ref!r}: cannot import module {module!r} ({e}); install it or put its folder "
                          f"on PYTHONPATH") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"reward {ref!r}: module {module!r} has no {qualname!r}; check the name after ':'")
        obj = getattr(obj, part)
    return obj


def load_reward(ref: str) -> str:
    """Resolve a reward reference and return its name: a built-in or registered name as is, or an import path
    ``"package.module:function"`` imported and registered under the function's ``reward_name`` (set by
    :func:`register_reward`) or ``__name__``. Raises :class:`RewardError` naming the reward and the fix."""
    if not is_import_path(ref):
        get_reward(ref)
        return ref
    fn = _import(ref)
    name = getattr(fn, "reward_name", None) or getattr(fn, "__name__", "")
    _register(name, fn, source=ref)
    return name


def reward_source(name: str) -> str | None:
    """The import path another process can load reward ``name`` from: built-ins and rewards loaded by import path
    have one; a function registered from an importable module is found as ``module:qualname``; a function
    defined in a notebook (``__main__``) or inside a function has none."""
    if name in REWARDS:
        return None
    if name in USER_SOURCES:
        return USER_SOURCES[name]
    fn = getattr(USER_REWARDS.get(name), "__wrapped__", USER_REWARDS.get(name))
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname:
        return None
    ref = f"{module}:{qualname}"
    return ref if _same(ref, fn) else None


def answer_format_of(name: str) -> str | None:
    """The answer format a reward declares it reads (``answer_format``), or None (any: the preset's)."""
    return getattr(get_reward(name), "answer_format", None)


def compose_preset(preset: str | None, k: float | None = None, weights: Mapping[str, float] | None = None,
                   functions: Mapping[str, float] | None = None, prompt: str | None = None) -> Preset:
    """The reward a training config asks for: the named ``preset`` (or none), then ``functions`` (reward reference
    -> weight: built-in names, registered names, import paths) added after its rewards, then ``k`` (the accuracy
    weight: the preset's accuracy reward, or with no preset the first function) and ``weights`` (by name or
    reference). The prompt is ``prompt``, else the preset's, else the one answer format the functions declare;
    a function declaring another format than the prompt is an error."""
    names = {ref: load_reward(str(ref)) for ref in (functions or {})}
    if preset is None:
        if not names:
            raise RewardError("reward.preset is null and reward.functions is empty: name a preset or some functions")
        declared = sorted({f for n in names.values() if (f := answer_format_of(n))})
        kind = prompt or (declared[0] if len(declared) == 1 else None)
        if kind is None:
            raise RewardError(f"reward.preset is null and the functions declare {declared or 'no'} answer format(s): "
                              f"set reward.prompt to the prompt kind to train with")
        base = Preset("custom", {}, kind, "user rewards")
    else:
        base = get_preset(preset)
        base = replace(base, prompt=prompt or base.prompt)
    added = {names[ref]: float(w) for ref, w in (functions or {}).items()}
    p = replace(base, weights={**base.weights, **added})
    p = p.with_weights(k=k, weights={(load_reward(n) if is_import_path(n) else n): w for n, w in (weights or {}).items()})
    for n in p.weights:
        fmt = answer_format_of(n) if n not in REWARDS else None
        if fmt is not None and fmt != p.prompt:
            raise RewardError(f"reward {n!r} reads the {fmt!r} answer format but the run prompts for {p.prompt!r}: "
                              f"set reward.prompt={fmt}, or a preset of that format")
    sources = {n: (reward_source(n) or n) for n in p.weights if n not in REWARDS}
    return replace(p, sources=sources)


def checked_scores(fn: RewardFn, name: str, kwargs: Mapping[str, Any], when: str) -> list[Any]:
    """``fn(**kwargs)``, refusing what TRL would silently turn into a bad advantage: an exception (the first row
    that raises alone is named), a wrong count, or a value that is neither a finite number nor None."""
    completions = kwargs.get("completions") or []
    ids = kwargs.get("id")

    def row(i: int) -> str:
        return f"row {i}" + (f" (id {ids[i]!r})" if ids is not None and i < len(ids) else "")

    try:
        scores = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the reward, the step and the row
        bad = None
        for i in range(len(completions)):
            one = {k: (v[i : i + 1] if isinstance(v, list) and len(v) == len(completions) else v)
                   for k, v in kwargs.items()}
            try:
                fn(**one)
            except Exception:  # noqa: BLE001
                bad = i
                break
        at = row(bad) if bad is not None else f"a batch of {len(completions)} (no row alone raises)"
        raise RewardError(f"reward {name!r} raised {when}, {at}: {type(e).__name__}: {e}") from e
    try:
        scores = list(scores)
    except TypeError:
        raise RewardError(f"reward {name!r} returned a {type(scores).__name__} {when}; return a list with one float "
                          f"per completion") from None
    if len(scores) != len(completions):
        raise RewardError(f"reward {name!r} returned {len(scores)} values for {len(completions)} completions {when}; "
                          f"return one float per completion")
    for i, s in enumerate(scores):
        ok = s is None or (isinstance(s, (int, float, np.integer, np.floating)) and not isinstance(s, bool)
                           and np.isfinite(float(s)))
        if not ok:
            raise RewardError(f"reward {name!r} returned {s!r} {when}, {row(i)}; return a finite float (or None where "
                              f"the reward does not apply to the row)")
    return scores


class CheckedReward:
    """A reward function as TRL calls it, stopping the run at the first exception or non-finite value with the step,
    the reward and the row (TRL would train on a NaN advantage, or die without saying which reward failed)."""

    def __init__(self, fn: RewardFn, name: str):
        self.fn, self.__name__ = fn, name
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, **kwargs: Any) -> list[Any]:
        state = kwargs.get("trainer_state")
        when = f"at step {state.global_step + 1}" if state is not None else "outside training"
        return checked_scores(self.fn, self.__name__, kwargs, when)


def probe_completions(item: Mapping[str, Any], prompt: str) -> list[str]:
    """Completions a reward must be able to score, for one training row: a well-formed one with the gold answer
    in the prompt's format, the same with another letter, and an empty one."""
    letters = [str(item["answer"])]
    n = len(item.get("options") or [])
    letters.append(next((x for x in "ABCDEFGHIJ"[: max(n, 2)] if x != letters[0]), "A"))
    fmt = FORMATS.get(prompt)
    out = []
    for x in letters:
        box = f"The findings point to option {x}. \\boxed{{{x}}}"
        out.append(fmt.render("The key findings and a verdict on each option.", box) if fmt and fmt.tags else box)
    return [*out, ""]


def probe_reward(name: str, rows: Sequence[Mapping[str, Any]], prompt: str) -> None:
    """Before training: call reward ``name`` as TRL will on a probe batch of training ``rows`` (with their
    ``prompt`` column), and raise :class:`RewardError` unless it returns one finite float (or None) per completion."""
    fn = get_reward(name)
    check_signature(fn, name, columns=[c for c in rows[0] if c != "prompt"])
    batch = [(r, c) for r in rows for c in probe_completions(r, prompt)]
    kwargs: dict[str, Any] = {k: [r[k] for r, _ in batch] for k in rows[0] if k != "prompt"}
    kwargs.update(prompts=[r["prompt"] for r, _ in batch],
                  completions=[[{"role": "assistant", "content": c}] for _, c in batch],
                  completion_ids=[list(range(len(c.split()))) for _, c in batch], trainer_state=None,
                  log_metric=lambda *a, **k: None, log_extra=lambda *a, **k: None)
    checked_scores(fn, name, kwargs, "on a probe batch of the training data")
