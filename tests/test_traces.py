"""Public DeepSeek-R1 traces (MedThoughts-8K schema) as cold-start traces: the import through ``datasets``,
matching, every drop reason counted exactly, the schema errors, the command line, and SFT on the result through
notebooks 01 -> 02 -> 03 on the embedded model. Every file here is written by the test (5-option MedQA rows)."""

import json
from pathlib import Path

import pytest

from clinical_r1.data import load_benchmark, to_records
from clinical_r1.errors import DataError
from clinical_r1.files import read_json, read_jsonl
from clinical_r1.traces import DROP_REASONS, box_committed_answer, import_traces, is_mixed_script, load_public_traces

REPO = Path(__file__).resolve().parents[1]
MODEL = "embedded:smollm2-135m-instruct"
N_CORRECT = 10
N_BOXLESS = 6  # box-less answers that commit to the gold option: kept, boxed by us
MAX_LENGTH = 640  # the CPU demo's SFT max_length; the "too long" trace is ~3,000 tokens


def _question(i: int, kind: str = "train") -> str:
    return (f"A {30 + i}-year-old patient ({kind} case {i}) presents with fever for {i + 2} days and a heart rate of "
            f"{90 + i}/min. Which of the following is the most likely diagnosis?")


def _options(i: int) -> dict[str, str]:
    return {k: f"Diagnosis {k.lower()}{i}" for k in "ABCDE"}


def _medqa_row(i: int, kind: str = "train") -> dict:
    """A 5-option jind11-style MedQA row (the US release the authors used)."""
    return {"question": _question(i, kind), "options": _options(i), "answer_idx": "ABCDE"[i % 5],
            "answer": _options(i)["ABCDE"[i % 5]], "meta_info": "step1"}


def _trace(i: int, qid: str, kind: str = "train", *, think: str | None = None, answer: str | None = None,
           letter: str | None = None) -> dict:
    """One row in MedThoughts-8K's documented schema."""
    gold = "ABCDE"[i % 5]
    letter = letter or gold
    return {"question_id": qid, "question": _question(i, kind), "options": _options(i), "answer_idx": gold,
            "ds_think": think if think is not None else
            f"Fever with tachycardia at {90 + i}/min points to diagnosis {letter.lower()}{i}; the others do not fit.",
            "ds_answer": answer if answer is not None else
            f"The findings fit diagnosis {letter.lower()}{i}.\n\n**Answer:** \\boxed{{{letter}}}",
            "source": "MedQA/US/train"}


