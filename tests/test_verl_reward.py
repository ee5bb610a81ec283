"""verl export: compute_score equals rewards.score, preset selection, and the parquet prompt format (no verl needed)."""

import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clinical_r1 import verl_reward as V
from clinical_r1.data import DataError
from clinical_r1.prompts import build_messages
from clinical_r1.rewards import accuracy, get_preset, score

OPTS = ["Graves disease", "Hashimoto thyroiditis", "Subacute thyroiditis", "Toxic adenoma"]
DX = ("Initial impression: primary hypothyroidism. TSH 12 mU/L with low free T4 and positive anti-TPO antibodies. "
      "A is rejected because Graves disease suppresses TSH. C is rejected because subacute thyroiditis is painful. "
      "D is rejected because a toxic adenoma is hyperthyroid. B fits.")
CONC = "The TSH 12 mU/L with positive anti-TPO antibodies establishes autoimmune hypothyroidism. \\boxed{B}"
COMPLETIONS = [
    f"<dx>\n{DX}\n</dx>\n<conclusion>\n{CONC}\n</conclusion>",  # well-formed, correct
    f"<dx>\n{DX}\n</dx>\n<conclusion>\nSo \\boxed{{A}}\n</conclusion>",  # well-formed, wrong, no citation
    f"{DX} {CONC}",  # no tags
    f"<think>\n{DX}\n</think>\n<answer>\nHashimoto. \\boxed{{B}}\n</answer>",  # grpo format
    f"<dx>{DX} 患者甲状腺功能减退。</dx><conclusion>\\boxed{{B}} \\boxed{{C}}</conclusion>",  # two boxes, Chinese
    "<dx>" + "and so on " * 300 + "</dx><conclusion>\\boxed{Hashimoto thyroiditis}</conclusion>",  # loop, option text
    "",
]
RECORDS = [
    {"id": "q1", "question": "A 45-year-old woman has fatigue and TSH 12 mU/L. Diagnosis?", "options": OPTS,
     "answer": "B", "source": "test", "subgroup": "step1", "explanation": "", "meta": "{}"},
    {"id": "q2", "question": "Which drug treats it?", "options": ["Levothyroxine", "Methimazole", "Iodine"],
     "answer": "A", "source": "test", "subgroup": "", "explanation": "why", "meta": "{}"},
]


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(V.PRESET_ENV, raising=False)
    monkeypatch.delenv(V.K_ENV, raising=False)


@pytest.mark.parametrize("preset", ["crpo", "grpo", "r1-medical", "crpo-no-xref"])
@pytest.mark.parametrize("i", range(len(COMPLETIONS)))
def test_compute_score_equals_rewards_score(no_env, preset, i):
    c = COMPLETIONS[i]
    got = V.compute_score("clinical_r1/medqa", c, "B", extra_info={"preset": preset, "options": OPTS, "id": "q1"})
    ref = score(c, "B", OPTS, preset=preset)
    assert got["score"] == ref["total"]
    # every reward of the preset under its registry name, unweighted: the weighted ones equal rewards.score's
    p = get_preset(preset)
    assert list(got) == ["score", "acc", *p.weights]
    public = {"r1_accuracy": "accuracy", "r1_format": "format"}
    assert all(got[n] == ref[public.get(n, n)] for n, w in p.weights.items() if w != 0)
    assert got["acc"] in (0.0, 1.0)


def test_keys_are_the_presets_whatever_the_response_and_k(no_env):
    """verl stacks the returned keys across a batch (and GDPO reads them): they must not depend on the response
    or on k (k=0 once dropped the accuracy key); verl's extra_info additions and kwargs are accepted."""
    verl_info = {"options": OPTS, "num_turns": None, "rollout_reward_scores": {}, "experiment_name": "x"}
    for preset in ("crpo", "grpo", "r1-medical"):
        keys = {tuple(V.compute_score("d", c, "B", verl_info, preset=preset, k=k, reward_router_address=None))
                for c in COMPLETIONS for k in (0, 10)}
        assert keys == {("score", "acc", *get_preset(preset).weights)}, preset
    assert V.compute_score("d", COMPLETIONS[0], "B", verl_info, k=0)["score"] == 2.0


def test_acc_is_the_parser_correctness(no_env):
    accs = [V.compute_score("d", c, "B", {"options": OPTS})["acc"] for c in COMPLETIONS]
    assert accs == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    # the training accuracy reward judges by the same is_correct
    assert accs == accuracy(COMPLETIONS, answer=["B"] * len(COMPLETIONS), options=[OPTS] * len(COMPLETIONS))
    # verl's ground truth enters here: folded and validated once, then trusted
    assert [V.compute_score("d", c, " b", {"options": OPTS})["acc"] for c in COMPLETIONS] == accs


def test_preset_precedence(no_env, monkeypatch):
    c = COMPLETIONS[3]  # grpo-format answer: scores differ between presets
    assert set(V.compute_score("d", c, "B")) == {"score", "acc", "accuracy", "clinical_reasoning", "crpo_format",
                                                "cross_reference", "consistency", "completion_length"}
    monkeypatch.setenv(V.PRESET_ENV, "grpo")
    assert V.compute_score("d", c, "B")["score"] == score(c, "B", preset="grpo")["total"] == 11.0
    assert V.compute_score("d", c, "B", {"preset": "r1-medical"})["score"] == score(c, "B", preset="r1-medical")["total"]
    got = V.compute_score("d", c, "B", {"preset": "r1-medical"}, preset="crpo")  # reward_kwargs win
    assert got["score"] == score(c, "B", preset="crpo")["total"]


