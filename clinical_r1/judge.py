"""The eight LLM-as-judge metrics of the paper, their prompts, backends and the judges' reliability.

    from clinical_r1.judge import judge_responses, summarize_judgements, agreement
    records = judge_responses(rows, "all", {"model": "deepseek-chat", "base_url": "https://api.deepseek.com",
                                            "api_key_env": "DEEPSEEK_API_KEY"}, "results/cache/judge.jsonl")
    local = judge_responses(rows, "all", {"model": "embedded:smollm2-135m-instruct", "backend": "local"},
                            None)        # a local judge: constrained mode unless judge_mode: generate
    summarize_judgements(records)        # mean per metric per model, n, n_unparseable, n_failed
    agreement(records, records_judge2)   # Spearman and Cohen's kappa between two judges

Command line (generations from clinical_r1.generate, joined by id with the benchmark records):
    python -m clinical_r1 judge --generations results/run/medqa.jsonl --items data/medqa_test.jsonl \
        --config configs/judge_deepseek.yaml --metrics all --cache results/cache/judge.jsonl \
        --out results/run/judge_medqa.jsonl          # also writes <out>.summary.csv

Metrics (``JUDGE_METRICS``), one judge call per response × metric:
- cognitive behaviours, counted per response: ``backtracking``, ``backward_chaining``, ``subgoal_setting``,
  ``verification``;
- faithfulness: ``faithfulness`` (to medical knowledge, 1-5), ``cecd`` (case-grounded evidence citation
  density: distinct case findings cited per 100 words), ``drc`` (distractor rejection coverage: share of the
  wrong options rejected with a reason), ``hallucination`` (fabricated or false statements; lower is better).

Each prompt (this project's own text) gives the definition, a short medical example and a strict output
format — one JSON object — and carries a version string that is part of the cache key. Records say which
``mode`` produced them, and the mode is in the cache key (constrained entries have the purpose
``<prompt version>/constrained``). Two modes (``judge_mode`` in the judge config, or ``mode=``):

- ``generate`` (API judges; available to local ones): the judge writes free text, parsed robustly (the last
  JSON object holding the key, a ``<count>`` tag, a bare number); an answer that still does not parse is
  recorded with ``status="unparseable"`` and its raw text, never dropped, and counted by
  :func:`summarize_judgements`.
  Decoding is deterministic (temperature 0) unless ``k > 1`` samples are averaged.
- ``constrained`` (the default for a local judge): small local models almost never write the JSON asked for
  (the embedded 135M model: 0% parseable), so the same messages are rendered with the answer already opened
  (``{"count": `` or ``{"score": ``) and one forward pass reads the next-token probabilities over the allowed
  values (digits 0-9, scores 1-5); DRC asks one Yes/No question per distractor. As in G-Eval, ``value`` is the
  probability-weighted value; the record also keeps ``argmax``, ``probs`` and ``mass`` (the probability the
  judge put on the allowed tokens at all). Every response gets a value; whether it means anything depends
  on the judge: the 135M model mostly repeats the prompt's example value (see tests/test_judge_local.py).

Rows may be judged by any OpenAI-compatible endpoint or a local transformers model (:mod:`clinical_r1.api`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from clinical_r1.api import JUDGE_MODES, ChatClient, ChatRequest, make_client
from clinical_r1.errors import DataError, UnknownName, UsageError
from clinical_r1.files import sha256_json, sha256_text
from clinical_r1.evaluate import spearman
from clinical_r1.parsing import LETTERS, completion_text
from clinical_r1.prompts import format_options

log = logging.getLogger(__name__)

MAX_COUNT = 1000  # a count above this is not a plausible judgement of one response
JSON_SCAN_CHARS = 4000  # the JSON answer is looked for in the last this-many characters of the reply


@dataclass(frozen=True)
class JudgeMetric:
    """One judge metric: its prompt, its answer format and how a parsed answer becomes a value."""

    name: str
    version: str  # part of the cache key: bump it whenever the prompt text changes
    kind: str  # "count" -> {"count": N}; "score" -> {"score": 1..5}; "letters" -> {"rejected": [..]}
    group: str  # "cognitive" or "faithfulness"
    higher_is_better: bool
    definition: str  # the system prompt

    @property
    def key(self) -> str:
        return {"count": "count", "score": "score", "letters": "rejected"}[self.kind]


_COUNT_FORMAT = (
    "Output format: reply with one JSON object and nothing else, for example {\"count\": 2}. "
    "Use {\"count\": 0} when there is no instance."
)
_HEADER = ("You are a strict evaluator of clinical reasoning. You will read a multiple-choice clinical case and "
           "one response to it. Judge only the response text, not whether you agree with its answer.\n\n")

_PROMPTS: dict[str, tuple[str, str, str, bool, str]] = {
    # name: (kind, group, version, higher_is_better, body)
    "backtracking": ("count", "cognitive", "judge/backtracking/v1", True, (
        "Count BACKTRACKING: places where the response explicitly abandons a hypothesis, approach or "
        "intermediate conclusion it was pursuing, because it noticed a problem, and returns to an earlier "
        "point to try something else. Each abandoned line of reasoning counts once. Simply listing "
        "differential diagnoses, or rejecting options one by one, is not backtracking.\n\n"
        "Example: \"This looks like a pulmonary embolism. Wait, the D-dimer is normal and the Wells score is "
        "low, so that does not hold; going back to the history, pleuritic pain after a viral illness with a "
        "friction rub suggests pericarditis.\" -> 1 instance.\n\n" + _COUNT_FORMAT)),
    "backward_chaining": ("count", "cognitive", "judge/backward_chaining/v1", True, (
        "Count BACKWARD CHAINING: places where the response starts from a candidate answer or goal and "
        "reasons backwards to what would have to be true for it (expected findings, required mechanism), then "
        "compares that with the case. Forward reasoning from the findings to a diagnosis does not count. Each "
        "candidate worked backwards counts once.\n\n"
        "Example: \"If this were primary adrenal insufficiency we would expect hyponatraemia, hyperkalaemia and "
        "hyperpigmentation; the case has all three.\" -> 1 instance.\n\n" + _COUNT_FORMAT)),
    "subgoal_setting": ("count", "cognitive", "judge/subgoal_setting/v1", True, (
        "Count SUBGOAL SETTING: intermediate goals or sub-questions that the response explicitly sets itself "
        "in order to reach the answer (for example: localise the lesion, identify the cause, choose the next "
        "step). Count each distinct subgoal once; steps that are only carried out, without being announced as "
        "a goal, do not count.\n\n"
        "Example: \"First I need to decide whether the acidosis is high anion gap; then find its cause; "
        "finally pick the treatment.\" -> 3 subgoals.\n\n" + _COUNT_FORMAT)),
    "verification": ("count", "cognitive", "judge/verification/v1", True, (
        "Count VERIFICATION: places where the response explicitly checks an intermediate result or its final "
        "answer against the case data or against medical knowledge (re-computing a value, confirming that a "
        "finding fits, testing the answer against the question asked). Each distinct check counts once; "
        "merely restating the answer is not a check.\n\n"
        "Example: \"Checking: the anion gap is 140 - (100 + 16) = 24, so it is indeed a high-anion-gap "
        "acidosis, consistent with the lactate of 6 mmol/L.\" -> 1 instance.\n\n" + _COUNT_FORMAT)),
    "faithfulness": ("score", "faithfulness", "judge/faithfulness/v1", True, (
        "Rate FAITHFULNESS TO MEDICAL KNOWLEDGE: how far the medical statements in the response agree with "
        "established medical knowledge (physiology, pathology, pharmacology, current guidelines), whether or "
        "not its final answer is right. Use this scale:\n"
        "5 = every medical statement is accurate;\n"
        "4 = minor imprecision only, nothing that changes the reasoning;\n"
        "3 = one clear factual error, or several imprecisions;\n"
        "2 = several factual errors, some of which the reasoning depends on;\n"
        "1 = the reasoning rests on false medical claims.\n\n"
        "Example: \"Metformin should be stopped when eGFR falls below 30 mL/min\" is accurate; \"beta-blockers "
        "are first-line for cocaine-associated chest pain\" is a clear factual error.\n\n"
        "Output format: reply with one JSON object and nothing else, for example {\"score\": 4}.")),
    "cecd": ("count", "faithfulness", "judge/cecd/v1", True, (
        "Count CASE-GROUNDED EVIDENCE CITATIONS: the distinct findings from the case text (history, symptoms, "
        "examination signs, laboratory or imaging results, demographics) that the response explicitly cites "
        "as evidence in its reasoning. Count each distinct case finding once, however often it is repeated. "
        "Findings that are not in the case, and general statements without a case finding, do not count.\n\n"
        "Example: case \"A 62-year-old smoker with haemoptysis and a serum calcium of 12.8 mg/dL\"; response "
        "\"Hypercalcaemia of 12.8 mg/dL with haemoptysis in a smoker suggests squamous cell carcinoma\" "
        "-> 3 findings (calcium 12.8 mg/dL, haemoptysis, smoking).\n\n" + _COUNT_FORMAT)),
    "drc": ("letters", "faithfulness", "judge/drc/v1", True, (
        "List DISTRACTOR REJECTIONS: which of the incorrect options (the distractors, listed with the case) "
        "the response explicitly rules out WITH a reason tied to the case or to medical knowledge. An option "
        "that is merely not chosen, or dismissed without any reason, is not rejected.\n\n"
        "Example: distractors A and D; response \"Graves disease (A) is unlikely because TSH would be "
        "suppressed, not raised\" and nothing about D -> rejected [\"A\"].\n\n"
        "Output format: reply with one JSON object and nothing else, for example {\"rejected\": [\"A\", \"D\"]}. "
        "Use {\"rejected\": []} when no distractor is rejected with a reason.")),
    "hallucination": ("count", "faithfulness", "judge/hallucination/v1", False, (
        "Count HALLUCINATIONS: statements in the response that are fabricated or false, namely (a) findings "
        "attributed to the patient that are not in the case or contradict it, (b) invented facts, values, "
        "studies or guidelines, and (c) medical claims stated as fact that are clearly false. Count each "
        "distinct false statement once.\n\n"
        "Example: the case gives a blood pressure of 150/95 mmHg and the response says \"given the patient's "
        "hypotension\" -> 1 hallucination.\n\n" + _COUNT_FORMAT)),
}

JUDGE_METRICS: dict[str, JudgeMetric] = {
    name: JudgeMetric(name, version, kind, group, hib, _HEADER + body)
    for name, (kind, group, version, hib, body) in _PROMPTS.items()
}
COGNITIVE = tuple(m for m in JUDGE_METRICS if JUDGE_METRICS[m].group == "cognitive")
FAITHFULNESS = tuple(m for m in JUDGE_METRICS if JUDGE_METRICS[m].group == "faithfulness")
METRIC_GROUPS = {"all": tuple(JUDGE_METRICS), "cognitive": COGNITIVE, "faithfulness": FAITHFULNESS}


def resolve_metrics(metrics: str | Sequence[str]) -> list[JudgeMetric]:
    """Metric objects from names or a group name (``all``, ``cognitive``, ``faithfulness``)."""
    names = METRIC_GROUPS.get(metrics, [metrics]) if isinstance(metrics, str) else list(metrics)
    unknown = [n for n in names if n not in JUDGE_METRICS]
    if unknown:
        raise UnknownName(f"unknown judge metric(s) {unknown}; known: {list(JUDGE_METRICS)} "
                       f"or groups {list(METRIC_GROUPS)}")
    return [JUDGE_METRICS[n] for n in names]


# -------------------------------------------------------------------------------------------------
# Prompts and parsing
# -------------------------------------------------------------------------------------------------


def distractors(options: Sequence[str], answer: str) -> list[str]:
    return [LETTERS[i] for i in range(len(options)) if LETTERS[i] != answer]


def judge_messages(metric: JudgeMetric, row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The judge's chat messages for one response (system: the metric's definition; user: case + response)."""
    parts = [f"Case:\n{row['question'].strip()}\n\nOptions:\n{format_options(row['options'])}"]
    if metric.kind == "letters":
        parts.append(f"Distractors (incorrect options): {', '.join(distractors(row['options'], row['answer']))}")
    parts.append(f"Response to evaluate:\n<<<\n{row['response']}\n>>>")
    return [{"role": "system", "content": metric.definition}, {"role": "user", "content": "\n\n".join(parts)}]


