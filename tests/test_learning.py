"""Learning happens: a short cold-start SFT changes what the model writes on questions it never saw.

    .venv/bin/pytest tests/test_learning.py -q          # ~4-5 min on 2 cores

The study's own path end to end, as the notebooks run it: ``study.prepare_data`` splits the bundled
questions, ``study.cold_start_traces`` writes the compact traces of the SFT half, ``sft.run_sft`` trains the
LoRA, and ``study.evaluate_methods`` loads ``<run>/adapter`` exactly as notebook 05 does and scores the
held-out split. The base model with the same crpo prompt is the control. This is the test that catches an
evaluation that silently loads another policy than the trained one (the cold start would then look like
the base model), and a prompt or recipe the model cannot learn from.
"""

from __future__ import annotations

import json

import pytest

from clinical_r1 import study
from clinical_r1.sft import run_sft

pytestmark = pytest.mark.slow

STEPS = 30  # 4 traces a step, lr 1e-3, bf16 autocast: ~7 s a step on 2 cores (16 steps: 0 of 8 formatted)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    splits = root / "data"
    study.prepare_data(splits, train_benchmark="sample", split_sizes={"sft": 40, "rl": 4, "dev": 4, "test": 8},
                       seed=0)
    study.cold_start_traces(splits, trace_style="compact")
    run_sft("configs/cpu_demo_sft.yaml", {
        "output_root": str(root), "run_name": "sft", "seed": 0,
        "data.traces": str(splits / "traces_sft.jsonl"), "data.dev_traces": str(splits / "traces_dev.jsonl"),
        "data.prompt_kind": "crpo", "trainer.max_steps": STEPS, "trainer.learning_rate": 1e-3,
        "trainer.per_device_train_batch_size": 4, "trainer.gradient_accumulation_steps": 1,
        "trainer.eval_steps": STEPS, "trainer.save_steps": STEPS, "trainer.bf16": True, "trainer.use_cpu": True})
    # the base model in bf16, as the demo evaluates it and as the SFT run trained (fp32 answers twice as slowly)
    methods = {"base": {"model": "base", "prompt": "crpo", "dtype": "bfloat16"},
               "sft": {"model": str(root / "sft"), "prompt": "crpo"}}
    rows = study.evaluate_methods(methods, splits, root, base_model="embedded:smollm2-135m-instruct",
                                  max_new_tokens=200, batch_size=8, n_boot=200)
    return root, {r["method"]: r for r in rows}


def test_held_out_questions_are_not_training_questions(learned):
    root, _ = learned
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    trained = {json.loads(line)["id"] for line in (root / "data" / "traces_sft.jsonl").read_text().splitlines()}
    held_out = {json.loads(line)["id"] for line in (root / "data" / manifest["eval"]["sample"]["path"]).read_text().splitlines()}
    assert held_out and not trained & held_out


def test_sft_raises_held_out_format_compliance_well_above_the_base_model(learned):
    _, rows = learned
    base, sft = rows["base"], rows["sft"]
    assert base["n"] == sft["n"] == 8
    assert base["format_compliance"] <= 0.25, base
    assert sft["format_compliance"] >= 0.5, sft  # 4 of 8 held-out answers in the full <dx>/<conclusion> format
    assert sft["format_compliance"] - base["format_compliance"] >= 0.375
    assert sft["valid_ratio"] >= 0.5, sft  # a boxed answer letter is found