def test_k_override(no_env, monkeypatch):
    c = COMPLETIONS[0]
    assert V.compute_score("d", c, "B", {"options": OPTS})["score"] == 12.0
    assert V.compute_score("d", c, "B", {"options": OPTS, "k": 20})["score"] == 22.0
    monkeypatch.setenv(V.K_ENV, "5")
    assert V.compute_score("d", c, "B", {"options": OPTS})["score"] == 7.0
    assert V.compute_score("d", c, "B", {"options": OPTS}, k=1)["score"] == 3.0


def test_bad_inputs_raise_naming_the_item(no_env):
    with pytest.raises(V.VerlDataError, match=r"id 'q9'.*ground_truth 'Hashimoto'"):
        V.compute_score("d", "x", "Hashimoto", {"id": "q9"})
    with pytest.raises(V.VerlDataError, match="not among the 4 options"):
        V.compute_score("d", "x", "F", {"options": OPTS})
    with pytest.raises(V.VerlDataError, match="unknown reward preset 'nope'"):
        V.compute_score("d", "x", "B", {"preset": "nope"})
    with pytest.raises(V.VerlDataError, match="k='ten'"):
        V.compute_score("d", "x", "B", k="ten")
    with pytest.raises(V.VerlDataError, match="list of option texts"):
        V.compute_score("d", "x", "B", {"options": "A. yes B. no"})


def _write_split(tmp_path, records=RECORDS):
    p = tmp_path / "rl.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    return p


def test_parquet_round_trip_and_verl_style_scoring(no_env, tmp_path):
    out = V.to_verl_parquet(_write_split(tmp_path), tmp_path / "verl" / "rl.parquet")
    df = pd.read_parquet(out)
    assert list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert len(df) == 2 and set(df["data_source"]) == {"clinical_r1/medqa"} and set(df["ability"]) == {"medical_mcq"}
    for i, (row, rec) in enumerate(zip(df.to_dict("records"), RECORDS)):
        assert [dict(m) for m in row["prompt"]] == build_messages(rec, "crpo")
        assert dict(row["reward_model"]) == {"style": "rule", "ground_truth": rec["answer"]}
        info = row["extra_info"]
        assert (info["index"], info["id"], list(info["options"]), info["preset"]) == (i, rec["id"], rec["options"], "crpo")
        # what verl's reward manager passes: the parquet's own (numpy-backed) values
        got = V.compute_score(row["data_source"], COMPLETIONS[0], row["reward_model"]["ground_truth"], info)
        assert got["score"] == score(COMPLETIONS[0], rec["answer"], rec["options"])["total"]
    assert not list(out.parent.glob(".*tmp"))


def test_parquet_grpo_prompt_and_presets(tmp_path):
    out = V.to_verl_parquet(_write_split(tmp_path), tmp_path / "g.parquet", prompt_kind="grpo", data_source="x/y")
    row = pd.read_parquet(out).iloc[0]
    assert row["extra_info"]["preset"] == "grpo" and "<think>" in row["prompt"][0]["content"]
    with pytest.raises(ValueError, match="pass preset="):
        V.to_verl_parquet(_write_split(tmp_path), tmp_path / "c.parquet", prompt_kind="cot")
    out = V.to_verl_parquet(_write_split(tmp_path), tmp_path / "c.parquet", prompt_kind="cot", preset="r1-medical")
    assert pd.read_parquet(out).iloc[1]["extra_info"]["preset"] == "r1-medical"
    with pytest.raises(KeyError, match="unknown reward preset"):
        V.to_verl_parquet(_write_split(tmp_path), tmp_path / "c.parquet", preset="nope")


def test_bad_split_row_names_file_row_and_field(tmp_path):
    bad = [RECORDS[0], {**RECORDS[1], "answer": "E"}]
    with pytest.raises(DataError, match=r"rl\.jsonl: row 2: field 'answer'"):
        V.to_verl_parquet(_write_split(tmp_path, bad), tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_cli(tmp_path):
    from clinical_r1.cli import main

    out = tmp_path / "cli.parquet"
    assert main(["verl-export", str(_write_split(tmp_path)), str(out), "--data-source", "clinical_r1/dev"]) == 0
    assert set(pd.read_parquet(out)["data_source"]) == {"clinical_r1/dev"}


def test_docstring_config_snippet_names_a_loadable_function(no_env):
    """The YAML snippet in the module docstring points at this file and function, loaded the way verl loads it."""
    doc = V.__doc__
    block = re.search(r"^    reward:\n(?:^      .*\n)+", doc, re.M).group(0)
    cfg = yaml.safe_load(block)["reward"]["custom_reward_function"]
    repo = Path(__file__).resolve().parents[1]
    path = repo / cfg["path"]
    assert path.is_file() and cfg["name"] == "compute_score"
    spec = importlib.util.spec_from_file_location("custom_module", path)  # verl: load_extern_type(path, name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fn = getattr(mod, cfg["name"])
    got = fn(data_source="clinical_r1/medqa", solution_str=COMPLETIONS[0], ground_truth="B",
             extra_info={"options": OPTS}, **cfg["reward_kwargs"])
    assert got["score"] == 12.0 and " reward.custom_reward_function.path=clinical_r1/verl_reward.py" in doc
