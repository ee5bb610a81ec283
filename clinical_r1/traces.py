"""Cold start without an API bill: public DeepSeek-R1 traces of MedQA training questions as SFT traces.

    python -m clinical_r1 traces --from hw-hwei/MedThoughts-8K --items data/splits/sft.jsonl \
        --out data/splits/traces_sft.jsonl --eval medqa --eval medqa4 --eval medmcqa --eval medxpertqa \
        --model Qwen/Qwen2.5-3B-Instruct --max-length 4096

    from clinical_r1.traces import import_traces, load_public_traces
    kept, report = import_traces(load_public_traces("hw-hwei/MedThoughts-8K"), items, eval_sets=evals,
                                 tokenizer=tok, max_length=4096)

``hw-hwei/MedThoughts-8K`` (Hugging Face hub, licence **GPL-3.0**): 7,716 answers of DeepSeek-R1 (671B, through
its API) to MedQA US train questions (5 options), those its authors' judge (GPT-4o-mini) found correct. One file,
``MedThoughts-8K.jsonl``; fields ``question_id, question, options`` (a dict of letters), ``answer_idx`` (gold
letter), ``ds_think`` (R1's reasoning), ``ds_answer`` (R1's final answer), ``source`` (``MedQA/US/train``). It is
downloaded at run time (``huggingface_hub``) and read through ``datasets`` (``load_dataset("json")``), the same
path for a local copy; the traces are never part of this repository.

Each trace is matched to one of ``items`` (a training split in the record schema) and converted as
:func:`clinical_r1.distill.convert` converts a reasoner's answer: ``ds_think`` becomes ``<dx>``, ``ds_answer``
becomes ``<conclusion>``, cut after its one box (a box-less answer is first boxed at the option it commits to:
:func:`box_committed_answer`). The first failing check names the drop reason (``DROP_REASONS``):

- ``unmatched``: no item has its normalised question text (:func:`clinical_r1.data.normalise_text`);
- ``options_differ`` / ``gold_mismatch``: the item's options (as texts, in order) are not the trace's, or the gold
  option's *text* differs (the 4- and 5-option releases letter the same question differently);
- ``truncated``: no final answer (R1 stopped inside its reasoning);
- ``no_committed_answer``: the final answer has no box and its answer statements do not name exactly one option
  (:func:`box_committed_answer`; R1 answered plain MedQA questions, so its ``ds_answer`` is usually box-less:
  "**Answer:** C. Nitrofurantoin", "The correct answer is **B. ...**");
- distill's ``multiple_boxes``, ``unreadable_box``, ``wrong_answer`` (our own parse, not the
  dataset's judge), ``empty_reasoning``, ``invalid_format``;
- ``non_english``: letters of another script than Latin or Greek in the reasoning or answer (mixed-language R1);
- ``contaminated``: the item's stem is in an evaluation set (:func:`clinical_r1.data.contaminated_ids`);
- ``duplicate``: a second kept trace of the same item;
- ``too_long``: the SFT row (prompt + target through the policy's chat template) is longer than ``max_length``
  tokens, which TRL would cut, losing the answer (:func:`clinical_r1.sft.token_length`, the count SFT uses).

The **match rate** is the share of the smaller side that found a partner: every trace when ``items`` is the
whole training split, every item when ``items`` is a half drawn from the traces (:func:`sft_pool`). Below
``MIN_MATCH_RATE`` the import fails: the traces and the items are different releases or texts.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path
from typing import Any, Mapping, Sequence

from clinical_r1.data import contaminated_ids, decontamination_report, normalise_text
from clinical_r1.distill import DROP_REASONS as DISTILL_REASONS
from clinical_r1.distill import convert
from clinical_r1.errors import DataError
from clinical_r1.parsing import LETTERS, committed_answer, find_boxes

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "hw-hwei/MedThoughts-8K"
HUB_FILES = {"hw-hwei/MedThoughts-8K": "MedThoughts-8K.jsonl"}  # hub dataset -> its one JSONL file
LICENCES = {"hw-hwei/MedThoughts-8K": "GPL-3.0"}
TEACHER = "deepseek-r1 (public traces)"
TRACE_FIELDS = {"question_id": (str, int), "question": (str,), "options": (dict,), "answer_idx": (str,),
                "ds_think": (str,), "ds_answer": (str,), "source": (str,)}
# Traces and items are the same MedQA US release, so all but a handful should match; under 90% something else
# is wrong (another release, the 4-option variant, a half that was not drawn from the traces).
MIN_MATCH_RATE = 0.9
DROP_REASONS = ("unmatched", "options_differ", "gold_mismatch", "truncated", "no_committed_answer",
                *(r for r in DISTILL_REASONS if r not in ("api_failure", "no_box")), "non_english", "contaminated",
                "duplicate", "too_long")
SCRIPTS_OK = ("LATIN", "GREEK")  # Greek letters are medical notation (α-blocker, β-hCG)


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def trace_file(source: str | os.PathLike) -> Path:
    """A local JSONL as it is; a hub dataset id downloaded (cached by ``huggingface_hub``) to its JSONL."""
    p = Path(source)
    if p.exists():
        return p
    if str(source) not in HUB_FILES:
        raise DataError(f"trace source {source!r}: no such file, and not a known hub dataset ({sorted(HUB_FILES)})")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=str(source), filename=HUB_FILES[str(source)], repo_type="dataset"))
    except Exception as e:  # huggingface_hub raises many types (offline, not found, gated)
        raise DataError(f"could not download {HUB_FILES[str(source)]} of {source} ({type(e).__name__}: {e}); "
                        f"download it yourself and pass its path") from e


def load_public_traces(source: str | os.PathLike = DEFAULT_SOURCE):
    """The public traces as a ``datasets.Dataset``, every row checked against the documented schema.

    Raises :class:`DataError` naming the file, the row (1-based) and the field for a missing or mistyped field,
    an answer letter outside the options or an option that is not text."""
    from datasets import load_dataset

    path = trace_file(source)
    try:
        ds = load_dataset("json", data_files=str(path), split="train")
    except Exception as e:  # datasets/pyarrow raise several types for a bad JSON file
        raise DataError(f"cannot read it as JSON lines ({type(e).__name__}: {e})", file=path) from e
    missing = [f for f in TRACE_FIELDS if f not in ds.column_names]
    if missing:
        raise DataError(f"not the public-trace schema: missing column(s) {missing}; it has {ds.column_names}",
                        file=path, field=missing[0])
    for row, r in enumerate(ds, start=1):
        for f, types in TRACE_FIELDS.items():
            if not isinstance(r[f], types) or (f != "ds_answer" and isinstance(r[f], str) and not r[f].strip()):
                raise DataError(f"expected non-empty {'/'.join(t.__name__ for t in types)}, got {r[f]!r:.60}",
                                file=path, row=row, field=f)
        opts = trace_options(r)
        if len(opts) < 2 or not all(isinstance(o, str) and o.strip() for o in opts):
            raise DataError(f"options must be >= 2 texts keyed A, B, ...; got {r['options']!r:.120}",
                            file=path, row=row, field="options")
        if r["answer_idx"].strip().upper() not in LETTERS[: len(opts)]:
            raise DataError(f"{r['answer_idx']!r} is not one of the option letters {LETTERS[: len(opts)]}",
                            file=path, row=row, field="answer_idx")
    log.info("%s: %d public traces (licence %s)", path, len(ds), LICENCES.get(str(source), "see its card"))
    return ds


def trace_options(r: Mapping[str, Any]) -> list[Any]:
    """A trace's options in letter order (``datasets`` gives every row the union of the letters; absent: None)."""
    opts = r["options"]
    return [opts[k] for k in sorted(opts) if opts[k] is not None]