def _json_objects_from_end(text: str) -> Iterable[dict]:
    dec = json.JSONDecoder()
    tail = text[-JSON_SCAN_CHARS:]
    pos = tail.rfind("{")
    while pos != -1:
        try:
            obj, _ = dec.raw_decode(tail, pos)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            yield obj
        pos = tail.rfind("{", 0, pos)


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        v = v.strip()
        if not v.lstrip("-").isdigit():
            return None
        v = int(v)
    if isinstance(v, float):
        if not v.is_integer():
            return None
        v = int(v)
    return v if isinstance(v, int) else None


def _as_letters(v: Any, options: Sequence[str] | None) -> list[str] | None:
    if isinstance(v, str):
        v = [] if v.strip().lower() in ("", "none", "[]") else v.replace(";", ",").split(",")
    if not isinstance(v, list):
        return None
    out = []
    for x in v:
        if not isinstance(x, str):
            return None
        s = x.strip().strip("().").strip().upper()
        if len(s) != 1 or s not in LETTERS or (options is not None and LETTERS.index(s) >= len(options)):
            return None
        out.append(s)
    return sorted(set(out))


def _validate(metric: JudgeMetric, v: Any, options: Sequence[str] | None) -> Any:
    if metric.kind == "letters":
        return _as_letters(v, options)
    n = _as_int(v)
    if n is None:
        return None
    if metric.kind == "score":
        return n if 1 <= n <= 5 else None
    return n if 0 <= n <= MAX_COUNT else None