@pytest.fixture()
def fixture_files(tmp_path):
    """Train items, an evaluation set and public traces: N_CORRECT correct rows plus one row per drop reason."""
    n = N_CORRECT
    train = [_medqa_row(i) for i in range(n + 6 + len(BOXLESS))]  # n correct + wrong, truncated, mixed, long,
    # contaminated, gold, then one item per box-less answer
    leak = n + 4
    evalset = [dict(_medqa_row(leak), question=_question(leak).upper())] + [_medqa_row(i, "test") for i in range(3)]
    traces = [_trace(i, f"t{i}") for i in range(n)]
    wrong = "ABCDE"[(n + 1) % 5]
    traces += [
        _trace(n, "wrong", letter=wrong),                                              # R1 wrong by our parse
        _trace(n + 1, "truncated", answer=""),                                         # no final answer
        _trace(n + 2, "mixed", think="Fever and tachycardia. 这提示感染. So diagnosis fits."),  # mixed script
        _trace(n + 3, "long", think=" ".join(["Fever and tachycardia considered again."] * 600)),
        _trace(leak, "contaminated"),                                                  # stem in the eval set
        dict(_trace(n + 5, "gold"), answer_idx="ABCDE"[(n + 6) % 5]),                  # gold text disagrees
        _trace(0, "dup"),                                                              # second trace of item 0
        _trace(99, "unmatched", kind="other"),                                         # question not in train
    ]
    traces += [_trace(n + 6 + k, name, answer=_boxless(shape, n + 6 + k)) for k, (name, shape) in enumerate(BOXLESS)]
    paths = {}
    for name, rows in (("train", train), ("test", evalset), ("traces", traces)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


# R1's final answers as the API returns them for plain MedQA questions: no box (name, shape; {L}/{T} is the gold
# option's letter/text, {W}/{V} another option's)
BOXLESS = [
    ("bl_answer", "**Answer:** {L}. {T}\n\n**Explanation:**\n- **{L}. {T}**: fits the fever.\n"
                  "- **{W}. {V}**: does not explain the tachycardia."),
    ("bl_correct_is", "The correct answer is **{L}. {T}**.\n\n{V} would not cause a heart rate this high."),
    ("bl_letter_first", "{L}. {T}\n\nFever with tachycardia fits it best; {V} does not."),
    ("bl_bold_letter", "The most likely diagnosis is **{L}.** {T}, given the fever.\n\n**Why not {W}?** No rash."),
    ("bl_final_heading", "Fever and tachycardia for days.\n\n**Final Answer**\n\n{L}"),
    ("bl_text_only", "The most likely diagnosis is **{T}**.\n\nThe fever and tachycardia point to it."),
    ("bl_ambiguous", "**Answer:** {L}. {T} or {W}. {V}\n\nBoth fit the fever."),      # two options: not guessed
    ("bl_none", "Fever with tachycardia suggests an infection; more history is needed."),  # no option named
    ("bl_wrong", "**Answer:** {W}. {V}\n\n**Explanation:** the tachycardia."),          # commits to a wrong one
]


def _boxless(shape: str, i: int) -> str:
    gold, other = "ABCDE"[i % 5], "ABCDE"[(i + 1) % 5]
    return shape.format(L=gold, T=_options(i)[gold], W=other, V=_options(i)[other])


EXPECTED = {"unmatched": 1, "gold_mismatch": 1, "truncated": 1, "no_committed_answer": 2, "wrong_answer": 2,
            "non_english": 1, "contaminated": 1, "duplicate": 1, "too_long": 1}
N_TRACES = N_CORRECT + 8 + len(BOXLESS)
N_ITEMS = N_CORRECT + 6 + len(BOXLESS)


def test_each_drop_reason_counted_exactly(fixture_files):
    from clinical_r1.study import trace_cap

    items = to_records(load_benchmark("medqa", path=fixture_files["train"], split="train"))
    evals = {"medqa": load_benchmark("medqa", path=fixture_files["test"])}
    traces = load_public_traces(fixture_files["traces"])  # load_dataset("json"), as for the hub file
    assert len(traces) == N_TRACES and traces.column_names[:3] == ["question_id", "question", "options"]
    kept, report = import_traces(traces, items, evals, *trace_cap(MODEL, MAX_LENGTH), source=str(fixture_files["traces"]))
    assert report["dropped"] == {r: EXPECTED.get(r, 0) for r in DROP_REASONS}
    assert {r: ids for r, ids in report["dropped_ids"].items() if ids} == {
        "unmatched": ["unmatched"], "gold_mismatch": ["gold"], "truncated": ["truncated"],
        "no_committed_answer": ["bl_ambiguous", "bl_none"], "wrong_answer": ["wrong", "bl_wrong"],
        "non_english": ["mixed"], "contaminated": ["contaminated"], "duplicate": ["dup"], "too_long": ["long"]}
    assert report["kept"] == len(kept) == N_CORRECT + N_BOXLESS and report["n_traces"] == N_TRACES
    assert report["matched"] == N_ITEMS and report["match_rate"] == 1.0  # every item found its trace
    assert report["decontamination"]["pairs"][0]["normalised"] == 1
    k = kept[3]  # distill's schema, the item's fields, R1's reasoning in <dx>, its answer cut after the box
    assert set(k) == {"id", "question", "options", "answer", "dx", "conclusion", "teacher", "source"}
    assert k["id"] == "medqa-4" and k["answer"] == "D" and len(k["options"]) == 5
    assert k["dx"].startswith("Fever with tachycardia") and k["conclusion"].endswith("\\boxed{D}")
    assert "**Answer:**" in k["conclusion"]
    # the box-less answers: boxed at the gold letter, cut after the statement that commits to it
    conclusions = {k["id"]: k["conclusion"] for k in kept[N_CORRECT:]}
    assert conclusions == {
        "medqa-17": "**Answer:** B. Diagnosis b16 \\boxed{B}",
        "medqa-18": "The correct answer is **C. Diagnosis c17**. \\boxed{C}",
        "medqa-19": "D. Diagnosis d18 \\boxed{D}",
        "medqa-20": "The most likely diagnosis is **E.** Diagnosis e19, given the fever. \\boxed{E}",
        "medqa-21": "Fever and tachycardia for days.\n\n**Final Answer**\n\nA \\boxed{A}",
        "medqa-22": "The most likely diagnosis is **Diagnosis b21**. \\boxed{B}",
    }


def test_box_committed_answer_boxes_in_the_items_lettering():
    """R1 saw the 5-option lettering; the box holds the same option's letter in the item's (here 4 options,
    another order), found by its text. A boxed answer is left to distill's checks; an ambiguous one is None."""
    r1 = ["Ampicillin", "Ceftriaxone", "Nitrofurantoin", "Doxycycline", "Cephalexin"]
    ours = ["Nitrofurantoin", "Ampicillin", "Ceftriaxone", "Doxycycline"]
    answer = "**Answer:** C. Nitrofurantoin\n\n**Explanation:** - **A. Ampicillin**: resistance is common."
    assert box_committed_answer(answer, r1, ours) == "**Answer:** C. Nitrofurantoin \\boxed{A}"
    assert box_committed_answer("So \\boxed{B}", r1, ours) == "So \\boxed{B}"
    assert box_committed_answer("**Answer:** C or A", r1, ours) is None


def test_without_a_cap_the_long_trace_is_kept_and_a_half_cap_is_refused(fixture_files):
    items = to_records(load_benchmark("medqa", path=fixture_files["train"], split="train"))
    kept, report = import_traces(load_public_traces(fixture_files["traces"]), items)
    assert report["dropped"]["too_long"] == 0 and report["dropped"]["contaminated"] == 0  # no eval sets given
    assert report["kept"] == N_CORRECT + N_BOXLESS + 2
    with pytest.raises(DataError, match="needs both a tokenizer and max_length"):
        import_traces(load_public_traces(fixture_files["traces"]), items, max_length=100)


def test_match_rate_below_the_threshold_fails_loudly(fixture_files):
    """Items that are not the traces' questions (here: the 4-option variant's ids on other stems) leave most
    of the smaller side unmatched: a clear error, not a near-empty SFT set."""
    items = to_records(load_benchmark("medqa", path=fixture_files["train"], split="train"))
    others = [dict(it, id=f"x{i}", question=f"Another question {i}?") for i, it in enumerate(items)]
    with pytest.raises(DataError, match=r"only 3 of min\(27 traces, 25 items\) matched .*12\.0% < 90%"):
        import_traces(load_public_traces(fixture_files["traces"]), items[:3] + others[3:])


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.pop("ds_think"), r"missing column\(s\) \['ds_think'\]"),
    (lambda r: r.update(answer_idx="F"), r"row 2: field 'answer_idx': 'F' is not one of the option letters ABCDE"),
    (lambda r: r.update(question=""), r"row 2: field 'question': expected non-empty str"),
])
def test_wrong_schema_is_a_named_error(tmp_path, mutate, match):
    rows = [_trace(0, "a"), _trace(1, "b")]
    mutate(rows[1]) if "missing" not in match else [mutate(r) for r in rows]
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=match):
        load_public_traces(p)


