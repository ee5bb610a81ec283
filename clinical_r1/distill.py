"""Cold-start traces for the SFT half: ask a teacher, keep only correct and well-formed answers, convert them.

    from clinical_r1.distill import distill
    report = distill(items, {"model": "deepseek-reasoner", "base_url": "https://api.deepseek.com",
                             "api_key_env": "DEEPSEEK_API_KEY"},
                     out_path="data/traces.jsonl", cache_path="data/cache/teacher.jsonl")
    report["kept"], report["dropped"]          # {"wrong_answer": 12, "multiple_boxes": 1, ...}

Command line (items: a JSONL of records; config: a YAML mapping of ChatConfig fields, plus prompt_kind):
    python -m clinical_r1 distill --items data/train.jsonl --config configs/teacher_deepseek.yaml \
        --out data/traces.jsonl --cache data/cache/teacher.jsonl [--limit 200]

The teacher is any OpenAI-compatible endpoint or a local transformers model (see :mod:`clinical_r1.api`:
concurrency, retries, resumable cache, key from an environment variable).

Prompt choice. Reasoner models (``deepseek-reasoner``, DeepSeek-R1 and its distills, QwQ) get the ``cot``
prompt with no system message (DeepSeek's advice for R1): their reasoning arrives in ``reasoning_content``
(or in ``<think>…</think>`` from vLLM/Ollama without a reasoning parser) and becomes ``<dx>``; their final
answer becomes ``<conclusion>``. Asking a reasoner to also write ``<dx>`` would only duplicate its reasoning.
Other chat models get the ``crpo`` prompt and answer in ``<dx>``/``<conclusion>`` directly. Override with
``prompt_kind`` in the config.

Conversion and filtering, first failing check wins (the report counts each reason):
``api_failure`` (no answer after retries), ``no_box`` / ``multiple_boxes`` (the final answer must hold
exactly one ``\\boxed{}``), ``unreadable_box`` (the box holds no option letter), ``wrong_answer``,
``empty_reasoning``, ``invalid_format`` (the converted target fails ``CRPO.well_formed`` or ``is_correct``).
Boxes inside the reasoning are unboxed (``\\boxed{C}`` → ``C``) so that the only box of the target is the final one;
the conclusion is cut right after its box, which is normalised to ``\\boxed{X}``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from clinical_r1.api import ChatClient, ChatRequest, make_client
from clinical_r1.errors import DataError
from clinical_r1.files import write_jsonl
from clinical_r1.formats import CRPO
from clinical_r1.parsing import LETTERS, box_letter, find_boxes, is_correct, is_correct_letter
from clinical_r1.prompts import PROMPT_KINDS, build_messages

log = logging.getLogger(__name__)

PROMPT_VERSION = "distill/v1"  # bump when the prompts or the conversion change: it is part of the cache key
DROP_REASONS = ("api_failure", "no_box", "multiple_boxes", "unreadable_box", "wrong_answer", "empty_reasoning",
                "invalid_format")
REASONER_HINTS = ("reasoner", "deepseek-r1", "qwq", "-r1-", "r1-distill")  # model-name fragments
OUTPUT_FIELDS = ("id", "question", "options", "answer", "dx", "conclusion", "teacher", "source")

BOX_WRAPPERS = ("$$", "$", "\\(", "\\[", "**")  # math/bold openers left just before a box: "$\\boxed{C}$"


def is_reasoner(model: str) -> bool:
    m = model.lower()
    return any(h in m for h in REASONER_HINTS)


def choose_prompt_kind(model: str, prompt_kind: str | None = None) -> str:
    """``cot`` for reasoner models, ``crpo`` for the rest, unless ``prompt_kind`` says otherwise."""
    kind = prompt_kind or ("cot" if is_reasoner(model) else "crpo")
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt_kind {kind!r}; choose one of {list(PROMPT_KINDS)}")
    return kind


def teacher_messages(item: Mapping[str, Any], kind: str, model: str) -> list[dict[str, str]]:
    """The teacher's chat messages; reasoners get the instructions in the user turn (no system message)."""
    return build_messages(item, kind, system=not is_reasoner(model))


# -------------------------------------------------------------------------------------------------
# Conversion
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversion:
    """A converted teacher answer: ``dx`` and ``conclusion`` when kept, else the drop ``reason``."""

    dx: str = ""
    conclusion: str = ""
    reason: str | None = None

    @property
    def kept(self) -> bool:
        return self.reason is None


