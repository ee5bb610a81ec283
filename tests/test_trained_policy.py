"""A trained run loads as the policy its trainer held: every loader rebuilds the same logits.

One SFT step (learning rate 1e-2, so the cold-start adapter moves the weights a lot) is the cold start for
one CRPO step in each ``init_adapter_mode`` (merge, continue) and for one from the plain base. A spy on
``runs.train_and_save`` records the trainer's final logits on a fixed prompt; the evaluation loader
(``generate.load_for_inference``, on ``adapter/`` and ``checkpoint-1/``), ``python -m clinical_r1 merge``
and the vLLM folders (``models.serving_folders``, replayed with transformers + PEFT) must give them back
(max abs difference <= 1e-4). The old loader (base + CRPO adapter, cold start forgotten) must not. The
recipes' precision is pinned to fp32 here (a bf16-autocast trainer computes other logits from the same weights).
The manifest logic itself is checked without weights first (fast).

    .venv/bin/pytest tests/test_trained_policy.py -q -s      # ~2 min on 2 cores; -s prints the differences
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from clinical_r1 import models, runs
from clinical_r1.models import ModelError

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max abs logit difference between the trainer's policy and a reloaded one (fp32, CPU)
OPTIONS = ["Graves disease", "Primary hypothyroidism", "Secondary hypothyroidism", "Subacute thyroiditis"]
PROMPT = [{"role": "user", "content": "A woman, 41, is tired and cold; TSH is 12 mU/L. Which diagnosis?"}]


def question(i: int, **extra) -> dict:
    return {"id": f"t{i}", "question": f"Woman, {30 + i}, tired and cold; TSH 12 mU/L. Diagnosis?",
            "options": OPTIONS, "answer": "B", "source": "test", "subgroup": "", "explanation": "", "meta": "{}",
            **extra}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trace(i: int) -> dict:
    return question(i, dx="Impression: hypothyroidism. TSH 12 mU/L is high; low T4 means primary disease.",
                    conclusion="TSH 12 mU/L with cold intolerance confirms primary hypothyroidism. \\boxed{B}")


@functools.lru_cache(maxsize=1)
def prompt_ids():
    """The fixed chat prompt, tokenized once with the base tokenizer (every loader shares it)."""
    tok = models.load_tokenizer(models.resolve_model(None))
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    return tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def logits(model):
    """Next-token logits of ``model`` (eval mode, no grad) on the fixed chat prompt."""
    import torch

    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(input_ids=prompt_ids()).logits[0, -1].float()
    finally:
        model.train(training)


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


def train_holding(run_stage, config: str, over: dict):
    """Run a stage; returns (run folder, logits of ``trainer.model`` right after ``train_and_save``, and the
    same with its LoRA switched off)."""
    held = {}
    original = runs.train_and_save

    def spy(trainer, tok, run, cfg, **summary):
        assert trainer.accelerator.mixed_precision == "no", "autocast: the trainer's logits are not fp32 logits"
        out = original(trainer, tok, run, cfg, **summary)
        held["logits"] = logits(trainer.model)
        with trainer.model.disable_adapter():
            held["without_lora"] = logits(trainer.model)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, "train_and_save", spy)
        run = run_stage(REPO / "configs" / config, over)
    return Path(run), held["logits"], held["without_lora"]


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, embedded_model_dir) -> Path:
    """One SFT step at a large learning rate on four tiny traces (two more for dev); its adapter folder."""
    from clinical_r1.sft import run_sft

    tmp = tmp_path_factory.mktemp("sft")
    over = {"output_root": str(tmp), "run_name": "sft", "overwrite": True, "resume": False,
            "data.traces": str(write_jsonl(tmp / "traces.jsonl", [trace(i) for i in range(4)])),
            "data.dev_traces": str(write_jsonl(tmp / "dev.jsonl", [trace(i) for i in range(4, 6)])),
            "data.questions": None, "data.limit": None, "data.prompt_kind": "crpo", "lora.r": 8,
            "trainer.max_steps": 1, "trainer.eval_steps": 1, "trainer.save_steps": 1, "trainer.max_length": 320,
            "trainer.per_device_train_batch_size": 2, "trainer.gradient_accumulation_steps": 1,
            "trainer.learning_rate": 1e-2, "trainer.lr_scheduler_type": "constant", "trainer.warmup_steps": 0,
            "trainer.bf16": False, "trainer.fp16": False}
    return run_sft(REPO / "configs" / "cpu_demo_sft.yaml", over) / "adapter"


@pytest.fixture(scope="module")
def crpo(tmp_path_factory, sft_adapter):
    """``crpo(mode)``: one CRPO step from the cold start in ``mode`` (merge, continue, or None: from the base),
    run once per module; returns (run folder, the trainer's final logits, the same without its LoRA).

    The untrained model never writes the preset's format, so every paper reward is 0 and GRPO's gradient
    would be exactly 0; a small weight on the length diagnostic gives the group reward variance, so the
    CRPO adapter really moves (checked below).
    """
    from clinical_r1.crpo import run_crpo

    tmp = tmp_path_factory.mktemp("crpo")
    questions = write_jsonl(tmp / "questions.jsonl", [question(i) for i in range(2)])
    done: dict = {}

    def get(mode: str | None):
        if mode not in done:
            over = {"output_root": str(tmp), "run_name": f"crpo_{mode}", "overwrite": True, "resume": False,
                    "model.init_adapter": str(sft_adapter) if mode else None,
                    "model.init_adapter_mode": mode or "merge", "lora.r": 8,
                    "data.name": "jsonl", "data.path": str(questions), "data.limit": None,
                    "reward.weights": {"completion_length": 0.1}, "trainer.max_steps": 1, "trainer.save_steps": 1,
                    "trainer.per_device_train_batch_size": 2, "trainer.gradient_accumulation_steps": 1,
                    "trainer.num_generations": 2, "trainer.max_completion_length": 8, "trainer.temperature": 1.0,
                    "trainer.learning_rate": 1e-3, "trainer.lr_scheduler_type": "constant",
                    "trainer.warmup_steps": 0, "trainer.beta": 0.0,  # beta 0: no reference forward pass
                    "model.dtype": "float32",  # the CPU demo trains bf16 weights; fp32 here ...
                    "trainer.bf16": False, "trainer.fp16": False}  # ... and fp32 compute, so logits compare at 1e-4
            done[mode] = train_holding(run_crpo, "cpu_demo_crpo.yaml", over)
        return done[mode]

    return get


# ---------------------------------------------------------------------------------------------------


def fake_adapter(d: Path, base: str = "some/base") -> Path:
    """An adapter folder with a config and placeholder weights (enough for the manifest logic)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 8}))
    (d / "adapter_model.safetensors").write_bytes(b"weights of " + d.name.encode())
    return d


