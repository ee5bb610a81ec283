"""Reward throughput: completions per second per core for each preset, latency, and the share of a CRPO step.

    python benchmarks/reward_throughput.py                         # ~1 min on one core; writes the JSON
    python benchmarks/reward_throughput.py --n 400 --tokens 1500 --step-seconds 60 --completions-per-step 64

What it measures, in ONE process (one core; the rewards are single-threaded Python + numpy):

- realistic: ``--n`` synthetic ~``--tokens``-token completions (4 characters per token, the usual English
  BPE ratio): well-formed ``<dx>``/``<conclusion>`` clinical reasoning with values and units and an
  option-by-option analysis, plus malformed variants (missing or out-of-order tags, truncated, two boxes,
  trailing text, a repetition tail, Chinese sentences, the grpo ``<think>/<answer>`` format). Each preset's
  reward functions (``get_preset(name).functions()``, called the way TRL calls them) are timed per
  completion (latency mean/p50/p95) and over the whole batch (throughput, completions/s);
- adversarial: 1 MB inputs (nested and unbalanced tags, thousands of boxes, an unclosed-brace box, a
  repetition loop, Chinese text) — latency per input, which must stay far below a step;
- the share of a CRPO step spent on rewards: ``completions_per_step × mean latency / step_seconds``.
  ``--step-seconds`` and ``--completions-per-step`` default to the latest ``crpo_step_cpu`` result (CPU demo
  recipe), else 60 s and 64 completions (8 prompts × G = 8). The target is under 1%. It also reports the
  shortest step for which the rewards stay under 1% (``min_step_seconds_for_1pct``).

It checks on the way that each preset's weighted sum equals ``clinical_r1.rewards.score`` (total) for
some completions, so it never times a reward that disagrees with the one used in training.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, latency_summary, latest_result, table, write_result  # noqa: E402

from clinical_r1.rewards import clear_caches, get_preset, score  # noqa: E402

NAME = "reward_throughput"
PRESETS = ("crpo", "grpo", "r1-medical")
CHARS_PER_TOKEN = 4  # English BPE (Qwen2.5, Llama) averages about 4 characters per token
ADVERSARIAL_BYTES = 1_000_000  # size of each adversarial input
ADVERSARIAL_BOUND_MS = 50.0  # median cold latency of any 1 MB adversarial completion, one core
DEFAULT_STEP_SECONDS = 60.0  # used when no crpo_step_cpu result exists and --step-seconds is not given
DEFAULT_COMPLETIONS_PER_STEP = 64  # 8 prompts x G = 8
TARGET_SHARE = 0.01  # rewards should take under 1% of a CRPO step

# ---------------------------------------------------------------------------------------------------
# Synthetic clinical completions
# ---------------------------------------------------------------------------------------------------

FINDINGS = [
    ("TSH", "{:.1f} mU/L", (0.1, 25)), ("free T4", "{:.2f} ng/dL", (0.3, 4)), ("blood pressure", "{}/{} mmHg", None),
    ("heart rate", "{} bpm", (45, 150)), ("temperature", "{:.1f} °C", (35.5, 40.5)),
    ("creatinine", "{:.1f} mg/dL", (0.5, 6)), ("potassium", "{:.1f} mEq/L", (2.5, 7)),
    ("sodium", "{} mEq/L", (118, 158)), ("hemoglobin", "{:.1f} g/dL", (5, 17)),
    ("leukocyte count", "{},000/mm3", (2, 30)), ("glucose", "{} mg/dL", (40, 600)),
    ("troponin I", "{:.2f} ng/mL", (0.01, 12)), ("lactate", "{:.1f} mmol/L", (0.5, 9)),
    ("oxygen saturation", "{}%", (78, 100)), ("respiratory rate", "{}/min", (10, 36)),
]
DIAGNOSES = ["primary hypothyroidism", "Graves disease", "diabetic ketoacidosis", "acute kidney injury",
             "septic shock", "pulmonary embolism", "acute pericarditis", "iron deficiency anemia",
             "hyperkalemia from ACE inhibitor use", "community-acquired pneumonia", "aortic dissection",
             "adrenal insufficiency", "thrombotic thrombocytopenic purpura", "acute pancreatitis"]
VERBS = ["suggests", "supports", "argues against", "is consistent with", "makes unlikely", "points toward",
         "is typical of", "would be unusual in", "narrows the differential to", "does not explain"]
CONNECT = ["Moreover,", "In addition,", "By contrast,", "Importantly,", "Taken together,", "However,",
           "On examination,", "The history adds that", "Laboratory testing shows that", "Finally,"]
CHINESE = "患者出现乏力、体重增加和畏寒，促甲状腺激素升高，游离甲状腺素降低，提示原发性甲状腺功能减退症。"


def _value(rng: random.Random, fmt: str, rng_range: tuple[float, float] | None) -> str:
    if rng_range is None:
        return fmt.format(rng.randint(85, 200), rng.randint(50, 120))
    lo, hi = rng_range
    v = rng.uniform(lo, hi)
    return fmt.format(int(v)) if "{}" in fmt else fmt.format(v)


def _finding(rng: random.Random) -> str:
    name, fmt, r = rng.choice(FINDINGS)
    return f"{name} {_value(rng, fmt, r)}"


def _sentence(rng: random.Random, options: Sequence[str]) -> str:
    return (f"{rng.choice(CONNECT)} the {_finding(rng)} {rng.choice(VERBS)} {rng.choice(options).lower()}, "
            f"while the {_finding(rng)} with {rng.choice(['mild', 'marked', 'new', 'progressive'])} "
            f"{rng.choice(['dyspnea', 'fatigue', 'edema', 'confusion', 'chest pain', 'weight loss'])} "
            f"{rng.choice(VERBS)} {rng.choice(DIAGNOSES)}.")


def item(rng: random.Random) -> dict[str, Any]:
    options = rng.sample(DIAGNOSES, 5)
    return {"options": options, "answer": "ABCDE"[rng.randrange(5)]}


def well_formed(rng: random.Random, it: dict[str, Any], n_chars: int, letter: str | None = None) -> str:
    """A well-formed crpo completion of about ``n_chars`` characters with a citing conclusion."""
    opts, letter = it["options"], letter or it["answer"]
    key = _finding(rng)
    head = [f"Initial impression: {opts['ABCDE'.index(letter)].lower()}. The decisive finding is the {key}."]
    analysis = [f"Option {l} ({o}): {_sentence(rng, opts)} {'It fits the picture.' if l == letter else 'Rejected.'}"
                for l, o in zip("ABCDE", opts)]
    conclusion = (f"The {key} together with the examination establishes {opts['ABCDE'.index(letter)].lower()}. "
                  f"\\boxed{{{letter}}}")
    body = head + analysis
    budget = n_chars - len(conclusion) - 40
    while sum(len(s) + 1 for s in body) < budget:
        body.insert(len(body) - len(analysis), _sentence(rng, opts))
    return f"<dx>\n{' '.join(body)}\n</dx>\n<conclusion>\n{conclusion}\n</conclusion>"


def variants(rng: random.Random, it: dict[str, Any], n_chars: int) -> list[tuple[str, str]]:
    """(kind, completion) pairs: the well-formed answer and the malformed outputs a policy produces."""
    good = well_formed(rng, it, n_chars)
    wrong = "ABCDE"[("ABCDE".index(it["answer"]) + 1) % 5]
    dx_end = good.index("</dx>")
    dx_body = good[len("<dx>\n"):dx_end]
    conc = good[good.index("<conclusion>") + len("<conclusion>\n"):good.index("</conclusion>")]
    return [
        ("well_formed_correct", good),
        ("well_formed_wrong", well_formed(rng, it, n_chars, letter=wrong)),
        ("missing_tags", good.replace("<dx>", "").replace("</dx>", "").replace("<conclusion>", "").replace("</conclusion>", "")),
        ("out_of_order", f"<conclusion>\n{conc}\n</conclusion>\n<dx>\n{dx_body}\n</dx>"),
        ("truncated", good[: int(len(good) * 0.8)]),
        ("two_boxes", good.replace("</conclusion>", f" or perhaps \\boxed{{{wrong}}}\n</conclusion>")),
        ("trailing_text", good + "\nI hope this explanation helps with your studies!"),
        ("repetition_tail", good[:dx_end] + " and the findings are consistent" * 120 + good[dx_end:]),
        ("chinese", good[:dx_end] + " " + CHINESE * 8 + good[dx_end:]),
        ("grpo_format", f"<think>\n{dx_body}\n</think>\n<answer>\n{conc}\n</answer>"),
    ]


def realistic_set(n: int, tokens: int, seed: int) -> list[dict[str, Any]]:
    """``n`` completions cycling through the variants, each with its item's gold and options."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        it = item(rng)
        for kind, text in variants(rng, it, tokens * CHARS_PER_TOKEN):
            out.append({"kind": kind, "completion": text, "answer": it["answer"], "options": it["options"]})
    return out[:n]