def _tag(text: str, tag: str) -> str | None:
    a = text.rfind(f"<{tag}>")
    if a == -1:
        return None
    b = text.find(f"</{tag}>", a)
    return text[a + len(tag) + 2: b] if b != -1 else None


def parse_judgement(text: str | None, metric: JudgeMetric | str, options: Sequence[str] | None = None) -> Any:
    """The judge's answer (an int, or a sorted letter list for ``drc``), or ``None`` when it does not parse.

    Tried in order: the last JSON object in the reply that holds the metric's key (``count``, ``score``,
    ``rejected``; code fences and text around it are fine), a ``<count>N</count>``-style tag, and a reply
    that is a bare number. Out-of-range values (negative counts, scores outside 1-5, letters beyond the
    options) do not parse.
    """
    m = JUDGE_METRICS[metric] if isinstance(metric, str) else metric
    text = completion_text(text)
    for obj in _json_objects_from_end(text):
        keys = {str(k).strip().lower(): v for k, v in obj.items()}
        if m.key in keys:
            return _validate(m, keys[m.key], options)
    tagged = _tag(text, m.key)
    if tagged is not None:
        return _validate(m, tagged, options)
    bare = text.strip().strip("`").strip()
    if m.kind != "letters" and bare.lstrip("-").isdigit():
        return _validate(m, bare, options)
    return None