def test_manifest_says_what_an_adapter_sits_on(tmp_path):
    """Without weights: a merge-mode run's adapter/ and checkpoint-N/ resolve to the run's copy of the cold
    start; a continued or plain adapter to base + adapter; a lost copy is an error, not a different policy."""
    sft = fake_adapter(tmp_path / "sft" / "adapter")
    run = tmp_path / "crpo"
    spec = {"name": "embedded:smollm2-135m-instruct", "init_adapter": str(sft), "init_adapter_mode": "merge",
            "dtype": "float32"}
    assert models.merged_before_training(spec) == [str(sft)]
    merged = models.copy_adapters(models.merged_before_training(spec), run / "merged_adapters")
    for folder, copies in ((run / "checkpoint-2", merged),
                           (run / "adapter", models.copy_adapters(merged, run / "adapter" / "merged_adapters"))):
        fake_adapter(folder)
        models.write_policy_manifest(folder, spec, copies)
        stack = models.policy_stack(folder)
        assert stack.base == spec["name"] and stack.dtype == "float32" and stack.adapter == str(folder)
        assert [Path(m).resolve() for m in stack.merged] == [Path(c).resolve() for c in copies]
        assert Path(stack.merged[0], "adapter_model.safetensors").read_bytes() == b"weights of adapter"
    assert json.loads((run / "checkpoint-2" / models.POLICY_MANIFEST).read_text())["merged_adapters"] == \
        ["../merged_adapters/0"]
    # a cold start that itself sits on a merged adapter brings it along, in order
    assert models.merged_before_training({**spec, "init_adapter": str(run / "adapter")}) == \
        [*models.policy_stack(run / "adapter").merged, str(run / "adapter")]
    assert models.merged_before_training({**spec, "init_adapter_mode": "continue"}) == []
    plain = models.policy_stack(sft)
    assert (plain.base, plain.merged) == ("some/base", ())

    import shutil

    shutil.rmtree(run / "merged_adapters")
    with pytest.raises(ModelError, match="merged into the base before training, is missing"):
        models.policy_stack(run / "checkpoint-2")
    (run / "config.yaml").write_text(json.dumps({"model": spec}))  # JSON is YAML
    (run / "checkpoint-2" / models.POLICY_MANIFEST).unlink()
    with pytest.raises(ModelError, match="no clinical_r1_policy.json saying so"):
        models.policy_stack(run / "checkpoint-2")


def test_vllm_lora_rank_rounds_up_to_an_allowed_value():
    assert [models.vllm_lora_rank(r) for r in (1, 2, 8, 9, 32, 33, 300, 512)] == [1, 8, 8, 16, 32, 64, 320, 512]
    with pytest.raises(ModelError, match="largest max_lora_rank"):
        models.vllm_lora_rank(513)