def test_unknown_source_is_refused_before_any_download(tmp_path):
    with pytest.raises(DataError, match="no such file, and not a known hub dataset"):
        load_public_traces(tmp_path / "missing.jsonl")


def test_mixed_script_keeps_greek_and_latin():
    assert not is_mixed_script("β-hCG rises; α-blocker first; café")
    assert is_mixed_script("fever 发热") and is_mixed_script("лихорадка")


def test_cli_traces_writes_distill_schema_and_report(fixture_files, tmp_path):
    from clinical_r1.cli import main

    items = tmp_path / "items.jsonl"
    from clinical_r1.files import write_jsonl

    write_jsonl(to_records(load_benchmark("medqa", path=fixture_files["train"], split="train")), items)
    out = tmp_path / "traces_sft.jsonl"
    code = main(["traces", "--from", str(fixture_files["traces"]), "--items", str(items), "--out", str(out),
                 "--eval", f"medqa:{fixture_files['test']}"])
    assert code == 0
    report = read_json(f"{out}.report.json")
    assert report["kept"] == len(read_jsonl(out)) == N_CORRECT + N_BOXLESS + 1 and report["dropped"]["contaminated"] == 1
    assert main(["traces", "--from", str(tmp_path / "nope.jsonl"), "--items", str(items), "--out", str(out),
                 "--eval", f"medqa:{fixture_files['test']}"]) == 2


