"""Judge-free text metrics of generations, computed from the response text and its question alone.

    from clinical_r1.textmetrics import response_metrics, summarize_generations
    response_metrics(text, item, fmt="crpo")                    # one response: format, cross-reference, length, ...
    summarize_generations("results/run/medmcqa.jsonl", medmcqa) # means over a generations file

    python -m clinical_r1 textmetrics results/run/medmcqa.jsonl --benchmark medmcqa --data path/to/medmcqa.jsonl

They approximate, without an LLM judge, what the paper's judged metrics measure (faithfulness, case-grounded
citation, distractor rejection). Each is documented where it is defined:

- ``format_compliance``: the response is well-formed in its answer format
  (:meth:`clinical_r1.formats.AnswerFormat.well_formed`, the one parser).
- ``cross_reference``, by :func:`cites_reasoning`: the final section cites a finding of the reasoning section
  (``clinical_r1.rewards.cross_references``, the rule the CRPO reward uses, without its format requirement).
- :func:`response_length`: tokens of the response (the generations file records the model's count).
- :func:`citation_density`: the share of the stem's findings that the response cites.
- :func:`distractor_rejection`: the share of incorrect options the response names and explicitly rejects.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from clinical_r1.formats import FORMATS, get_format
from clinical_r1.parsing import LETTERS, completion_text
from clinical_r1.rewards import STOPWORDS, clinical_values, content_words, cross_references

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Format, cross-reference, length
# ---------------------------------------------------------------------------------------------------


def cites_reasoning(text: Any, fmt: str = "crpo", options: Sequence[str] | None = None) -> bool | None:
    """Whether the format's final section cross-references its first (reasoning) section (``<dx>``→
    ``<conclusion>`` for crpo, ``<think>``→``<answer>`` for grpo) by :func:`clinical_r1.rewards.cross_references`.

    Unlike the ``cross_reference`` reward, the response need not be well-formed: the first complete occurrence
    of each section is used, and a missing section means no cross-reference (``False``). ``None`` for formats
    with fewer than two sections (cot, direct).
    """
    f = get_format(fmt)
    if len(f.tags) < 2:
        return None
    first, last = f.tags[0], f.tags[-1]
    p = f.parse(text, options)
    if first not in p.sections or last not in p.sections:
        return False
    return cross_references(p.sections[first], p.sections[last], options)


def response_length(text: Any, tokenizer: Any = None) -> int:
    """Length in tokens: the tokenizer's (no special tokens) when given, else whitespace tokens."""
    s = completion_text(text)
    if tokenizer is None:
        return len(s.split())
    return len(tokenizer(s, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------------------------------------
# Case-grounded citation density
# ---------------------------------------------------------------------------------------------------

# Laboratory tests and investigations; each tuple is one test with its synonyms, the first one canonical.
LAB_NAMES: tuple[tuple[str, ...], ...] = (
    ("hemoglobin", "haemoglobin", "hb"), ("hematocrit", "haematocrit"), ("hba1c", "hemoglobin a1c"),
    ("leukocyte count", "white blood cell count", "wbc", "leukocytes"), ("platelet count", "platelets"),
    ("mean corpuscular volume", "mcv"), ("reticulocyte count", "reticulocytes"), ("sodium", "na+"),
    ("potassium", "k+"), ("chloride", "cl-"), ("bicarbonate", "hco3"), ("urea nitrogen", "bun"),
    ("creatinine",), ("glucose",), ("calcium",), ("magnesium",), ("phosphorus", "phosphate"), ("albumin",),
    ("bilirubin",), ("alkaline phosphatase",), ("aspartate aminotransferase", "ast"),
    ("alanine aminotransferase", "alt"), ("gamma-glutamyl transferase", "ggt"), ("lipase",), ("amylase",),
    ("troponin",), ("creatine kinase", "ck-mb", "cpk"), ("tsh", "thyroid-stimulating hormone"),
    ("thyroxine", "t4"), ("triiodothyronine", "t3"), ("cortisol",), ("acth",), ("prolactin",),
    ("inr",), ("prothrombin time",), ("partial thromboplastin time", "aptt", "ptt"), ("fibrinogen",),
    ("d-dimer",), ("ferritin",), ("serum iron",), ("transferrin", "tibc"), ("vitamin b12", "cobalamin"),
    ("folate",), ("lactate dehydrogenase", "ldh"), ("uric acid",), ("lactate",), ("arterial ph", "ph"),
    ("pco2",), ("po2",), ("oxygen saturation", "spo2"), ("erythrocyte sedimentation rate", "esr"),
    ("c-reactive protein", "crp"), ("antinuclear antibodies", "ana"), ("anti-dsdna",), ("rheumatoid factor",),
    ("psa", "prostate-specific antigen"), ("alpha-fetoprotein", "afp"), ("hcg", "beta-hcg"), ("cea",),
    ("haptoglobin",), ("coombs",), ("blood smear",), ("urinalysis",), ("ecg", "ekg", "electrocardiogram",
    "electrocardiography"), ("x-ray", "radiograph"), ("ct scan", "computed tomography"),
    ("mri", "magnetic resonance"), ("ultrasound", "ultrasonography", "sonography"),
    ("echocardiography", "echocardiogram"), ("biopsy",), ("lumbar puncture", "cerebrospinal fluid", "csf"),
    ("blood culture",), ("urine culture",), ("gram stain",), ("blood pressure", "bp"), ("pulse", "heart rate"),
    ("respirations", "respiratory rate"), ("temperature",),
)
# Words of a case vignette that are not findings; bigrams containing one are not key phrases.
VIGNETTE_WORDS = frozenset(
    """year years old month months week weeks day days hour hours man woman boy girl male female child infant
    comes came come presents presented brought physician doctor department emergency office clinic hospital
    visit evaluation following shows showed show reveals revealed examination physical laboratory studies
    study history medical family social question questions mother father parents wife husband today
    currently previously recently also otherwise normal ago since because during initial appropriate next
    step management diagnosis explanation mechanism action drug cause finding findings result results""".split()
)
_LAB_PATTERNS = [
    [re.compile(r"(?<![\w-])" + re.escape(s) + r"(?![\w-])", re.I) for s in names] for names in LAB_NAMES
]
_CLAUSE = re.compile(r"[.,;:!?()\n]")
_LAB_BIGRAMS = frozenset(tuple(s.split()) for names in LAB_NAMES for s in names if len(s.split()) == 2)


@dataclass(frozen=True)
class Findings:
    """The findings of a question stem, each normalised so that a response citing it can be matched."""

    values: frozenset[str]  # clinical values with units, as ``rewards.clinical_values`` gives them ("150/95mmhg")
    labs: frozenset[str]  # canonical names of the tests mentioned (``LAB_NAMES``)
    phrases: frozenset[tuple[str, str]]  # key clinical phrases: content-word bigrams of one clause

    @property
    def total(self) -> int:
        return len(self.values) + len(self.labs) + len(self.phrases)


def _labs(text: str) -> frozenset[str]:
    return frozenset(names[0] for names, pats in zip(LAB_NAMES, _LAB_PATTERNS) if any(p.search(text) for p in pats))


def _phrases(text: str) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for clause in _CLAUSE.split(text):
        words = content_words(clause)
        for a, b in zip(words, words[1:]):
            if a in VIGNETTE_WORDS or b in VIGNETTE_WORDS or len(a) < 3 or len(b) < 3:
                continue
            if any(c.isdigit() for c in a + b) or (a, b) in _LAB_BIGRAMS:
                continue
            out.add((a, b))
    return out


def stem_findings(question: str, options: Sequence[str] = ()) -> Findings:
    """The findings of a stem: values with units, named tests and key clinical phrases.

    Key phrases are pairs of consecutive content words (stop-words removed, within one clause) that hold no
    number and no generic vignette word (``VIGNETTE_WORDS``: age, sex, setting, "comes to the physician",
    …); pairs that occur in an option are left out, since naming an option is not citing the case.
    """
    option_pairs = set().union(*(_phrases(o) for o in options)) if options else set()
    return Findings(frozenset(clinical_values(question)), _labs(question), frozenset(_phrases(question) - option_pairs))


def cited_findings(text: Any, question: str, options: Sequence[str] = ()) -> tuple[int, int]:
    """(findings of the stem the response cites, findings of the stem); see :func:`citation_density`."""
    f = stem_findings(question, options)
    s = completion_text(text)
    words = content_words(s)
    resp_pairs = set(zip(words, words[1:]))
    cited = len(f.values & clinical_values(s)) + len(f.labs & _labs(s)) + len(f.phrases & resp_pairs)
    return cited, f.total


def citation_density(text: Any, question: str, options: Sequence[str] = ()) -> float | None:
    """Case-grounded citation density: the share of the stem's findings (:func:`stem_findings`) that the
    response cites — a value with the same number and unit, the same test name (or a synonym), or the same
    key phrase (two consecutive content words). ``None`` when the stem has no findings.
    """
    cited, total = cited_findings(text, question, options)
    return cited / total if total else None


# ---------------------------------------------------------------------------------------------------
# Distractor rejection coverage
# ---------------------------------------------------------------------------------------------------

REJECTION_CUES = re.compile(
    r"\b(?:rules?\s+out|ruled\s+out|ruling\s+out|unlikely|less\s+likely|incorrect|rejected|rejects?|rejecting"
    r"|not|no\s+evidence|excluded|excludes?|excluding|inconsistent|wrong|eliminated?|eliminates|against"
    r"|cannot|doesn't|isn't|wouldn't|don't|fails?\s+to)\b",
    re.I,
)
WINDOW_BEFORE = 80  # characters before a mention searched for a rejection cue ("we can rule out B")
WINDOW_AFTER = 200  # characters after it ("B is unlikely because ...")
MIN_OPTION_TEXT = 4  # option texts shorter than this (characters) are matched by letter only


def _letter_patterns(letter: str) -> list[re.Pattern[str]]:
    return [
        re.compile(r"(?i:\b(?:option|choice|answer))\s*\(?" + letter + r"\)?(?![A-Za-z])"),
        re.compile(r"\(" + letter + r"\)"),
        re.compile(r"(?:^|(?<=[\s*]))" + letter + r"[.):](?=\s)", re.M),
        re.compile(r"(?<![A-Za-z\\{])" + letter + r"(?=\s+(?:is|was|would|does|can|could|seems)\b)"),
    ]


def _text_pattern(option: str) -> re.Pattern[str] | None:
    words = re.findall(r"\w+", option.lower())
    if len("".join(words)) < MIN_OPTION_TEXT or all(w in STOPWORDS for w in words):
        return None
    return re.compile(r"(?<!\w)" + r"\W+".join(map(re.escape, words)) + r"(?!\w)", re.I)


def option_mentions(text: str, options: Sequence[str]) -> list[tuple[int, int, int]]:
    """Every mention of an option as (start, end, option index), sorted: by letter ("option B", "(B)", a line
    ``B.``/``B)``/``B:``, "B is …") or by its text (case and punctuation folded; texts under
    ``MIN_OPTION_TEXT`` characters or of stop-words only are matched by letter only)."""
    spans = []
    for i, opt in enumerate(options):
        pats = _letter_patterns(LETTERS[i])
        tp = _text_pattern(opt)
        if tp is not None:
            pats.append(tp)
        for p in pats:
            spans.extend((m.start(), m.end(), i) for m in p.finditer(text))
    return sorted(set(spans))


def rejected_options(text: Any, options: Sequence[str]) -> set[int]:
    """Indices of the options the response names and rejects: a rejection cue (``REJECTION_CUES``) within
    ``WINDOW_BEFORE`` characters before or ``WINDOW_AFTER`` after a mention, on the same line, and not past a
    mention of another option (so "A is correct. B is not" rejects B, not A)."""
    s = completion_text(text)
    mentions = option_mentions(s, options)
    out: set[int] = set()
    for k, (a, b, i) in enumerate(mentions):
        left = max(a - WINDOW_BEFORE, s.rfind("\n", 0, a) + 1)
        left = max([left] + [e for (_, e, j) in mentions[:k] if j != i and e <= a])
        nl = s.find("\n", b)
        right = min(b + WINDOW_AFTER, nl if nl != -1 else len(s))
        right = min([right] + [st for (st, _, j) in mentions[k + 1 :] if j != i and st >= b])
        if REJECTION_CUES.search(s[left:a]) or REJECTION_CUES.search(s[b:right]):
            out.add(i)
    return out


def distractor_rejection(text: Any, options: Sequence[str], answer: str) -> float:
    """Distractor rejection coverage: the share of incorrect options (all but the gold ``answer``) that the
    response names, by letter or by text, and explicitly rejects (:func:`rejected_options`)."""
    gold = LETTERS.index(answer)
    wrong = [i for i in range(len(options)) if i != gold]
    if not wrong:
        raise ValueError("distractor rejection needs at least one incorrect option")
    rejected = rejected_options(text, options)
    return sum(i in rejected for i in wrong) / len(wrong)


# ---------------------------------------------------------------------------------------------------
# Per response and per file
# ---------------------------------------------------------------------------------------------------


def response_metrics(text: Any, item: Mapping[str, Any], fmt: str = "crpo", n_tokens: int | None = None) -> dict[str, Any]:
    """All judge-free metrics of one response to one record (``question``, ``options``, ``answer``), keyed by
    their names in the results files (``format_compliance`` is ``well_formed``, ``cross_reference`` is
    :func:`cites_reasoning`)."""
    opts = list(item["options"])
    return {
        "format_compliance": get_format(fmt).well_formed(text, opts),
        "cross_reference": cites_reasoning(text, fmt, opts),
        "n_tokens": n_tokens if n_tokens is not None else response_length(text),
        "citation_density": citation_density(text, item["question"], opts),
        "distractor_rejection": distractor_rejection(text, opts, item["answer"]),
    }


def _mean(values: Iterable[Any]) -> tuple[float | None, int]:
    v = [float(x) for x in values if x is not None]
    return (float(np.mean(v)) if v else None), len(v)


def summarize_generations(generations_path: str | os.PathLike, dataset: Iterable[Mapping[str, Any]],
                          fmt: str | None = None, per_response: bool = False) -> dict[str, Any]:
    """Means of the judge-free metrics over a generations file (every response counts once).

    ``fmt`` defaults to the answer format of the sidecar's prompt kind (crpo when there is none). Each
    metric reports its mean and ``n`` (responses where it is defined). Ids missing from ``dataset`` raise
    :class:`clinical_r1.evaluate.EvaluationError`.
    """
    from clinical_r1.evaluate import EvaluationError
    from clinical_r1.generate import read_generations, read_meta

    path = Path(generations_path)
    records = read_generations(path)
    meta = read_meta(path) or {}
    kind = meta.get("prompt_kind") or "crpo"
    fmt = fmt or (kind if kind in FORMATS else "crpo")  # each prompt kind is an answer format
    by_id = {str(r["id"]): r for r in dataset}
    unknown = sorted({str(r["id"]) for r in records} - set(by_id))
    if unknown:
        raise EvaluationError(f"{path}: {len(unknown)} id(s) are not in the dataset, e.g. {unknown[:5]}")
    rows = [{"id": str(r["id"]), "sample": r["sample"],
             **response_metrics(r["text"], by_id[str(r["id"])], fmt, r.get("n_tokens"))} for r in records]
    out: dict[str, Any] = {"generations": str(path), "format": fmt, "n_responses": len(rows)}
    for key in ("format_compliance", "cross_reference", "n_tokens", "citation_density", "distractor_rejection"):
        mean, n = _mean(r[key] for r in rows)
        out[key] = {"mean": mean, "n": n}
    if per_response:
        out["responses"] = rows
    return out