@pytest.mark.slow
def test_merge_mode_run_loads_as_the_trained_policy(crpo, sft_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from clinical_r1.generate import load_for_inference

    run, held, without_lora = crpo("merge")
    adapter = run / "adapter"
    manifest = json.loads((adapter / models.POLICY_MANIFEST).read_text())
    assert manifest["base_model"] == models.EMBEDDED_DEFAULT and manifest["init_adapter_mode"] == "merge"
    assert manifest["merged_adapters"] == ["merged_adapters/0"] and manifest["dtype"] == "float32"
    copy = adapter / "merged_adapters" / "0" / "adapter_model.safetensors"
    assert copy.read_bytes() == (sft_adapter / "adapter_model.safetensors").read_bytes()
    ckpt = json.loads((run / "checkpoint-1" / models.POLICY_MANIFEST).read_text())
    assert ckpt["merged_adapters"] == ["../merged_adapters/0"] and (run / "merged_adapters" / "0").is_dir()
    assert max_diff(held, without_lora) > 100 * TOL, "the CRPO adapter did not move: a loader could drop it unseen"

    loaded = {name: logits(load_for_inference(run / name)[0]) for name in ("adapter", "checkpoint-1")}
    # the old loader: the base named in adapter_config.json + the CRPO adapter, cold start forgotten
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    old = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)))
    diffs = {name: max_diff(held, v) for name, v in loaded.items()}
    print(f"merge mode: trained vs loaded {diffs}; vs base + CRPO adapter (old) {max_diff(held, old):.4f}; "
          f"vs base + cold start (CRPO adapter off) {max_diff(held, without_lora):.4f}")
    assert all(d <= TOL for d in diffs.values()), diffs
    assert max_diff(held, old) > 100 * TOL, "the cold start does not change the logits: the test is vacuous"


@pytest.mark.slow
def test_merge_cli_writes_the_trained_policy(crpo, tmp_path):
    from transformers import AutoModelForCausalLM

    from clinical_r1.cli import main

    run, held, _ = crpo("merge")
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(run / "adapter"), "--out", str(out)]) == 0
    assert not (out / "adapter_config.json").exists() and not [p for p in tmp_path.iterdir() if p.name[0] == "."]
    d = max_diff(held, logits(AutoModelForCausalLM.from_pretrained(out)))
    print(f"merge CLI: trained vs merged folder {d:.2e}")
    assert d <= TOL


@pytest.mark.slow
def test_vllm_folders_serve_the_trained_policy(crpo, tmp_path, monkeypatch):
    """What vLLM is given (a model folder + one LoRA) replayed with transformers + PEFT (vLLM needs CUDA)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, held, _ = crpo("merge")
    model_dir, lora = models.serving_folders(run / "adapter", cache=tmp_path)
    assert Path(model_dir).parent == tmp_path / "merged" and lora == str(run / "adapter")
    served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), lora)  # LoRA unmerged
    d = max_diff(held, logits(served))
    print(f"vLLM folders: trained vs merged base + LoRA {d:.2e}")
    assert d <= TOL
    # built once: the checkpoint shares the folder, and nothing is merged again
    monkeypatch.setattr(models, "merge_adapters", lambda *a: pytest.fail("merged the cold start again"))
    assert models.serving_folders(run / "checkpoint-1", cache=tmp_path) == (model_dir, str(run / "checkpoint-1"))
    assert not [p for p in (tmp_path / "merged").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["continue", None])
def test_continued_and_plain_runs_load_as_the_trained_policy(crpo, mode):
    from clinical_r1.generate import load_for_inference

    run, held, _ = crpo(mode)
    manifest = json.loads((run / "adapter" / models.POLICY_MANIFEST).read_text())
    assert manifest["merged_adapters"] == [] and manifest["init_adapter_mode"] == mode
    assert not (run / "merged_adapters").exists() and not (run / "adapter" / "merged_adapters").exists()
    d = max_diff(held, logits(load_for_inference(run / "adapter")[0]))
    print(f"{mode or 'no cold start'}: trained vs loaded {d:.2e}")
    assert d <= TOL
    assert models.serving_folders(run / "adapter") == (models.resolve_model(None), str(run / "adapter"))


@pytest.mark.slow
def test_merge_run_without_manifest_is_refused(crpo, tmp_path):
    """A run saved before manifests: base + adapter would be the wrong policy, so every loader refuses."""
    import shutil

    from clinical_r1.generate import load_for_inference

    run, *_ = crpo("merge")
    old = tmp_path / "old_run"
    shutil.copytree(run / "adapter", old / "adapter", ignore=shutil.ignore_patterns("merged_adapters",
                                                                                   models.POLICY_MANIFEST))
    shutil.copy(run / "config.yaml", old / "config.yaml")
    for load in (load_for_inference, models.serving_folders, lambda p: models.merge_lora(p, tmp_path / "m")):
        with pytest.raises(ModelError, match="no clinical_r1_policy.json"):
            load(old / "adapter")