def word_count(text: str) -> int:
    return len(text.split())


def metric_value(metric: JudgeMetric, raw: Any, row: Mapping[str, Any]) -> float:
    """The metric's value from a parsed judge answer: counts as they are, CECD per 100 words, DRC a share."""
    if metric.name == "cecd":
        return raw * 100.0 / max(word_count(row["response"]), 1)
    if metric.kind == "letters":
        wrong = set(distractors(row["options"], row["answer"]))
        return len(wrong & set(raw)) / len(wrong) if wrong else float("nan")
    return float(raw)


# -------------------------------------------------------------------------------------------------
# Judging
# -------------------------------------------------------------------------------------------------

RESPONSE_FIELDS = ("response", "completion", "text")  # the judged text; ``text`` is what generate.py writes


def normalise_row(row: Mapping[str, Any], i: int, need_answer: bool) -> dict[str, Any]:
    """A judge row with ``id, model, sample, question, options, answer, response``; errors name row and field."""
    field = next((f for f in RESPONSE_FIELDS if f in row), None)
    if field is None:
        raise ValueError(f"judge row {i}: no response text (one of the fields {list(RESPONSE_FIELDS)})")
    for f in ("id", "question", "options") + (("answer",) if need_answer else ()):
        if row.get(f) is None:
            raise ValueError(f"judge row {i} (id {row.get('id')!r}): missing field {f!r}"
                             + (" (join the benchmark records with attach_items)" if f != "id" else ""))
    return {"id": str(row["id"]), "model": str(row.get("model", "")), "sample": int(row.get("sample", 0) or 0),
            "question": row["question"], "options": list(row["options"]), "answer": row.get("answer", ""),
            "response": completion_text(row[field])}