def split_answer(content: str, reasoning: str) -> tuple[str, str]:
    """(reasoning, final answer) of a teacher reply.

    A reply already in the crpo format gives its ``<dx>`` and ``<conclusion>`` bodies; a reply with
    ``<think>…</think>`` gives the think body (unless ``reasoning_content`` is set) and the text after it;
    otherwise ``reasoning_content`` and the content.
    """
    p = CRPO.parse(content)
    if "dx" in p.sections and "conclusion" in p.sections:
        return p.sections["dx"], p.sections["conclusion"]
    if "</think>" in content:
        before, after = content.split("</think>", 1)
        think = before.split("<think>", 1)[-1]
        return (reasoning or think), after
    return reasoning, content


def unbox(text: str) -> str:
    """Replace every ``\\boxed{X}`` by ``X`` (reasoning must not carry boxes: the target holds exactly one)."""
    out, pos = [], 0
    for b in find_boxes(text):
        out.append(text[pos:b.start])
        out.append(b.content if b.content is not None else "")
        pos = b.end
    out.append(text[pos:])
    return "".join(out)


def strip_wrappers(text: str) -> str:
    """``text`` without trailing whitespace and box openers (``$``, ``\\(``, ``**``...), e.g. before ``\\boxed``."""
    text = text.rstrip()
    while text.endswith(BOX_WRAPPERS):
        w = next(w for w in BOX_WRAPPERS if text.endswith(w))
        if w == "**" and text.count("**") % 2 == 0:  # closes a bold span ("**Answer:**"): keep it
            break
        text = text[: -len(w)].rstrip()
    return text.strip()


def convert(content: str, reasoning: str, answer: str, options: Sequence[str]) -> Conversion:
    """Filter and convert one teacher reply into the ``<dx>``/``<conclusion>`` target (see the module doc)."""
    dx, final = split_answer(content or "", reasoning or "")
    boxes = find_boxes(final)
    if not boxes:
        return Conversion(reason="no_box")
    if len(boxes) > 1:
        return Conversion(reason="multiple_boxes")
    letter = box_letter(boxes[0].content, options)
    if letter is None:
        return Conversion(reason="unreadable_box")
    if not is_correct_letter(letter, answer):
        return Conversion(reason="wrong_answer")
    dx = unbox(dx).strip()
    if not dx:
        return Conversion(reason="empty_reasoning")
    lead = strip_wrappers(final[: boxes[0].start])
    conclusion = f"{lead} \\boxed{{{letter}}}" if lead else f"\\boxed{{{letter}}}"
    target = CRPO.render(dx, conclusion)
    if not (CRPO.well_formed(target, options) and is_correct(target, answer, options)):
        return Conversion(reason="invalid_format")
    return Conversion(dx=dx, conclusion=conclusion)


# -------------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------------


def validate_item(item: Mapping[str, Any], row: int) -> str:
    """The item's gold letter (case and spaces folded); a clear error naming the row and field for an item the
    teacher cannot be asked about."""
    for f in ("id", "question", "options", "answer"):
        if f not in item or item[f] is None:
            raise DataError(f"item row {row}: missing field {f!r}")
    opts = item["options"]
    if not isinstance(opts, (list, tuple)) or len(opts) < 2 or not all(isinstance(o, str) and o.strip() for o in opts):
        raise DataError(f"item row {row} (id {item['id']!r}): options must be a list of >= 2 non-empty strings")
    ans = str(item["answer"]).strip().upper()
    if len(ans) != 1 or ans not in LETTERS[: len(opts)]:
        raise DataError(f"item row {row} (id {item['id']!r}): answer {item['answer']!r} is not one of the "
                         f"option letters {LETTERS[: len(opts)]}")
    return ans


def _split_teacher_config(teacher_config: Any) -> tuple[Any, str | None]:
    if isinstance(teacher_config, Mapping):
        cfg = dict(teacher_config)
        return cfg, cfg.pop("prompt_kind", None)
    return teacher_config, None


