"""Loaders on the real benchmark slices and on hub-schema fixtures; bad input; the split; decontamination."""

import json
from pathlib import Path

import pytest

from clinical_r1.data import (COLUMNS, ContaminationError, DataError, SplitSizes, decontamination_report,
                              load_benchmark, load_split, make_splits, normalise_text)
from clinical_r1.files import read_jsonl, write_jsonl

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
needs_bench = pytest.mark.skipif(not BENCH.exists(), reason="../shared/benchmarks not present")

FILES = {
    "medqa4": "medqa_usmle4_test_sample.jsonl",
    "medmcqa": "medmcqa_dev_sample.jsonl",
    "medxpertqa": "medxpertqa_text_reasoning_test_sample.jsonl",
    "pubmedqa": "pubmedqa_labeled_test_sample.jsonl",
}


def write(tmp_path, rows, name="f.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


@needs_bench
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("form", ["", "raw/"])
def test_real_samples(name, form):
    ds, report = load_benchmark(name, path=BENCH / form / FILES[name], strict=False)
    assert list(ds.column_names) == list(COLUMNS)
    assert report.total == 500 and report.kept == len(ds) == 500 and not report.skipped
    assert len(load_benchmark(name, path=BENCH / form / FILES[name])) == 500  # default arguments: every row
    for r in ds.select(range(50)):
        assert r["answer"] in "ABCDEFGHIJ"[: len(r["options"])]
        assert r["question"] and all(r["options"])
    if name == "medxpertqa":
        assert all(len(r["options"]) == 10 for r in ds)
        assert not any("Answer Choices:" in r["question"] for r in ds)
    if name == "medqa4" and form == "raw/":
        assert set(ds["subgroup"]) == {"step1", "step2&3"}
    if name == "pubmedqa":
        assert ds[0]["options"] == ["yes", "no", "maybe"]


@needs_bench
@pytest.mark.parametrize("name,rows", [("medmcqa", [108, 140, 210]), ("medxpertqa", [270])])
def test_real_duplicate_options_load_flagged_and_logged_once(name, rows, caplog):
    """Answerable items whose options repeat a text count in the published denominators: they load by
    default, are listed in the report and logged once each."""
    with caplog.at_level("WARNING", logger="clinical_r1.data"):
        ds, report = load_benchmark(name, path=BENCH / FILES[name], with_report=True)
    assert len(ds) == 500 and report.kept == 500 and not report.skipped
    assert [f["row"] for f in report.flagged] == rows and {f["field"] for f in report.flagged} == {"options"}
    assert all("duplicate options" in f["note"] for f in report.flagged)
    logged = [r.getMessage() for r in caplog.records if "duplicate options" in r.getMessage()]
    assert len(logged) == len(rows) and all(f"row {r} " in m for r, m in zip(rows, logged))
    flagged = ds.filter(lambda r: r["id"] in {f["id"] for f in report.flagged})
    assert all(r["answer"] in "ABCDEFGHIJ"[: len(r["options"])] for r in flagged)


def test_odd_but_answerable_rows_load_with_a_note(tmp_path):
    rows = [{"id": "0", "question": "q", "options": ["a", "a "], "answer": "A"},
            {"id": "1", "question": "q", "options": ["a", "b"], "answer": "B", "explanation": ["x", 1]},
            {"id": "2", "question": "q", "options": ["a", "b"], "answer": "B", "subgroup": 7}]
    ds, report = load_benchmark("jsonl", path=write(tmp_path, rows), with_report=True)
    assert len(ds) == 3 and [(f["row"], f["field"]) for f in report.flagged] == [(1, "options"), (2, "explanation"),
                                                                                  (3, "subgroup")]
    assert ds[1]["explanation"] == '["x", 1]' and ds[2]["subgroup"] == "7"
    medqa = {"question": "q?", "options": {"A": "x", "B": "y", "C": "z", "D": "w"}, "answer_idx": "B",
             "answer": "something else"}
    ds, report = load_benchmark("medqa4", path=write(tmp_path, [medqa], "m.jsonl"), with_report=True)
    assert ds[0]["answer"] == "B" and report.flagged[0]["field"] == "answer"


def test_hub_schema_medqa_5_options_jind11(tmp_path):
    row = {"question": "Q stem?", "answer": "Third", "options": {"A": "First", "B": "Second", "C": "Third", "D": "4th",
                                                                 "E": "5th"}, "meta_info": "step2&3", "answer_idx": "C"}
    ds = load_benchmark("medqa", path=write(tmp_path, [row]))
    assert ds[0]["options"] == ["First", "Second", "Third", "4th", "5th"] and ds[0]["answer"] == "C"
    assert ds[0]["subgroup"] == "step2&3" and json.loads(ds[0]["meta"])["meta_info"] == "step2&3"


def test_medqa_variants_refuse_the_other_option_count(tmp_path):
    """``medqa`` is the 5-option release (the paper's), ``medqa4`` the 4-option one: a file of the other kind is
    an error naming the row, the field and the variant to use, never a silently mixed benchmark."""
    four = {"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "A"}
    five = {"question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}, "answer_idx": "E"}
    with pytest.raises(DataError, match=r"row 1: field 'options': 4 options, but medqa is the 5-option MedQA "
                                        r"release; load this file as medqa4"):
        load_benchmark("medqa", path=write(tmp_path, [four]))
    with pytest.raises(DataError, match=r"5 options, but medqa4 is the 4-option MedQA release; load this file as medqa$"):
        load_benchmark("medqa4", path=write(tmp_path, [five]))
    assert load_benchmark("medqa4", path=write(tmp_path, [four]))[0]["id"] == "medqa4-1"
    assert load_benchmark("medqa", path=write(tmp_path, [five]))[0]["id"] == "medqa-1"


def test_hub_schema_medqa_bigbio_source(tmp_path):
    """bigbio/med_qa ``med_qa_en_source`` (the hub copy of ``medqa``): options as a list of key/value pairs."""
    row = {"meta_info": "step1", "question": "Stem?", "answer_idx": "D", "answer": "Dd",
           "options": [{"key": k, "value": k * 2} for k in "ABCDE"]}
    r = load_benchmark("medqa", path=write(tmp_path, [row]))[0]
    assert r["options"] == ["AA", "BB", "CC", "DD", "EE"] and r["answer"] == "D" and r["subgroup"] == "step1"


def test_hub_copies_of_the_two_medqa_variants():
    from clinical_r1.data import EVAL_SPLITS, HUB_IDS, HUB_PARQUET, PUBLISHED_SIZES

    assert HUB_IDS["medqa"][0] == "bigbio/med_qa" and HUB_PARQUET["medqa"] == ("refs/convert/parquet", "med_qa_en_source")
    assert HUB_IDS["medqa4"][0] == "GBaker/MedQA-USMLE-4-options"
    assert PUBLISHED_SIZES["medqa"] == PUBLISHED_SIZES["medqa4"] == 1273 and EVAL_SPLITS["medqa4"] == "test"


@pytest.mark.parametrize("cop,base,letter", [(0, None, "A"), (2, 0, "C"), (3, 1, "C"), (4, None, "D")])
def test_hub_schema_medmcqa_cop(tmp_path, cop, base, letter):
    row = {"id": "x1", "question": "Which nerve?", "opa": "Ulnar", "opb": "Radial", "opc": "Median", "opd": "Axillary",
           "cop": cop, "choice_type": "single", "exp": "because", "subject_name": "Anatomy", "topic_name": "Arm"}
    ds = load_benchmark("medmcqa", path=write(tmp_path, [row]), cop_base=base)
    assert ds[0]["answer"] == letter and ds[0]["subgroup"] == "Anatomy" and ds[0]["explanation"] == "because"


def test_medmcqa_ambiguous_cop_base_and_empty_option(tmp_path):
    row = {"id": "x1", "question": "Which nerve?", "opa": "Ulnar", "opb": "Radial", "opc": "Median", "opd": "Axillary",
           "cop": 2}
    with pytest.raises(DataError, match="field 'cop': cop_base unknown"):
        load_benchmark("medmcqa", path=write(tmp_path, [row]))
    bad = dict(row, id="x2", opc="")
    ds, report = load_benchmark("medmcqa", path=write(tmp_path, [row, bad]), cop_base=1, strict=False)
    assert len(ds) == 1 and report.skipped == [{"row": 2, "field": "opa..opd", "reason": "option C is empty"}]


def test_hub_schema_medxpertqa(tmp_path):
    opts = {k: f"opt {k}" for k in "ABCDEFGHIJ"}
    row = {"id": "Text-7", "question": "Stem here.\nAnswer Choices: (A) opt A (B) opt B (C) ...", "options": opts,
           "label": "H", "medical_task": "Diagnosis", "body_system": "Cardiovascular", "question_type": "Reasoning"}
    ds = load_benchmark("medxpertqa", path=write(tmp_path, [row]))
    r = ds[0]
    assert r["question"] == "Stem here." and r["answer"] == "H" and r["subgroup"] == "Cardiovascular"
    assert json.loads(r["meta"]) == {"medical_task": "Diagnosis", "question_type": "Reasoning"}


def test_hub_schema_pubmedqa(tmp_path):
    row = {"pubid": 123, "question": "Does X help?", "context": {"contexts": ["Background.", "Results."]},
           "long_answer": "It does.", "final_decision": "maybe"}
    r = load_benchmark("pubmedqa", path=write(tmp_path, [row]))[0]
    assert r["id"] == "pubmedqa-123" and r["answer"] == "C" and r["question"].endswith("Does X help?")


BAD = [
    ({"id": "1", "options": ["a", "b"], "answer": "A"}, "question", "missing field"),
    ({"id": "1", "question": "  ", "options": ["a", "b"], "answer": "A"}, "question", "empty text"),
    ({"id": "1", "question": "q", "options": ["a", "b"], "answer": "C"}, "answer", "not among the 2 options"),
    ({"id": "1", "question": "q", "options": ["a", ""], "answer": "A"}, "options", "option B is empty"),
    ({"id": "1", "question": "q", "options": "a,b", "answer": "A"}, "options", "expected a dict of letters or a list"),
    ({"id": "1", "question": 5, "options": ["a", "b"], "answer": "A"}, "question", "expected a string"),
    ({"id": "1", "question": "q", "options": ["a", "b"], "answer": 1}, "answer", "expected a letter"),
    ({"id": "1", "question": "q", "options": {"A": "a", "C": "c"}, "answer": "A"}, "options", "not A.. in sequence"),
    ([1, 2], "row", "expected a JSON object"),
]


@pytest.mark.parametrize("row,field,reason", BAD)
def test_bad_rows_name_file_row_field(tmp_path, row, field, reason):
    good = {"id": "0", "question": "q", "options": ["a", "b"], "answer": "B"}
    path = write(tmp_path, [good, row])
    with pytest.raises(DataError) as e:
        load_benchmark("jsonl", path=path)
    assert str(path) in str(e.value) and "row 2" in str(e.value) and f"field '{field}'" in str(e.value)
    assert reason in str(e.value)
    ds, report = load_benchmark("jsonl", path=path, strict=False)
    assert len(ds) == 1 and report.n_skipped == 1 and report.skipped[0]["field"] == field


def test_undecodable_bytes_and_bad_json_and_duplicate_ids(tmp_path):
    p = tmp_path / "b.jsonl"
    good = json.dumps({"id": "0", "question": "q", "options": ["a", "b"], "answer": "B"}).encode()
    p.write_bytes(good + b"\n" + b'{"id": "1", "question": "caf\xe9"}\n' + b"{not json\n" + good + b"\n")
    with pytest.raises(DataError, match=r"row 2: field 'bytes': not valid UTF-8"):
        load_benchmark("jsonl", path=p)
    ds, report = load_benchmark("jsonl", path=p, strict=False)
    assert len(ds) == 1
    assert [(s["row"], s["field"]) for s in report.skipped] == [(2, "bytes"), (3, "json"), (4, "id")]


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'medqa2'"):
        load_benchmark("medqa2", path=tmp_path / "x.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_benchmark("medqa", path=tmp_path / "x.jsonl")


def test_write_jsonl_is_atomic(tmp_path):
    out = tmp_path / "o.jsonl"
    write_jsonl([{"a": 1}], out)

    def rows():
        yield {"a": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(rows(), out)
    assert read_jsonl(out) == [{"a": 1}] and [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]


def _items(n, prefix="q"):
    return [{"id": f"{prefix}{i}", "question": f"Case {prefix} number {i}: a patient with finding {i}.",
             "options": ["x", "y", "z", "w"], "answer": "ABCD"[i % 4]} for i in range(n)]


def test_split_is_seeded_disjoint_and_manifested(tmp_path):
    ds = load_benchmark("jsonl", path=write(tmp_path, _items(40)))
    m1 = make_splits(ds, tmp_path / "s1", SplitSizes(sft=15, rl=15, dev=5), seed=3)
    m2 = make_splits(ds, tmp_path / "s2", SplitSizes(sft=15, rl=15, dev=5), seed=3)
    m3 = make_splits(ds, tmp_path / "s3", SplitSizes(sft=15, rl=15, dev=5), seed=4)
    assert {k: v["sha256"] for k, v in m1["files"].items()} == {k: v["sha256"] for k, v in m2["files"].items()}
    assert m1["files"]["sft"]["sha256"] != m3["files"]["sft"]["sha256"]
    ids = {n: set(load_split(tmp_path / "s1", n)["id"]) for n in ("sft", "rl", "dev")}
    assert [len(v) for v in ids.values()] == [15, 15, 5]
    m4 = make_splits(ds, tmp_path / "s4", SplitSizes(sft=15, rl=15, dev=5, test=5), seed=3)
    test_ids = set(load_split(tmp_path / "s4", "test")["id"])
    assert m4["sizes"]["test"] == 5
    assert len(test_ids) == 5 and not test_ids & set(load_split(tmp_path / "s4", "sft")["id"])
    assert not (ids["sft"] & ids["rl"]) and not (ids["sft"] & ids["dev"]) and not (ids["rl"] & ids["dev"])
    assert m1["seed"] == 3 and m1["decontamination"]["overlap"] == 0


def test_split_fails_on_contamination_unless_allowed(tmp_path):
    train = _items(30)
    leaked = dict(train[0], id="test-0", question=train[0]["question"].upper().replace(":", " ;"))
    ds = load_benchmark("jsonl", path=write(tmp_path, train))
    ev = load_benchmark("jsonl", path=write(tmp_path, [leaked] + _items(5, "t"), "ev.jsonl"))
    with pytest.raises(ContaminationError, match="normalised"):
        make_splits(ds, tmp_path / "out", SplitSizes(10, 10, 10), eval_sets={"test": ev})
    assert not (tmp_path / "out").exists()  # nothing half-written
    m = make_splits(ds, tmp_path / "out", SplitSizes(10, 10, 10), eval_sets={"test": ev}, allow_overlap=True)
    assert m["decontamination"]["overlap"] == 1 and m["allow_overlap"]


def test_decontamination_report_exact_vs_normalised(tmp_path):
    a = load_benchmark("jsonl", path=write(tmp_path, _items(3), "a.jsonl"))
    b_rows = [dict(_items(3)[0], id="b0"), dict(_items(3)[1], id="b1", question=_items(3)[1]["question"] + "  ")]
    b = load_benchmark("jsonl", path=write(tmp_path, b_rows, "b.jsonl"))
    rep = decontamination_report({"sft": a}, {"test": b})
    assert rep["pairs"][0]["exact"] == 2 and rep["pairs"][0]["normalised"] == 2  # stripping folds the spaces
    assert normalise_text("A  Patient, aged 40!") == "a patient aged 40"


def test_split_draws_sft_and_dev_from_items_with_a_trace(tmp_path):
    """``sft_from`` (items with a kept public trace): SFT and dev come from them only, seeded; RL is the rest,
    disjoint by normalised text; too few eligible items is an error naming them."""
    ds = load_benchmark("jsonl", path=write(tmp_path, _items(40)))
    eligible = {f"q{i}" for i in range(0, 40, 2)}  # 20 items have a trace
    m = make_splits(ds, tmp_path / "s", SplitSizes(sft=12, rl=24, dev=4), seed=1, sft_from=eligible)
    ids = {n: set(load_split(tmp_path / "s", n)["id"]) for n in ("sft", "rl", "dev")}
    assert ids["sft"] <= eligible and ids["dev"] <= eligible and len(ids["sft"]) == 12 and len(ids["dev"]) == 4
    assert ids["rl"] == {f"q{i}" for i in range(40)} - ids["sft"] - ids["dev"]  # every remaining question
    assert m["sft_from"] == 20 and not ids["sft"] & ids["rl"]
    again = make_splits(ds, tmp_path / "s2", SplitSizes(sft=12, rl=24, dev=4), seed=1, sft_from=eligible)
    assert again["files"]["sft"]["sha256"] == m["files"]["sft"]["sha256"]
    with pytest.raises(DataError, match="sft=18 \\+ dev=4 exceed the 20 training items with a kept trace"):
        make_splits(ds, tmp_path / "s3", SplitSizes(sft=18, rl=10, dev=4), sft_from=eligible)


def test_split_sizes_too_large(tmp_path):
    ds = load_benchmark("jsonl", path=write(tmp_path, _items(10)))
    with pytest.raises(ValueError, match="exceed the 10 training items"):
        make_splits(ds, tmp_path / "o", SplitSizes(5, 5, 5))


def test_cli_split_and_its_errors(tmp_path):
    from clinical_r1.cli import main

    assert main(["split", "--train", "sample", "--out", str(tmp_path / "s"), "--sizes", "20,20,8,8"]) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["files"]["test"]["count"] == 8 and manifest["eval"]["sample"]["count"] == 8
    assert main(["split", "--train", "sample", "--out", str(tmp_path / "t"), "--sizes", "50,50,8"]) == 2
    assert not (tmp_path / "t").exists()


@needs_bench
def test_decontamination_and_evaluation_count_every_kept_row(tmp_path):
    """The published denominators: the study's data stage keeps all 500 rows of each real slice, the
    decontamination check counts them, and evaluation divides by them."""
    from clinical_r1.evaluate import evaluate
    from clinical_r1.study import prepare_data

    out = tmp_path / "splits"
    manifest = prepare_data(out, train_benchmark="sample", split_sizes={"sft": 8, "rl": 8, "dev": 4, "test": 0},
                            eval_benchmarks={n: str(BENCH / FILES[n]) for n in ("medmcqa", "medxpertqa")})
    for name, flagged in (("medmcqa", 3), ("medxpertqa", 1)):
        info = manifest["eval"][name]
        assert info["count"] == info["kept"] == info["total"] == 500 and not info["skipped_rows"]
        assert len(info["flagged_rows"]) == flagged
        assert manifest["decontamination"]["counts"][name] == 500
    rows = read_jsonl(out / manifest["eval"]["medmcqa"]["path"])
    gen = tmp_path / "gen.jsonl"  # a policy that answers every item with its gold letter
    gen.write_text("".join(json.dumps({"id": r["id"], "sample": 0, "text": f"\\boxed{{{r['answer']}}}"}) + "\n"
                           for r in rows))
    overall = evaluate(gen, rows, n_boot=10)["overall"]
    assert overall["n_questions"] == 500 and overall["n_correct"] == 500 and overall["accuracy"] == 1.0


def test_published_sizes_are_checked_on_hub_loads(monkeypatch, caplog):
    """The README's table of published sizes is the one the loaders check against; a hub split of another
    size is said in a warning (here the hub is replaced by an in-memory split of 3 rows)."""
    import datasets

    from clinical_r1 import data

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, split, size in (("MedQA", "test", 1273), ("MedQA4", "test", 1273), ("MedMCQA", "validation", 4183), ("MedXpertQA", "test", 2450)):
        assert data.PUBLISHED_SIZES[name.lower()] == size and data.EVAL_SPLITS[name.lower()] == split
        assert f"| {name} | {split} | {size:,} |" in readme
    rows = [{"id": f"q{i}", "question": "Which?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1}
            for i in range(3)]
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, *a, split, **k: asked.append(split) or rows)
    with caplog.at_level("WARNING", logger="clinical_r1.data"):
        ds = data.load_benchmark("medmcqa")
    assert asked == ["validation"] and len(ds) == 3
    assert any("the published medmcqa validation split has 4183" in r.getMessage() for r in caplog.records)