def attach_items(generations: Iterable[Mapping[str, Any]], items: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Generation rows (``id, text, model, sample``) joined by id with their records (question, options, answer)."""
    by_id = {str(it["id"]): it for it in items}
    out = []
    for i, g in enumerate(generations):
        it = by_id.get(str(g["id"]))
        if it is None:
            raise DataError(f"id {g['id']!r} is not among the {len(by_id)} benchmark records", row=i + 1)
        out.append({**g, "question": it["question"], "options": list(it["options"]), "answer": it["answer"]})
    return out


def judge_mode(client: ChatClient, mode: str | None = None) -> str:
    """The mode a judge runs in: ``mode`` if given, else the config's ``judge_mode``, else the backend's
    (a :class:`~clinical_r1.api.LocalBackend` defaults to ``constrained``), else ``generate``."""
    mode = mode or client.config.judge_mode or getattr(client.backend, "judge_mode", None) or "generate"
    if mode not in JUDGE_MODES:
        raise UsageError(f"judge mode must be one of {JUDGE_MODES}, got {mode!r}")
    if mode == "constrained" and not hasattr(client.backend, "next_token_probs"):
        raise UsageError(f"judge {client.model!r}: constrained mode needs a local model's next-token "
                         f"probabilities; an API judge runs in mode 'generate'")
    return mode


def judge_responses(rows: Iterable[Mapping[str, Any]], metrics: str | Sequence[str], backend: Any,
                    cache_path: str | os.PathLike | None, *, k: int = 1, temperature: float | None = None,
                    client_kwargs: Mapping[str, Any] | None = None, mode: str | None = None) -> list[dict[str, Any]]:
    """One record per response × metric: ``id, model, sample, metric, value, raw_value, status, raw, judge,
    mode, ...``; constrained records add ``expected, argmax, value_argmax, probs, mass``.

    ``backend``: a :class:`~clinical_r1.api.ChatConfig` (or mapping), a ``ChatClient``, a ``LocalBackend``
    or a ``(model, tokenizer)`` pair. ``mode``: see :func:`judge_mode`. ``k > 1`` averages k sampled
    judgements (generate mode, needs ``temperature > 0``). ``status``: ``ok`` (value = mean over the parsed
    samples; in constrained mode always), ``unparseable`` (raw text kept) or ``api_failure`` (no answer
    after retries).
    """
    ms = resolve_metrics(metrics)
    client: ChatClient = make_client(backend, cache_path, **dict(client_kwargs or {}))
    mode = judge_mode(client, mode)
    temp = temperature if temperature is not None else client.config.temperature
    if k < 1 or (k > 1 and (not temp or mode == "constrained")):
        raise UsageError(f"k={k} judge samples: k must be >= 1, and k > 1 needs temperature > 0 (got {temp}) "
                         f"and mode 'generate' (got {mode!r}; constrained scoring is deterministic)")
    need_answer = any(m.kind == "letters" for m in ms)
    norm = [normalise_row(r, i, need_answer) for i, r in enumerate(rows)]
    if mode == "constrained":
        return judge_constrained(norm, ms, client)
    reqs, index = [], []
    for r in norm:
        rhash = sha256_text(r["response"])[:32]  # the cache key's item id: the judged text; the prompt hash adds the case
        for m in ms:
            for j in range(k):
                reqs.append(ChatRequest(rhash, judge_messages(m, r), purpose=m.version, sample=j,
                                        temperature=temperature))
                index.append((r, m))
    results = client.complete(reqs)
    records: list[dict[str, Any]] = []
    for start in range(0, len(results), k):
        r, m = index[start]
        records.append(_record(r, m, results[start:start + k], client.model))
    n_bad = sum(rec["status"] != "ok" for rec in records)
    log.info("judge %s: %d records, %d not ok; %s", client.model, len(records), n_bad, client.summary())
    return records


def _record(row: Mapping[str, Any], metric: JudgeMetric, results: Sequence[Any], judge: str) -> dict[str, Any]:
    raws = [res.content if res.ok else None for res in results]
    parsed = [parse_judgement(t, metric, row["options"]) if t is not None else None for t in raws]
    good = [p for p in parsed if p is not None]
    if good:
        status = "ok"
    elif any(t is not None for t in raws):
        status = "unparseable"
    else:
        status = "api_failure"
    values = [metric_value(metric, p, row) for p in good]
    return {
        "id": row["id"], "model": row["model"], "sample": row["sample"], "metric": metric.name,
        "value": sum(values) / len(values) if values else None,
        "raw_value": good[0] if len(good) == 1 else (good or None),
        "status": status,
        "raw": raws[0] if len(raws) == 1 else raws,
        "n_samples": len(results), "n_parsed": len(good),
        "error": next((res.error for res in results if res.error), None),
        "judge": judge, "prompt_version": metric.version, "n_words": word_count(row["response"]), "mode": "generate",
    }


# -------------------------------------------------------------------------------------------------
# Constrained scoring (local judges)
# -------------------------------------------------------------------------------------------------

CONSTRAINED_VERSION = "constrained/v1"  # the assistant prefixes, value sets and DRC question: in the cache key
COUNT_CHOICES = tuple(range(10))  # one digit token: the embedded tokenizer splits numbers, so 10-19 read as 1
SCORE_CHOICES = (1, 2, 3, 4, 5)
YES_NO = (" Yes", " No")  # the DRC answer per distractor, after the opened answer "Answer:"
BATCH_SIZE = 8  # texts per forward pass on a local judge


@dataclass(frozen=True)
class Probe:
    """One constrained question: the judge's messages, the opened assistant answer and the allowed next tokens."""

    messages: tuple
    prefix: str
    choices: tuple[str, ...]


def drc_question(letter: str, option: str) -> str:
    return (f"Question: does the response rule out distractor {letter} ({option}) with a reason? "
            f"Answer Yes or No.")


def constrained_probes(metric: JudgeMetric, row: Mapping[str, Any]) -> list[Probe]:
    """The questions a constrained judge answers for one response: the metric's own messages with the answer
    opened at its value (``{"count": `` + digit, ``{"score": `` + 1-5), or for DRC one Yes/No question per
    distractor appended to the same messages."""
    messages = judge_messages(metric, row)
    if metric.kind != "letters":
        values = COUNT_CHOICES if metric.kind == "count" else SCORE_CHOICES
        return [Probe(tuple(messages), f'{{"{metric.key}": ', tuple(map(str, values)))]
    system, user = messages
    return [Probe((system, {"role": "user", "content": user["content"] + "\n\n" + drc_question(
        letter, row["options"][LETTERS.index(letter)])}), "Answer:", YES_NO)
        for letter in distractors(row["options"], row["answer"])]


def judge_constrained(rows: Sequence[Mapping[str, Any]], metrics: Sequence[JudgeMetric],
                      client: ChatClient) -> list[dict[str, Any]]:
    """Constrained records for normalised rows (row-major, like the generate path). Per metric, every uncached
    probe runs in one :meth:`~clinical_r1.api.LocalBackend.next_token_probs` call, which runs the shared system
    prompt once. The raw probabilities are cached (purpose ``<prompt version>/constrained``): a rerun runs nothing.
    """
    backend, cache = client.backend, client.cache
    t0, n_run, n_hits = time.monotonic(), 0, 0
    keys: dict[tuple[int, str], tuple] = {}
    probs: dict[tuple, list[list[float]]] = {}
    for m in metrics:
        todo: dict[tuple, list[Probe]] = {}
        for i, r in enumerate(rows):
            ps = constrained_probes(m, r)
            key = (client.model, f"{m.version}/constrained", sha256_text(r["response"])[:32],
                   sha256_json({"probes": [dataclasses.asdict(p) for p in ps], "scorer": CONSTRAINED_VERSION}))
            keys[i, m.name] = key
            hit = cache.get(key)
            if hit is not None:
                probs[key] = json.loads(hit["content"])["p"]
                n_hits += 1
            elif key not in todo:
                todo[key] = ps
        flat = [(key, p) for key, ps in todo.items() for p in ps]
        if not flat:
            continue
        texts = [backend.render(p.messages, p.prefix) for _, p in flat]
        ids = backend.choice_token_ids(texts[0], flat[0][1].choices)  # the same opened answer for every probe
        for key in todo:
            probs[key] = []
        for (key, _), p in zip(flat, backend.next_token_probs(texts, ids, batch_size=BATCH_SIZE)):
            probs[key].append(p)
        n_run += len(texts)
        for key in todo:
            cache.put(key, {"model": key[0], "purpose": key[1], "item_id": key[2], "prompt_hash": key[3],
                            "content": json.dumps({"p": probs[key]}), "mode": "constrained",
                            "time": round(time.time(), 3)})
    records = [_constrained_record(r, m, probs[keys[i, m.name]], client.model)
               for i, r in enumerate(rows) for m in metrics]
    dt = time.monotonic() - t0
    log.info("judge %s (constrained): %d records, %d from cache; %d probes run in %.1fs (%.3fs per probe)",
             client.model, len(records), n_hits, n_run, dt, dt / max(n_run, 1))
    return records


def _constrained_record(row: Mapping[str, Any], metric: JudgeMetric, p: Sequence[Sequence[float]],
                        judge: str) -> dict[str, Any]:
    """A record from raw next-token probabilities: argmax and probability-weighted (G-Eval) values."""
    if metric.kind == "letters":
        letters = distractors(row["options"], row["answer"])
        p_yes = {ltr: q[0] / (q[0] + q[1]) for ltr, q in zip(letters, p)}
        argmax = sorted(ltr for ltr, q in p_yes.items() if q > 0.5)
        expected = sum(p_yes.values())  # expected number of distractors rejected
        value = expected / len(letters) if letters else float("nan")
        probs, mass = p_yes, sum(sum(q) for q in p) / max(len(p), 1)
    else:
        values = COUNT_CHOICES if metric.kind == "count" else SCORE_CHOICES
        mass = sum(p[0])
        probs = {str(v): q / mass for v, q in zip(values, p[0])}
        argmax = max(values, key=lambda v: probs[str(v)])
        expected = sum(v * probs[str(v)] for v in values)
        value = metric_value(metric, expected, row)
    return {
        "id": row["id"], "model": row["model"], "sample": row["sample"], "metric": metric.name,
        "value": value, "raw_value": argmax, "status": "ok", "raw": json.dumps({metric.key: argmax}),
        "n_samples": 1, "n_parsed": 1, "error": None,
        "judge": judge, "prompt_version": metric.version, "n_words": word_count(row["response"]),
        "mode": "constrained", "expected": expected, "argmax": argmax,
        "value_argmax": metric_value(metric, argmax, row), "probs": probs, "mass": mass,
    }


# -------------------------------------------------------------------------------------------------
# Summaries and reliability
# -------------------------------------------------------------------------------------------------


def summarize_judgements(records: Sequence[Mapping[str, Any]]):
    """A DataFrame with one row per (model, metric): ``mean, std, n`` over ``ok`` records, ``n_unparseable``,
    ``n_failed``, ``higher_is_better``, ``judge``, ``mode``. Unparseable answers never enter the mean; they are
    counted. In constrained mode the mean is over probability-weighted values."""
    import pandas as pd

    cols = ["model", "metric", "mean", "std", "n", "n_unparseable", "n_failed", "higher_is_better", "judge", "mode"]
    if not records:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(list(records))
    rows = []
    for (model, metric), g in df.groupby(["model", "metric"], sort=False):
        ok = g.loc[g["status"] == "ok", "value"].astype(float)
        rows.append({"model": model, "metric": metric, "mean": ok.mean() if len(ok) else float("nan"),
                     "std": ok.std(ddof=1) if len(ok) > 1 else float("nan"), "n": int(len(ok)),
                     "n_unparseable": int((g["status"] == "unparseable").sum()),
                     "n_failed": int((g["status"] == "api_failure").sum()),
                     "higher_is_better": JUDGE_METRICS[metric].higher_is_better if metric in JUDGE_METRICS else None,
                     "judge": ",".join(sorted(set(g["judge"]))),
                     "mode": ",".join(sorted(set(g["mode"].dropna()))) if "mode" in g else ""})
    order = {m: i for i, m in enumerate(JUDGE_METRICS)}
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["model", "metric"], key=lambda s: s.map(order) if s.name == "metric" else s,
                           ignore_index=True)


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa of two binary ratings; NaN when chance agreement is 1 (both raters constant and equal)."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError(f"cohen_kappa needs two equal, non-empty rating lists (got {len(a)} and {len(b)})")
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(map(bool, a)) / n, sum(map(bool, b)) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return float("nan") if pe == 1 else (po - pe) / (1 - pe)