def adversarial_set(size: int = ADVERSARIAL_BYTES) -> list[dict[str, Any]]:
    """1 MB-class inputs built to find super-linear behaviour in parsing and the consistency scan."""
    opts = ["Graves disease", "Hashimoto thyroiditis", "Subacute thyroiditis", "Toxic adenoma"]
    reps = lambda s: (s * (size // len(s) + 1))[:size]  # noqa: E731
    cases = {
        "nested_tags": "<dx>" * (size // 8) + "x" + "</dx>" * (size // 10),
        "unbalanced_tags": reps("<dx><conclusion></dx><think><answer></conclusion>"),
        "thousands_of_boxes": reps("\\boxed{A} "),
        "unclosed_box_braces": "<dx>x</dx><conclusion>\\boxed" + "{" * (size - 40) + "</conclusion>",
        "repetition_loop": "<dx>" + reps("the patient has a fever and a cough ") + "</dx><conclusion>\\boxed{B}</conclusion>",
        "long_sentence_repeats": "<dx>" + reps("TSH is 12 mU/L in this patient. Free T4 is low. ") + "</dx><conclusion>TSH 12 mU/L \\boxed{B}</conclusion>",
        "chinese_text": "<dx>" + (CHINESE * (size // (3 * len(CHINESE)) + 1)) + "</dx><conclusion>\\boxed{B}</conclusion>",
        "one_huge_token": "<dx>" + "a" * size + "</dx><conclusion>\\boxed{B}</conclusion>",
    }
    return [{"kind": k, "completion": v, "answer": "B", "options": opts} for k, v in cases.items()]


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------


def preset_scorer(name: str) -> Callable[[list[Any], list[str], list[Sequence[str]]], list[float]]:
    """The preset's weighted sum, computed exactly as TRL does: each reward function over the batch."""
    p = get_preset(name)
    funcs, weights = p.functions(), p.weight_list()

    def run(completions: list[Any], answers: list[str], options: list[Sequence[str]]) -> list[float]:
        cols = [f(completions, answer=answers, options=options) for f in funcs]
        return [sum(w * c[i] for w, c in zip(weights, cols)) for i in range(len(completions))]

    return run


def check_agreement(items: Sequence[dict[str, Any]], presets: Sequence[str]) -> None:
    """Raise if a preset's weighted sum differs from ``rewards.score`` total (what is timed is what trains)."""
    for name in presets:
        run = preset_scorer(name)
        for it in items:
            got = run([it["completion"]], [it["answer"]], [it["options"]])[0]
            want = score(it["completion"], it["answer"], it["options"], preset=name)["total"]
            if abs(got - want) > 1e-9:
                raise AssertionError(f"preset {name}: weighted functions give {got}, score() gives {want} "
                                     f"for a {it['kind']!r} completion")


def time_items(run: Callable, items: Sequence[dict[str, Any]], repeats: int = 1,
               reduce: Callable[[list[float]], float] = min) -> list[float]:
    """Per-item latency in seconds, cold (caches cleared): ``reduce`` (min, or the median) of ``repeats``."""
    out = []
    for it in items:
        times = []
        for _ in range(repeats):
            clear_caches()  # cold, as every new completion is: the memoised parse is shared within a step only
            t0 = time.perf_counter()
            run([it["completion"]], [it["answer"]], [it["options"]])
            times.append(time.perf_counter() - t0)
        out.append(reduce(times))
    return out


def time_batch(run: Callable, items: Sequence[dict[str, Any]], repeats: int) -> float:
    """Best wall time of scoring all ``items`` as one batch."""
    comps = [it["completion"] for it in items]
    answers = [it["answer"] for it in items]
    options = [it["options"] for it in items]
    best = float("inf")
    for _ in range(repeats):
        clear_caches()
        t0 = time.perf_counter()
        run(comps, answers, options)
        best = min(best, time.perf_counter() - t0)
    return best


def step_defaults(step_seconds: float | None, per_step: int | None) -> tuple[float, int, str]:
    """Step time and completions per step: the arguments, else the latest CPU step benchmark, else defaults."""
    latest = latest_result("crpo_step_cpu")
    src = "arguments"
    if latest is not None and (step_seconds is None or per_step is None):
        path, res = latest
        summary = res.get("summary", {})
        if step_seconds is None and summary.get("step_seconds_mean"):
            step_seconds, src = float(summary["step_seconds_mean"]), f"{path.name} (CPU demo recipe)"
        if per_step is None and summary.get("completions_per_step"):
            per_step = int(summary["completions_per_step"])
    if step_seconds is None:
        step_seconds, src = DEFAULT_STEP_SECONDS, f"default {DEFAULT_STEP_SECONDS:g} s (no crpo_step_cpu result)"
    return step_seconds, per_step or DEFAULT_COMPLETIONS_PER_STEP, src


def run_benchmark(n: int, tokens: int, seed: int, repeats: int, presets: Sequence[str], adversarial_bytes: int,
                  step_seconds: float | None, per_step: int | None, adversarial_repeats: int = 7) -> dict[str, Any]:
    items = realistic_set(n, tokens, seed)
    adv = adversarial_set(adversarial_bytes)
    check_agreement(items[:20] + adv[:2], presets)
    step_s, per_step, step_src = step_defaults(step_seconds, per_step)
    chars = [len(it["completion"]) for it in items]
    res: dict[str, Any] = {
        "settings": {"n": n, "tokens_target": tokens, "chars_per_token": CHARS_PER_TOKEN, "seed": seed,
                     "repeats": repeats, "adversarial_bytes": adversarial_bytes, "processes": 1,
                     "adversarial_repeats": adversarial_repeats, "adversarial_statistic": "median, cold",
                     "mean_chars": sum(chars) / len(chars),
                     "mean_words": sum(len(it["completion"].split()) for it in items) / len(items),
                     "kinds": sorted({it["kind"] for it in items})},
        "step": {"step_seconds": step_s, "completions_per_step": per_step, "source": step_src,
                 "target_share": TARGET_SHARE},
        "presets": {},
    }
    for name in presets:
        run = preset_scorer(name)
        time_batch(run, items[:5], 1)  # warm-up (regex compilation, caches)
        lat = latency_summary(time_items(run, items))
        batch_s = time_batch(run, items, repeats)
        adv_lat = {it["kind"]: time_items(run, [it], repeats=adversarial_repeats, reduce=statistics.median)[0] * 1e3
                   for it in adv}
        reward_step_s = per_step * lat["mean_ms"] / 1e3
        res["presets"][name] = {
            "realistic": {**lat, "batch_seconds": batch_s, "completions_per_second_per_core": n / batch_s},
            "adversarial_ms": adv_lat,
            "adversarial_max_ms": max(adv_lat.values()),
            "adversarial_bound_ms": ADVERSARIAL_BOUND_MS,
            "adversarial_within_bound": max(adv_lat.values()) <= ADVERSARIAL_BOUND_MS,
            "reward_seconds_per_step": reward_step_s,
            "share_of_step": reward_step_s / step_s,
            "min_step_seconds_for_1pct": reward_step_s / TARGET_SHARE,
            "meets_target": reward_step_s / step_s < TARGET_SHARE,
        }
    return res


def print_tables(res: dict[str, Any]) -> None:
    s, st = res["settings"], res["step"]
    print(f"\nrealistic: {s['n']} completions of ~{s['tokens_target']} tokens ({s['mean_chars']:.0f} chars, "
          f"{s['mean_words']:.0f} words), one core")
    rows = [(n, p["realistic"]["completions_per_second_per_core"], p["realistic"]["mean_ms"], p["realistic"]["p50_ms"],
             p["realistic"]["p95_ms"], p["adversarial_max_ms"], f"{100 * p['share_of_step']:.3f}%",
             p["min_step_seconds_for_1pct"], "yes" if p["meets_target"] else "NO")
            for n, p in res["presets"].items()]
    print(table(rows, ["preset", "compl/s/core", "mean ms", "p50 ms", "p95 ms", "adv max ms", "share of step",
                       "min step s (1%)", "< 1%"]))
    print(f"share of step: {st['completions_per_step']} completions per step, step {st['step_seconds']:.3g} s "
          f"from {st['source']}")
    kinds = list(next(iter(res["presets"].values()))["adversarial_ms"])
    print(f"\nadversarial inputs ({s['adversarial_bytes'] / 1e6:g} MB class), median of {s['adversarial_repeats']} "
          f"cold calls, ms (bound {ADVERSARIAL_BOUND_MS:g} ms):")
    print(table([(k, *(p["adversarial_ms"][k] for p in res["presets"].values())) for k in kinds],
                ["input", *res["presets"]]))


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="realistic completions per preset")
    ap.add_argument("--tokens", type=int, default=1500, help="target completion length in tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="batch and adversarial timings keep the best of this many")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--adversarial-bytes", type=int, default=ADVERSARIAL_BYTES)
    ap.add_argument("--adversarial-repeats", type=int, default=7, help="adversarial latency: the median of this many")
    ap.add_argument("--step-seconds", type=float, default=None,
                    help="CRPO step time (default: the latest crpo_step_cpu result, else 60)")
    ap.add_argument("--completions-per-step", type=int, default=None,
                    help="completions scored per step (default: the latest crpo_step_cpu result, else 64)")
    ap.add_argument("--results-dir", default=None, help="where to write the JSON (default benchmarks/results)")
    a = ap.parse_args(argv)
    for name in a.presets:
        get_preset(name)  # unknown names fail before any timing
    res = run_benchmark(a.n, a.tokens, a.seed, a.repeats, a.presets, a.adversarial_bytes, a.step_seconds,
                        a.completions_per_step, a.adversarial_repeats)
    payload = {"name": NAME, "environment": environment(), **res}
    path = write_result(NAME, payload, Path(a.results_dir) if a.results_dir else None)
    print_tables(res)
    print(f"\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
