"""The one answer parser: tags, boxes, letters and a structure report.

Prompts, SFT targets, rewards, evaluation and the judge all read completions through this module, so
"correct" (:func:`is_correct`) means the same thing in training and in evaluation. The answer formats
(which tags, in which order) are objects of :mod:`clinical_r1.formats`, which parse through
:func:`parse_structure`; this module knows no format by name.

    >>> from clinical_r1.parsing import extract_letter, is_correct
    >>> extract_letter("... so the answer is \\\\boxed{C}"), is_correct("... \\\\boxed{C}", "C")
    ('C', True)
    >>> from clinical_r1.formats import parse
    >>> p = parse("<dx>TSH 12 mU/L ...</dx><conclusion>... \\\\boxed{C}</conclusion>", "crpo")
    >>> p.letter, p.well_formed

Everything here runs in time linear in the completion length (no backtracking regexes over
user text), so a 1 MB adversarial completion is parsed in milliseconds.
"""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any, Sequence

BOX_COMMAND = "\\boxed"
MAX_BOX_CONTENT = 200  # longer brace bodies are not answers; stops a scan at this many characters
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# a brace body with up to three nesting levels; the alternatives start with distinct characters, so no backtracking
_BRACED = re.compile(r"\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox)\s*\{([^{}]*)\}")
_LETTER_WITH_TEXT = re.compile(r"^\(?([A-Z])\s*(?:[.):\]]|\s-)\s*(.*)$", re.S)