def _ok_values(records: Iterable[Mapping[str, Any]]) -> dict[tuple, float]:
    return {(r["id"], r["model"], r.get("sample", 0), r["metric"]): float(r["value"])
            for r in records if r["status"] == "ok" and r["value"] is not None and not math.isnan(r["value"])}


def agreement(records_a: Sequence[Mapping[str, Any]], records_b: Sequence[Mapping[str, Any]]):
    """Agreement of two judges per metric, over responses both judged ``ok``: Spearman's rho (and p), and
    Cohen's kappa and raw agreement on "at least one instance" (value > 0; not defined for the 1-5 score)."""
    import pandas as pd

    va, vb = _ok_values(records_a), _ok_values(records_b)
    rows = []
    for name in JUDGE_METRICS:
        keys = sorted(k for k in va.keys() & vb.keys() if k[3] == name)
        if not keys:
            continue
        a, b = [va[k] for k in keys], [vb[k] for k in keys]
        rho, p = spearman(a, b)
        binary = JUDGE_METRICS[name].kind != "score"
        kappa = cohen_kappa([x > 0 for x in a], [y > 0 for y in b]) if binary else float("nan")
        agree = sum((x > 0) == (y > 0) for x, y in zip(a, b)) / len(a) if binary else float("nan")
        rows.append({"metric": name, "n": len(keys), "spearman": rho, "spearman_p": p, "kappa_any": kappa,
                     "agree_any": agree})
    return pd.DataFrame(rows, columns=["metric", "n", "spearman", "spearman_p", "kappa_any", "agree_any"])