# ---------------------------------------------------------------------------------------------------
# Matching and filtering
# ---------------------------------------------------------------------------------------------------


def is_mixed_script(text: str) -> bool:
    """True when ``text`` holds a letter of another script than Latin or Greek (e.g. CJK in R1's reasoning)."""
    return any(ch.isalpha() and not ch.isascii() and not unicodedata.name(ch, "").startswith(SCRIPTS_OK)
               for ch in text)


def box_committed_answer(answer: str, trace_opts: Sequence[str], item_opts: Sequence[str]) -> str | None:
    """R1's final answer with one box: unchanged when it has a box (distill's checks judge it); else cut after its
    first statement that names the option it commits to (:func:`clinical_r1.parsing.committed_answer`), and that
    option boxed in the *item's* lettering (found by option text), as distill cuts a conclusion after its box.
    ``None`` when the answer names no option or several: it is dropped, never guessed."""
    if find_boxes(answer):
        return answer
    c = committed_answer(answer, trace_opts)
    if c.letter is None:
        return None
    chosen = normalise_text(trace_opts[LETTERS.index(c.letter)])
    letter = LETTERS[[normalise_text(o) for o in item_opts].index(chosen)]
    return f"{answer[: c.end].rstrip()} \\boxed{{{letter}}}"


def import_traces(traces, items: Sequence[Mapping[str, Any]], eval_sets: Mapping[str, Any] | None = None,
                  tokenizer: Any = None, max_length: int | None = None, min_match_rate: float = MIN_MATCH_RATE,
                  source: str = DEFAULT_SOURCE) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Match, filter, decontaminate and convert public traces onto ``items`` (see the module doc).

    Returns the kept traces in ``distill``'s output schema (``id, question, options, answer, dx, conclusion,
    teacher, source``; the item's fields) and a report: ``n_traces, n_items, matched, match_rate, kept,
    dropped`` (count per reason), ``dropped_ids`` (trace ids per reason) and the ``decontamination`` report.
    ``tokenizer`` and ``max_length`` go together (the token-length cap); without them no cap is applied.
    """
    if (tokenizer is None) != (max_length is None):
        raise DataError("the token-length cap needs both a tokenizer and max_length")
    by_key: dict[str, Mapping[str, Any]] = {}
    for it in items:
        by_key.setdefault(normalise_text(it["question"]), it)
    evals = dict(eval_sets or {})
    unique = list(by_key.values())  # the decontamination helpers read id, question and options of any rows
    dirty = {i for ids in contaminated_ids(unique, evals).values() for i in ids}

    kept: list[dict[str, Any]] = []
    dropped: dict[str, list[str]] = {r: [] for r in DROP_REASONS}
    matched_items: set[str] = set()
    kept_ids: set[str] = set()
    n = 0
    for n, r in enumerate(traces, start=1):
        tid = str(r["question_id"])
        it = by_key.get(normalise_text(r["question"]))
        reason, conv = None, None
        if it is None:
            reason = "unmatched"
        else:
            matched_items.add(str(it["id"]))
            t_opts, i_opts = trace_options(r), list(it["options"])
            t_gold = t_opts[LETTERS.index(r["answer_idx"].strip().upper())]
            if [normalise_text(o) for o in t_opts] != [normalise_text(o) for o in i_opts]:
                reason = "options_differ"
            elif normalise_text(t_gold) != normalise_text(i_opts[LETTERS.index(it["answer"])]):
                reason = "gold_mismatch"
            elif not r["ds_answer"].strip():
                reason = "truncated"
            elif (final := box_committed_answer(r["ds_answer"], t_opts, i_opts)) is None:
                reason = "no_committed_answer"
            else:
                conv = convert(final, r["ds_think"], it["answer"], i_opts)
                reason = conv.reason
            if reason is None and is_mixed_script(conv.dx + conv.conclusion):
                reason = "non_english"
            elif reason is None and str(it["id"]) in dirty:
                reason = "contaminated"
            elif reason is None and str(it["id"]) in kept_ids:
                reason = "duplicate"
        if reason is None:
            rec = {"id": str(it["id"]), "question": it["question"], "options": list(it["options"]),
                   "answer": it["answer"], "dx": conv.dx, "conclusion": conv.conclusion, "teacher": TEACHER,
                   "source": it.get("source", "")}
            if max_length is not None and _too_long(tokenizer, rec, max_length):
                reason = "too_long"
            else:
                kept.append(rec)
                kept_ids.add(rec["id"])
                continue
        dropped[reason].append(tid)

    rate = len(matched_items) / max(1, min(n, len(by_key)))
    report = {
        "teacher": TEACHER, "source": str(source), "licence": LICENCES.get(str(source), "see the dataset card"),
        "n_traces": n, "n_items": len(by_key), "matched": len(matched_items), "match_rate": round(rate, 4),
        "min_match_rate": min_match_rate, "max_length": max_length, "n_items_asked": len(items),
        "kept": len(kept), "dropped": {k: len(v) for k, v in dropped.items()}, "dropped_ids": dropped,
        "decontamination": decontamination_report({"traces": unique}, evals),
    }
    log.info("public traces %s: %d traces, %d items, matched %d (rate %.1f%%), kept %d; dropped %s", source, n,
             len(by_key), len(matched_items), 100 * rate, len(kept), {k: v for k, v in report["dropped"].items() if v})
    if rate < min_match_rate:
        raise DataError(f"public traces {source}: only {len(matched_items)} of min({n} traces, {len(by_key)} items) "
                        f"matched by normalised question text ({100 * rate:.1f}% < {100 * min_match_rate:.0f}%): "
                        f"are the items the 5-option MedQA US training split (benchmark 'medqa'), and was the SFT "
                        f"half drawn from the traces (split with sft_traces)?")
    return kept, report


def _too_long(tokenizer: Any, rec: Mapping[str, Any], max_length: int) -> bool:
    from clinical_r1.sft import sft_row, token_length

    return token_length(tokenizer, sft_row(rec, "crpo")) > max_length


def sft_pool(source: str | os.PathLike, train, eval_sets: Mapping[str, Any] | None = None, tokenizer: Any = None,
             max_length: int | None = None) -> tuple[list[str], dict[str, Any]]:
    """The ids of the training items with a kept public trace (the SFT half and dev slice are drawn from them:
    :func:`clinical_r1.data.make_splits` ``sft_from``), and the import report."""
    kept, report = import_traces(load_public_traces(source), list(train), eval_sets, tokenizer, max_length,
                                 source=str(source))
    return [k["id"] for k in kept], report