@pytest.mark.slow
def test_notebooks_01_02_03_train_sft_on_imported_traces(fixture_files, tmp_path):
    """The notebook path: 01 draws the SFT half and dev from questions with a kept trace, 02 imports them
    (teacher file:<path>, the same code as hub:<id>), 03 trains one SFT step on them with the embedded model."""
    from clinical_r1.pipeline import load_recipe, run_recipe

    train = [json.loads(ln) for ln in fixture_files["train"].read_text().splitlines()]
    clean = tmp_path / "train_clean.jsonl"  # the split refuses a training set that overlaps the evaluation set
    clean.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(train) if i != N_CORRECT + 4))
    recipe = tmp_path / "imported.yaml"
    recipe.write_text(f"""
name: imported
out: {tmp_path / "run"}
common: {{out_dir: "{{out}}", seed: 0, model: "{MODEL}", splits_dir: "{{recipe_out}}/data", trace_max_length: {MAX_LENGTH}}}
stages:
  "01": {{train_benchmark: medqa, train_path: "{clean}", split_sizes: {{sft: 6, rl: 16, dev: 2}},
         eval_benchmarks: {{medqa: "{fixture_files['test']}"}}, eval_limit: null, eval_optional: false,
         sft_traces: "file:{fixture_files['traces']}"}}
  "02": {{teacher: "file:{fixture_files['traces']}", distill_limit: null}}
  "03": {{sft_config: "{REPO / 'configs' / 'cpu_demo_sft.yaml'}",
         sft_overrides: {{"trainer.max_steps": 1, "trainer.eval_steps": 1, "trainer.save_steps": 1}}}}
""")
    out = tmp_path / "run"
    run_recipe(load_recipe(recipe), out=out, progress=False)
    data = out / "data"
    pool = read_json(data / "public_traces_report.json")
    assert pool["kept"] == N_CORRECT + N_BOXLESS and pool["dropped"]["unmatched"] == 2 and pool["dropped"]["too_long"] == 1
    manifest = read_json(data / "manifest.json")
    assert manifest["sft_from"] == N_CORRECT + N_BOXLESS and manifest["train"]["sft_traces"].startswith("file:")
    sft_ids = {r["id"] for r in read_jsonl(data / "sft.jsonl")}
    rl_ids = {r["id"] for r in read_jsonl(data / "rl.jsonl")}
    boxless_kept = range(N_CORRECT + 6, N_CORRECT + 6 + N_BOXLESS)
    kept_ids = {f"medqa-{i + 1}" for i in [*range(N_CORRECT), *boxless_kept]}
    assert sft_ids <= kept_ids and not sft_ids & rl_ids and "medqa-11" in rl_ids  # R1's wrong one goes to RL
    reports = read_json(data / "traces_report.json")
    assert reports["sft"]["kept"] == 6 and reports["dev"]["kept"] == 2 and reports["sft"]["match_rate"] == 1.0
    assert {r["id"] for r in read_jsonl(data / "traces_sft.jsonl")} == sft_ids
    assert (out / "sft" / "adapter" / "adapter_config.json").is_file()
    assert read_json(out / "sft" / "run_info.json")