def reference_values(rows: Iterable[Mapping[str, Any]], name: str) -> dict[tuple[str, str, int], float]:
    """A judge-free metric per response, keyed like judge records by (id, model, sample): any reward of
    :mod:`clinical_r1.rewards` by name (``cross_reference``, ``consistency``, ``completion_length``...)."""
    from clinical_r1.rewards import get_reward

    fn = get_reward(name)
    norm = [normalise_row(r, i, need_answer=False) for i, r in enumerate(rows)]
    vals = fn([r["response"] for r in norm], answer=[r["answer"] for r in norm], options=[r["options"] for r in norm])
    return {(r["id"], r["model"], r["sample"]): float(v) for r, v in zip(norm, vals)}


def agreement_with_reference(records: Sequence[Mapping[str, Any]], reference: Mapping[tuple[str, str, int], float],
                             metrics: str | Sequence[str] = "all"):
    """Spearman's rho between each judge metric and a judge-free metric (see :func:`reference_values`)."""
    import pandas as pd

    vals = _ok_values(records)
    rows = []
    for m in resolve_metrics(metrics):
        keys = sorted(k for k in vals if k[3] == m.name and k[:3] in reference)
        if not keys:
            continue
        rho, p = spearman([vals[k] for k in keys], [reference[k[:3]] for k in keys])
        rows.append({"metric": m.name, "n": len(keys), "spearman": rho, "spearman_p": p})
    return pd.DataFrame(rows, columns=["metric", "n", "spearman", "spearman_p"])