def distill(items: Iterable[Mapping[str, Any]], teacher_config: Any, out_path: str | os.PathLike,
            cache_path: str | os.PathLike | None, *, prompt_kind: str | None = None,
            limit: int | None = None, client_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Ask the teacher about every item, keep correct well-formed traces, write them, return the report.

    ``teacher_config``: a mapping of :class:`~clinical_r1.api.ChatConfig` fields (plus ``prompt_kind``), a
    ``ChatConfig``, a ready ``ChatClient``, a ``LocalBackend`` or a ``(model, tokenizer)`` pair.
    Output rows: ``id, question, options, answer, dx, conclusion, teacher, source``, written atomically.
    """
    spec, cfg_kind = _split_teacher_config(teacher_config)
    client: ChatClient = make_client(spec, cache_path, **dict(client_kwargs or {}))
    kind = choose_prompt_kind(client.model, prompt_kind or cfg_kind)
    rows = [dict(it) for it in items]
    if limit is not None:
        rows = rows[:limit]
    seen: set[str] = set()
    for i, it in enumerate(rows, start=1):  # rows numbered as the file's lines
        it["answer"] = validate_item(it, i)  # the gold letter, trusted from here on
        if str(it["id"]) in seen:
            raise DataError(f"item row {i}: duplicate id {it['id']!r} (ids key the teacher cache)")
        seen.add(str(it["id"]))
    reqs = [ChatRequest(str(it["id"]), teacher_messages(it, kind, client.model), purpose=f"{PROMPT_VERSION}/{kind}")
            for it in rows]
    results = client.complete(reqs)

    kept: list[dict[str, Any]] = []
    dropped: dict[str, list[str]] = {r: [] for r in DROP_REASONS}
    for it, res in zip(rows, results):
        if not res.ok:
            dropped["api_failure"].append(str(it["id"]))
            continue
        conv = convert(res.content or "", res.reasoning_content or "", it["answer"], it["options"])
        if not conv.kept:
            dropped[conv.reason].append(str(it["id"]))
            continue
        kept.append({"id": str(it["id"]), "question": it["question"], "options": list(it["options"]),
                     "answer": it["answer"], "dx": conv.dx, "conclusion": conv.conclusion,
                     "teacher": client.model, "source": it.get("source", "")})
    write_jsonl(kept, out_path)  # atomic
    report = {
        "teacher": client.model,
        "prompt_kind": kind,
        "prompt_version": PROMPT_VERSION,
        "n_items": len(rows),
        "kept": len(kept),
        "dropped": {r: len(ids) for r, ids in dropped.items()},
        "dropped_ids": dropped,
        "out_path": str(out_path),
        "usage": client.summary(),
    }
    log.info("distill %s (%s prompt): kept %d of %d; dropped %s", client.model, kind, len(kept), len(rows),
             {r: n for r, n in report["dropped"].items() if n})
    return report


# ---------------------------------------------------------------------------------------------------
# The compact trace style (the CPU demo's cold start)
# ---------------------------------------------------------------------------------------------------

TRACE_STYLES = ("full", "compact")


def _first_sentence(text: str) -> str:
    """Text up to the first '. ' that ends a sentence (decimals such as '4.2' do not end one)."""
    for i in range(len(text) - 1):
        if text[i] == "." and text[i + 1] == " " and not text[max(0, i - 1)].isdigit():
            return text[:i].strip()
    return text.rstrip(". ").strip()


def compact_trace(trace: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, str]:
    """The ``compact`` style of a full bundled trace: a ~100-token ``<dx>`` and a one-line conclusion.

    Full traces (``Initial impression: … Key findings: … Option analysis: A (…): rejected because …``)
    run to ~340 tokens, more than a 135M model learns in a few CPU minutes. The compact style keeps the
    impression, the first key finding and one verdict per option; its conclusion names the answer and
    restates the impression (the cross-reference), then boxes the gold letter::

        <dx>Impression: acute pericarditis. Key finding: … Options: A rejected. B rejected. C accepted.</dx>
        <conclusion>Option C fits the impression of acute pericarditis. \\boxed{C}</conclusion>
    """
    dx = str(trace["dx"])
    head, sep, rest = dx.partition("Key findings:")
    impression = head.replace("Initial impression:", "").strip().rstrip(".")
    finding = _first_sentence(rest.split("Option analysis:")[0]) if sep else ""
    if not impression or not finding:
        raise ValueError(f"trace {trace.get('id')!r}: expected 'Initial impression: … Key findings: …' in dx")
    answer = str(item["answer"])
    verdicts = " ".join(f"{LETTERS[i]} {'accepted' if LETTERS[i] == answer else 'rejected'}."
                        for i in range(len(item["options"])))
    body = f"Impression: {impression}. Key finding: {finding}. Options: {verdicts}"
    # Built unlike <dx> (a small model mixes two sections that share a template) and cross-referencing it
    # through "impression <words>": 3 content words in a row, found in <dx> and not in any option.
    conclusion = f"Option {answer} fits the impression of {impression}. \\boxed{{{answer}}}"
    return {"id": str(trace["id"]), "dx": body, "conclusion": conclusion}