def completion_text(completion: Any) -> str:
    """Return the text of a completion given as a string, a message dict or a list of messages.

    TRL passes conversational completions as ``[{"role": "assistant", "content": "..."}]``;
    the assistant turns are joined. ``None`` becomes the empty string.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        parts = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in parts if m.get("role", "assistant") == "assistant"]
        return "".join(_content_text(m.get("content")) for m in (assistant or parts))
    raise TypeError(f"completion must be a str or chat messages, got {type(completion).__name__}")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal content blocks: keep the text ones
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return str(content)


@dataclass(frozen=True)
class Box:
    """One ``\\boxed`` occurrence: its span and raw content (``None`` when it has no braces)."""

    start: int
    end: int
    content: str | None


def find_boxes(text: str) -> list[Box]:
    """All ``\\boxed`` commands in ``text``, left to right, with balanced-brace contents.

    A ``\\boxed`` not followed by ``{`` is returned with ``content=None`` (a bare box); an unclosed
    or over-long brace body is returned with ``content=None`` too.
    """
    boxes: list[Box] = []
    i = text.find(BOX_COMMAND)
    while i != -1:
        j = i + len(BOX_COMMAND)
        k = j
        while k < len(text) and text[k] in " \t":
            k += 1
        end, content = j, None
        if k < len(text) and text[k] == "{":
            m = _BRACED.match(text, k, k + MAX_BOX_CONTENT + 2)
            if m and len(m.group(1)) <= MAX_BOX_CONTENT:
                content, end = m.group(1), m.end()
        boxes.append(Box(i, end, content))
        i = text.find(BOX_COMMAND, max(end, j))
    return boxes


def _norm_text(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def box_letter(content: str | None, options: Sequence[str] | None = None) -> str | None:
    """The answer letter a box holds, or ``None``.

    Accepted: ``C``, `` C ``, ``C.``, ``(C)``, ``\\text{C}``, ``C. <that option's text>``, and, when
    ``options`` are given, the exact text of one option. Lowercase letters are not answers; a
    letter beyond the option list is not an answer when ``options`` are given.
    """
    if content is None:
        return None
    s = content
    for _ in range(3):  # unwrap nested \text{\textbf{C}}
        s2 = _WRAPPERS.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = s.strip().strip("$").strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    letter = None
    if len(s) == 1 and s in LETTERS:
        letter = s
    elif len(s) == 3 and s[0] == "(" and s[2] == ")" and s[1] in LETTERS:
        letter = s[1]
    else:
        m = _LETTER_WITH_TEXT.match(s)
        if m:
            rest = m.group(2).strip()
            if not rest:
                letter = m.group(1)
            elif options is not None:
                idx = LETTERS.index(m.group(1))
                if idx < len(options) and _norm_text(rest) == _norm_text(options[idx]):
                    letter = m.group(1)
        elif options is not None and s:
            matches = [i for i, o in enumerate(options) if _norm_text(o) == _norm_text(s)]
            if len(matches) == 1:
                letter = LETTERS[matches[0]]
    if letter is not None and options is not None and LETTERS.index(letter) >= len(options):
        return None
    return letter


@dataclass(frozen=True)
class Parsed:
    """The structure report of one completion for one answer format."""

    text: str
    fmt: str  # the answer format's name ("" for the format-free parse of :func:`extract_letter`)
    tags: tuple[str, ...]
    open_counts: dict[str, int]
    close_counts: dict[str, int]
    sections: dict[str, str]  # tag -> body of its first complete occurrence
    spans: dict[str, tuple[int, int]]  # tag -> (start of open tag, end of close tag)
    in_order: bool
    outside_text: str  # text outside all first-occurrence sections (the whole text if no tags)
    n_boxes: int  # number of \\boxed commands, braced or not
    box: Box | None  # the box when there is exactly one
    letter: str | None  # letter of the single box, None unless exactly one braced box
    box_in_final: bool  # the single box lies inside the last section (always True for untagged formats)
    options: tuple[str, ...] | None = field(default=None)

    @property
    def tags_once(self) -> bool:
        return all(self.open_counts[t] == 1 and self.close_counts[t] == 1 for t in self.tags)

    @property
    def sections_nonempty(self) -> bool:
        return all(self.sections.get(t, "").strip() for t in self.tags)

    @property
    def clean_outside(self) -> bool:
        return not self.outside_text.strip()

    @property
    def well_formed(self) -> bool:
        """Every tag exactly once, in order, non-empty, nothing outside, one box in the last section."""
        return (
            self.tags_once
            and self.in_order
            and self.sections_nonempty
            and self.clean_outside
            and self.n_boxes == 1
            and self.letter is not None
            and self.box_in_final
        )

    def report(self) -> dict[str, Any]:
        """A JSON-friendly summary, for tables and debugging."""
        return {
            "fmt": self.fmt,
            "tags_present": {t: self.open_counts[t] > 0 and self.close_counts[t] > 0 for t in self.tags},
            "tags_once": self.tags_once,
            "in_order": self.in_order,
            "sections_nonempty": self.sections_nonempty,
            "outside_text": self.outside_text.strip()[:200],
            "n_boxes": self.n_boxes,
            "box_in_final": self.box_in_final,
            "letter": self.letter,
            "well_formed": self.well_formed,
        }


def parse_structure(completion: Any, fmt: str, tags: Sequence[str], options: Sequence[str] | None = None) -> Parsed:
    """Parse ``completion`` (string or chat messages) against section ``tags`` (in order; the last one holds
    the box; none for an untagged format); ``fmt`` names the format in the report. Callers go through an
    answer format (:meth:`clinical_r1.formats.AnswerFormat.parse`) or :func:`extract_letter`.

    Results are memoised per (text, format, tags, options): TRL calls each reward function on the same
    completions, and they all parse them.
    """
    return _parse(completion_text(completion), fmt, tuple(tags), tuple(options) if options is not None else None)


def clear_cache() -> None:
    """Forget memoised parses (benchmarks time cold calls)."""
    _parse.cache_clear()


@lru_cache(maxsize=1024)
def _parse(text: str, fmt: str, tags: tuple[str, ...], opts: tuple[str, ...] | None) -> Parsed:
    lower = text  # tags are case-sensitive: str.lower() can change lengths and misalign spans
    open_counts, close_counts, sections, spans = {}, {}, {}, {}
    for t in tags:
        o, c = f"<{t}>", f"</{t}>"
        open_counts[t] = lower.count(o)
        close_counts[t] = lower.count(c)
        a = lower.find(o)
        b = lower.find(c, a + len(o)) if a != -1 else -1
        if a != -1 and b != -1:
            sections[t] = text[a + len(o) : b]
            spans[t] = (a, b + len(c))
    ordered = [spans[t] for t in tags if t in spans]
    in_order = len(ordered) == len(tags) and all(
        ordered[i][1] <= ordered[i + 1][0] for i in range(len(ordered) - 1)
    )
    if tags:
        pieces, pos = [], 0
        for a, b in sorted(spans.values()):
            if a >= pos:
                pieces.append(text[pos:a])
                pos = b
        pieces.append(text[pos:])
        outside = "".join(pieces)
    else:
        outside = ""
    n_boxes = text.count(BOX_COMMAND)
    box = find_boxes(text)[0] if n_boxes == 1 else None
    letter = box_letter(box.content, opts) if box is not None else None
    if box is None:
        box_in_final = False
    elif not tags:
        box_in_final = True
    else:
        last = spans.get(tags[-1])
        box_in_final = last is not None and last[0] <= box.start and box.end <= last[1]
    return Parsed(text, fmt, tags, open_counts, close_counts, sections, spans, in_order, outside,
                  n_boxes, box, letter, box_in_final, opts)


def extract_letter(completion: Any, options: Sequence[str] | None = None) -> str | None:
    """The answer letter: the content of the completion's single ``\\boxed{}``; ``None`` if not exactly one.

    Whatever the answer format: a letter boxed outside the format's last section is still the answer given
    (the format rewards and metrics judge the structure)."""
    return parse_structure(completion, "", (), options).letter


def is_correct_letter(letter: str | None, answer: str) -> bool:
    """A parsed letter is correct iff it is the gold ``answer`` letter (validated when the data was loaded);
    ``None``, an invalid answer, never is. For callers that keep the letters (majority vote)."""
    return letter is not None and letter == answer


def is_correct(completion: Any, answer: str, options: Sequence[str] | None = None) -> bool:
    """The one correctness rule of training and evaluation: the completion holds exactly one ``\\boxed{}``
    and its letter (:func:`extract_letter`) is the gold ``answer``."""
    return is_correct_letter(extract_letter(completion, options), answer)


# ---------------------------------------------------------------------------------------------------
# The option a box-less answer commits to (public teacher answers written without \boxed{})
# ---------------------------------------------------------------------------------------------------

# "answer is", "Answer:", "**Answer**:", a heading that ends in "Answer", "correct option is": what follows states it
_ANSWER_CUE = re.compile(
    r"(?im)\banswer(?:\s+is\b|[*_ \t]*:|(?=[*_# \t]*$))|\b(?:correct|best|right)\s+(?:option|choice|response)\s+is\b")
_BOLD = re.compile(r"\*\*([^*\n]{1,200})\*\*")
MARKUP = "*_`#"  # markdown emphasis and heading marks, stripped from statements and tokens
MIN_NAMED_OPTION = 4  # option texts shorter than this (normalised characters) are read by letter only


@dataclass(frozen=True)
class Commitment:
    """The option a free-form answer commits to: ``letter`` when its answer statements name exactly one option
    (else ``None``), every letter they name (``named``), and ``end``, where the first statement naming it ends."""

    letter: str | None
    named: tuple[str, ...]
    end: int


def committed_answer(text: str, options: Sequence[str]) -> Commitment:
    """The one option a box-less answer commits to, read from its answer statements only:

    - the opening: the first sentence of the first non-empty line, by a leading letter statement (``C. …``,
      ``(C)``), a bold span (``**C.**``, ``**C. Nitrofurantoin**``) or the option texts it names;
    - each cue statement: the sentence after ``answer is`` / ``Answer:`` / a heading ending in ``Answer`` (then the
      next line) / ``correct option is``, by every letter token in it (:func:`box_letter` per token) and the
      option texts it names.

    An option is named by text when its normalised text (at least ``MIN_NAMED_OPTION`` characters) occurs as whole
    words; an option whose text lies inside another named option's text is not counted. Explanations elsewhere
    (one bullet per option) are not statements. ``letter`` is ``None`` when the statements name no option or more
    than one: such an answer is not guessed."""
    opts = list(options)
    statements = [(s, e, False) for s, e in _cue_statements(text)]
    first = next((ln for ln in _lines(text) if text[ln[0]:ln[1]].strip()), None)
    if first is not None:
        statements.append((first[0], _sentence_end(text, first[0], first[1]), True))
    named: set[int] = set()
    end = len(text)
    for s, e, opening in statements:
        found = _statement_options(text[s:e], opts, opening)
        named |= found
        if found:
            end = min(end, e)
    letters = tuple(LETTERS[i] for i in sorted(named))
    if len(letters) != 1:
        return Commitment(None, letters, 0)
    return Commitment(letters[0], letters, end)


def _lines(text: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for line in text.split("\n"):
        spans.append((pos, pos + len(line)))
        pos += len(line) + 1
    return spans


def _sentence_end(text: str, start: int, stop: int) -> int:
    """End of the sentence that starts at ``start`` (before ``stop``, a line end): after ``.``, ``;``, ``!`` or
    ``?`` followed by a space, except the period of an option letter (``C. Nitrofurantoin``)."""
    for i in range(start, stop):
        if text[i] in ".;!?" and (i + 1 == stop or text[i + 1] in " \t"):
            initial = (text[i] == "." and i > start and text[i - 1] in LETTERS
                       and (i - 1 == start or not text[i - 2].isalnum()))
            if not initial:
                return i + 1
    return stop


def _cue_statements(text: str) -> list[tuple[int, int]]:
    """(start, end) of the sentence after each answer cue; a cue that ends its line states on the next one."""
    out = []
    for m in _ANSWER_CUE.finditer(text):
        s = m.end()
        stop = text.find("\n", s)
        stop = len(text) if stop == -1 else stop
        if not text[s:stop].strip(MARKUP + " \t:-"):
            nxt = next((ln for ln in _lines(text[stop:]) if text[stop + ln[0]:stop + ln[1]].strip()), None)
            if nxt is None:
                continue
            s, stop = stop + nxt[0], stop + nxt[1]
        out.append((s, _sentence_end(text, s, stop)))
    return out


def _statement_options(statement: str, options: list[str], opening: bool) -> set[int]:
    """Indices of the options one statement names. The opening's letters count only with a separator or in
    bold (its first word may be an article, "A 30-year-old ..."); a cue statement's every letter token counts."""
    found = _named_by_text(statement, options)
    clean = statement.replace("**", "").strip(MARKUP + " \t:-–—")
    pieces = [clean.split()[0]] if opening and clean and _LETTER_WITH_TEXT.match(clean) else []
    pieces += [t for b in _BOLD.findall(statement) for t in b.split()] if opening else clean.split()
    for tok in pieces:  # letters only (box_letter without options): option texts are read by _named_by_text
        letter = box_letter(tok.strip(MARKUP + ",;:.!?"))
        if letter is not None and LETTERS.index(letter) < len(options):
            found.add(LETTERS.index(letter))
    return found


def _named_by_text(statement: str, options: list[str]) -> set[int]:
    s = f" {_norm_text(statement)} "
    norms = [_norm_text(o) for o in options]
    hits = {i for i, o in enumerate(norms) if len(o.replace(" ", "")) >= MIN_NAMED_OPTION and f" {o} " in s}
    return {i for i in hits if not any(j != i and norms[i] in norms[j] and norms[i] != norms[j] for j in hits)}


_OPTION_LETTER = re.compile(r"\b(?:option|choice|answer)\s+\(?([A-Z])\b\)?|\(([A-Z])\)|^\s*\(?([A-Z])[.):]\s", re.I | re.M)


def options_named(text: str, options: Sequence[str]) -> set[str]:
    """The letters of the options ``text`` names: by letter (``option C``, ``choice C``, ``(C)``, or ``C.``/``C)``
    opening a line) or by the option's own text (as :func:`committed_answer` reads it)."""
    found = {LETTERS[i] for i in _named_by_text(text, list(options))}
    for m in _OPTION_LETTER.finditer(text):
        letter = next(g for g in m.groups() if g).upper()
        if LETTERS.index(letter) < len(options):
            found.add(letter)
    return found
