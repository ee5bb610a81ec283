"""Training: recipes build TRL configs, bad input fails before expensive work, and real SFT and CRPO
steps run on the embedded model (LoRA weights change, rewards are logged, a checkpoint resumes).

    .venv/bin/pytest tests/test_training.py -q              # ~2-3 min on 2 cores
    .venv/bin/pytest tests/test_training.py -q -m "not slow"

The slow tests use tiny questions and traces written here (short prompts and completions keep a CPU
step at seconds); the bundled data is checked for loading only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clinical_r1 import config as C
from clinical_r1.config import ConfigError
from clinical_r1.crpo import DatasetError
from clinical_r1.models import ModelError
from clinical_r1.sft import TraceError

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("paper_3b_sft", "paper_3b_crpo", "t4_16gb_sft", "t4_16gb_crpo", "cpu_demo_sft", "cpu_demo_crpo")
GRPO_EXPLICIT = ("learning_rate", "lr_scheduler_type", "num_generations", "max_completion_length", "temperature",
                 "top_p", "beta", "epsilon", "num_iterations", "loss_type", "scale_rewards",
                 "multi_objective_aggregation", "bf16", "fp16", "gradient_checkpointing", "use_vllm", "logging_steps",
                 "save_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "report_to")
SFT_EXPLICIT = ("learning_rate", "lr_scheduler_type", "warmup_steps", "max_length", "completion_only_loss",
                "eval_strategy", "save_strategy", "load_best_model_at_end", "metric_for_best_model", "bf16",
                "fp16", "gradient_checkpointing", "per_device_train_batch_size", "gradient_accumulation_steps",
                "report_to")
OPTIONS = ["Graves disease", "Primary hypothyroidism", "Secondary hypothyroidism", "Subacute thyroiditis"]


def recipe_paths() -> list[Path]:
    """Every training recipe in configs/ (files with a stage key), and at least the six shipped ones."""
    paths = [p for p in sorted((REPO / "configs").glob("*.yaml"))
             if (yaml.safe_load(p.read_text()) or {}).get("stage") in C.STAGES]
    assert {p.stem for p in paths} >= set(RECIPES)
    return paths


def question(i: int, **extra) -> dict:
    return {"id": f"t{i}", "question": f"Woman, {30 + i}, tired and cold; TSH 12 mU/L. Diagnosis?",
            "options": OPTIONS, "answer": "B", "source": "test", "subgroup": "", "explanation": "", "meta": "{}",
            **extra}


def tiny_questions(n: int = 4):
    from datasets import Dataset

    return Dataset.from_list([question(i) for i in range(n)])


def write_tiny_traces(path: Path, n: int = 6, first: int = 0) -> Path:
    rows = [question(i, dx="Impression: hypothyroidism. TSH 12 mU/L is high; low T4 means primary disease.",
                     conclusion="TSH 12 mU/L with cold intolerance confirms primary hypothyroidism. \\boxed{B}")
            for i in range(first, first + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def demo(stage: str, tmp: Path, **over) -> dict:
    """The CPU demo recipe with a throw-away output folder and the given dotted overrides."""
    return C.load_config(REPO / "configs" / f"cpu_demo_{stage}.yaml", {"output_root": str(tmp), **over})


# ---------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", recipe_paths(), ids=lambda p: p.stem)
def test_every_recipe_builds_its_trl_config(path):
    """GRPOConfig(**recipe) / SFTConfig(**recipe) with the installed TRL. GPU recipes set bf16, which
    TrainingArguments refuses on a machine without a GPU unless use_cpu=True: that one key is added
    here (cpu_safe), precision and vLLM settings are built exactly as written."""
    import torch

    cfg = C.load_config(path)
    needs_gpu = bool(cfg["trainer"].get("bf16")) and not torch.cuda.is_available()
    args = C.trainer_args(cfg, cpu_safe=needs_gpu)
    assert type(args).__name__ == ("GRPOConfig" if cfg["stage"] == "crpo" else "SFTConfig")
    assert args.seed == cfg["seed"] and Path(args.output_dir) == C.run_dir(cfg)
    explicit = GRPO_EXPLICIT if cfg["stage"] == "crpo" else SFT_EXPLICIT
    missing = [k for k in explicit if k not in cfg["trainer"]]
    assert not missing, f"{path.name}: set TRL defaults explicitly: {missing}"
    if cfg["stage"] == "crpo":
        preset = C.reward_preset(cfg)
        assert args.reward_weights == preset.weight_list()
        assert args.generation_batch_size % args.num_generations == 0
    if path.stem.startswith("cpu_demo"):  # CPU recipes: bf16 only as CPU autocast (use_cpu), never fp16
        assert cfg["trainer"].get("use_cpu") is True and not args.fp16


def test_paper_recipes_match_the_authors_reference():
    sft = C.load_config(REPO / "configs/paper_3b_sft.yaml")
    t = sft["trainer"]
    assert sft["model"]["name"] == "Qwen/Qwen2.5-3B-Instruct"
    assert (sft["lora"]["r"], sft["lora"]["alpha"], sft["lora"]["target_modules"]) == (32, 16, "all-linear")
    assert (t["learning_rate"], t["lr_scheduler_type"], t["warmup_steps"]) == (1e-4, "cosine", 0.1)
    assert t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] == 256
    assert (t["max_length"], t["num_train_epochs"], t["load_best_model_at_end"]) == (4096, 20, True)
    rl = C.load_config(REPO / "configs/paper_3b_crpo.yaml")
    t = rl["trainer"]
    assert (t["learning_rate"], t["lr_scheduler_type"], t["num_generations"]) == (1e-6, "constant", 5)
    assert (t["beta"], t["epsilon"], t["temperature"], t["max_completion_length"]) == (0.001, 0.2, 0.6, 4096)
    assert t["per_device_train_batch_size"] * t["steps_per_generation"] // t["num_generations"] == 512  # per rollout
    assert t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] // t["num_generations"] == 16  # per update
    assert t["num_train_epochs"] == 20 and rl["reward"]["preset"] == "crpo"
    assert t["multi_objective_aggregation"] == "sum_then_normalize"
    t4 = C.load_config(REPO / "configs/t4_16gb_crpo.yaml")
    assert t4["trainer"]["fp16"] and not t4["trainer"]["bf16"] and t4["model"]["load_in_4bit"]


def test_overrides_are_yaml_values_with_dotted_keys(tmp_path):
    cfg = demo("crpo", tmp_path, **{"trainer.max_steps": 7})
    cfg2 = C.load_config(cfg, ["reward.k=5", "trainer.learning_rate=3e-6", "model.init_adapter=null",
                               "reward.weights={consistency: 0}"])
    assert cfg2["reward"]["k"] == 5 and cfg2["trainer"]["learning_rate"] == 3e-6
    assert cfg2["model"]["init_adapter"] is None and cfg2["trainer"]["max_steps"] == 7
    assert C.reward_preset(cfg2).weights["accuracy"] == 5.0 and C.reward_preset(cfg2).weights["consistency"] == 0.0
    with pytest.raises(ConfigError, match="key=value"):
        C.parse_override("trainer.max_steps")
    no_save = C.load_config(cfg, ["trainer.save_strategy=no"])  # YAML 1.1: unquoted no is false
    assert C.trainer_args(no_save).save_strategy == "no"


@pytest.mark.parametrize("override, message", [
    ({"trainer.learning_rat": 1e-5}, "unknown trainer key 'learning_rat'.*learning_rate"),
    ({"trainer.max_prompt_length": 512}, "unknown trainer key 'max_prompt_length'"),  # gone from TRL 1.x
    ({"modle": {}}, "unknown config key 'modle'"),
    ({"model.nmae": "x"}, "unknown config key 'model.nmae'.*'name'"),
    ({"trainer.seed": 3}, "derived"),
    ({"reward.preset": "crpo-plus"}, "unknown reward preset 'crpo-plus'"),
    ({"reward.weights": {"acuracy": 1.0}}, "unknown reward 'acuracy'"),
    ({"trainer.multi_objective_aggregation": "mean"}, "multi_objective_aggregation"),
    ({"trainer.loss_type": "ppo"}, "loss_type"),
    ({"trainer.reward_weights": [1.0]}, "comes from the reward preset"),
    ({"model.backend": "jax"}, "model.backend"),
    ({"run_name": "a/b"}, "run_name"),
    ({"data.name": "medqa2"}, "data.name"),
    ({"data.name": "split", "data.path": None}, "needs data.path"),
])
def test_bad_recipes_fail_at_load(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        demo("crpo", tmp_path, **override)


def test_trl_vllm_with_a_4bit_transformers_policy_is_refused(tmp_path):
    bad = {"model.backend": "transformers", "model.load_in_4bit": True, "trainer.use_vllm": True}
    with pytest.raises(ConfigError, match=r"model.backend=transformers.*model.load_in_4bit=true.*trainer.use_vllm"):
        demo("crpo", tmp_path, **bad)
    for ok in ({"model.load_in_4bit": False}, {"trainer.use_vllm": False}, {"model.backend": "unsloth"}):
        demo("crpo", tmp_path, **{**bad, **ok})  # any one of them off: accepted at load


def test_group_size_must_divide_the_generation_batch(tmp_path):
    with pytest.raises(ConfigError, match=r"num_generations \(2\) must divide the generation batch.* = 3"):
        demo("crpo", tmp_path, **{"trainer.per_device_train_batch_size": 3, "trainer.num_generations": 2})


def test_sft_recipe_checks(tmp_path):
    with pytest.raises(ConfigError, match="dev_size"):
        demo("sft", tmp_path, **{"data.dev_size": 0})
    with pytest.raises(ConfigError, match="unknown trainer key 'num_generations'"):
        demo("sft", tmp_path, **{"trainer.num_generations": 4})
    with pytest.raises(ConfigError, match="not 'crpo'"):
        from clinical_r1.crpo import run_crpo

        run_crpo(REPO / "configs/cpu_demo_sft.yaml")


# ---------------------------------------------------------------------------------------------------
# Bad input fails before the model is loaded
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a policy gets loaded: the error must come first."""
    from clinical_r1 import models

    def refuse(*a, **k):
        raise AssertionError("the policy was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_policy", refuse)


def test_unknown_model_fails_fast(tmp_path, no_model_load):
    from clinical_r1.crpo import run_crpo
    from clinical_r1.sft import run_sft

    t0 = time.time()
    with pytest.raises(ModelError, match="embedded:nope"):
        run_crpo(demo("crpo", tmp_path, **{"model.name": "embedded:nope"}))
    with pytest.raises(ModelError, match="no such folder"):
        run_sft(demo("sft", tmp_path, **{"model.name": "./models/missing"}))
    assert time.time() - t0 < 30
    assert not (tmp_path / "cpu_demo_crpo").exists()  # no run folder for a run that never started


def test_missing_cold_start_adapter_fails_fast(tmp_path, embedded_model_dir, no_model_load):
    from clinical_r1.crpo import run_crpo

    with pytest.raises(ModelError, match="adapter_config.json"):
        run_crpo(demo("crpo", tmp_path, **{"model.init_adapter": str(tmp_path / "nope")}),
                 train_dataset=tiny_questions())


def test_dataset_without_answer_column(tmp_path, embedded_model_dir, no_model_load):
    from clinical_r1.crpo import run_crpo

    ds = tiny_questions().remove_columns("answer")
    with pytest.raises(DatasetError, match=r"lacks the column\(s\) \['answer'\]"):
        run_crpo(demo("crpo", tmp_path, **{"model.init_adapter": None}), train_dataset=ds)
    from datasets import Dataset

    ds = Dataset.from_list([question(0), question(1, answer="E")])  # four options: A-D
    with pytest.raises(DatasetError, match=r"not one of their option letters.*\('t1', 'E'\)"):
        run_crpo(demo("crpo", tmp_path, **{"model.init_adapter": None}), train_dataset=ds)


def test_prompt_longer_than_max_prompt_length(tmp_path, embedded_model_dir, no_model_load):
    from datasets import Dataset

    from clinical_r1.crpo import run_crpo

    ds = Dataset.from_list([question(0), question(1, question="Long vignette. " * 400)])
    with pytest.raises(DatasetError, match=r"longer than max_prompt_length=512.*'t1'"):
        run_crpo(demo("crpo", tmp_path, **{"model.init_adapter": None}), train_dataset=ds)
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        run_crpo(demo("crpo", tmp_path, **{"model.init_adapter": None, "max_prompt_length": 8190}),
                 train_dataset=tiny_questions())


def test_bad_traces(tmp_path, embedded_model_dir, no_model_load):
    from clinical_r1.sft import load_traces, run_sft

    p = tmp_path / "traces.jsonl"
    p.write_text(json.dumps({"id": "x1", "dx": "d", "conclusion": "c"}) + "\n")
    with pytest.raises(TraceError, match="'x1' has no question fields"):
        load_traces(p)
    p.write_text(json.dumps(question(0, dx="", conclusion="c")) + "\n")
    with pytest.raises(TraceError, match="row 1: field 'dx'"):
        run_sft(demo("sft", tmp_path, **{"data.traces": str(p)}))
    with pytest.raises(TraceError, match="does not exist"):
        load_traces(tmp_path / "missing.jsonl")
    train = write_tiny_traces(tmp_path / "train.jsonl", 3)
    with pytest.raises(TraceError, match=r"dev trace id\(s\) are also training traces: \['t2'\]"):
        run_sft(demo("sft", tmp_path, **{"data.traces": str(train),
                                          "data.dev_traces": str(write_tiny_traces(tmp_path / "dev.jsonl", 2, first=2))}))


def test_bundled_traces_join_their_questions():
    from clinical_r1.prompts import build_messages
    from clinical_r1.sft import load_traces, sft_row, split_dev

    recs = load_traces()
    assert len(recs) >= 32 and all(r["question"] and r["options"] and r["answer"] for r in recs)
    row = sft_row(recs[0])
    assert row["prompt"] == build_messages(recs[0], "crpo")
    assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"].startswith("<dx>")
    train, dev = split_dev(recs, 0.1, seed=0)
    assert len(dev) == round(len(recs) * 0.1) and not {r["id"] for r in train} & {r["id"] for r in dev}
    assert split_dev(recs, 0.1, seed=0) == (train, dev)


def test_existing_run_folder_needs_resume_or_overwrite(tmp_path):
    from clinical_r1.runs import prepare_run_dir

    cfg = demo("crpo", tmp_path, overwrite=False)
    d = prepare_run_dir(cfg)
    (d / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="already exists"):
        prepare_run_dir(cfg)
    assert prepare_run_dir({**cfg, "resume": True}) == d and (d / "metrics.jsonl").exists()
    assert prepare_run_dir({**cfg, "overwrite": True}) == d and not (d / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------------------------------
# Real training on the embedded model
# ---------------------------------------------------------------------------------------------------


def adapter_tensors(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(d / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, embedded_model_dir):
    """Two SFT steps on four tiny traces (two more in a dev file), evaluated and saved every step."""
    from clinical_r1.sft import run_sft

    tmp = tmp_path_factory.mktemp("sft")
    traces = write_tiny_traces(tmp / "traces.jsonl", 4)
    dev = write_tiny_traces(tmp / "dev.jsonl", 2, first=4)
    over = {"data.traces": str(traces), "data.dev_traces": str(dev), "trainer.max_steps": 2,
            "trainer.per_device_train_batch_size": 2, "trainer.gradient_accumulation_steps": 1,
            "trainer.eval_steps": 1, "trainer.save_steps": 1, "trainer.max_length": 320, "lora.r": 8}
    t0 = time.time()
    run = run_sft(demo("sft", tmp, **over))
    return run, time.time() - t0


@pytest.mark.slow
def test_sft_trains_lora_on_completions_and_keeps_the_best_checkpoint(sft_run):
    run, seconds = sft_run
    for f in ("config.yaml", "run_info.json", "metrics.jsonl", "metrics.csv", "metrics.json"):
        assert (run / f).is_file(), f
    info = json.loads((run / "run_info.json").read_text())
    assert info["seed"] == 0 and info["provenance"]["versions"]["trl"] and "commit" in info["provenance"]
    assert (info["n_train"], info["n_dev"]) == (8, 4)  # the demo recipe renders each trace in both formats
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in evals] == [1, 2]
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    best = min(evals, key=lambda r: r["eval_loss"])
    assert summary["best_checkpoint"].endswith(f"checkpoint-{best['step']}")
    # LoRA B starts at zero: any non-zero B means the optimiser moved the adapter
    w = adapter_tensors(run / "adapter")
    assert any(v.abs().max() > 0 for k, v in w.items() if "lora_B" in k)
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 8
    print(f"SFT: 2 steps + 2 evals in {seconds:.1f} s")


@pytest.mark.slow
def test_cold_start_adapter_merges_into_the_policy(sft_run):
    from clinical_r1.models import load_policy

    run, _ = sft_run
    model, _tok = load_policy({"name": "embedded:smollm2-135m-instruct", "init_adapter": str(run / "adapter"),
                               "init_adapter_mode": "merge"}, lora={"r": 4, "alpha": 8}, seed=0)
    assert list(model.peft_config) == ["default"] and model.peft_config["default"].r == 4


def crash_after_checkpoint(cmd: list[str], checkpoint: Path, timeout: float = 600) -> float:
    """Run ``cmd``; kill -9 it as soon as ``checkpoint`` is complete (trainer_state.json written)."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        while not (checkpoint / "trainer_state.json").is_file():
            if proc.poll() is not None:
                pytest.fail(f"training exited ({proc.returncode}) before {checkpoint.name}: "
                            f"{proc.stderr.read().decode()[-3000:]}")
            if time.time() - t0 > timeout:
                pytest.fail(f"no {checkpoint.name} after {timeout} s")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    return time.time() - t0


@pytest.mark.slow
def test_crpo_logs_rewards_and_resumes_after_kill_9(tmp_path, sft_run):
    """CRPO from the cold-start adapter through the CLI; killed with SIGKILL during step 2 right after
    checkpoint-1 is saved; then resumed (resume: true) to step 2 from checkpoint-1.

    The untrained 135M model never writes the <dx>/<conclusion> format, so every paper reward is 0,
    every group has zero variance and GRPO's gradient is exactly zero. To check that the optimiser
    really moves the LoRA weights, the zero-weight length diagnostic gets a small weight here
    (reward.weights), which gives the groups reward variance; all preset components are still logged.
    """
    from clinical_r1.crpo import run_crpo

    sft_dir, _ = sft_run
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(question(i)) + "\n" for i in range(4)))
    over = {"output_root": str(tmp_path), "data.name": "jsonl", "data.path": str(questions), "data.limit": None,
            "model.init_adapter": str(sft_dir / "adapter"), "model.init_adapter_mode": "continue", "lora.r": 8,
            "reward.weights": {"completion_length": 0.1}, "trainer.max_steps": 2, "trainer.save_steps": 1,
            "trainer.per_device_train_batch_size": 2, "trainer.num_generations": 2,
            "trainer.max_completion_length": 24, "trainer.temperature": 1.0, "trainer.learning_rate": 1e-4,
            "trainer.beta": 0.001}  # the paper's KL (the CPU demo turns it off): kl is logged and checked below
    cli = ["-m", "clinical_r1", "crpo", "--config", str(REPO / "configs/cpu_demo_crpo.yaml")]
    for k, v in over.items():
        cli += ["--set", f"{k}={json.dumps(v)}"]
    run = tmp_path / "cpu_demo_crpo"
    t1 = crash_after_checkpoint(cli, run / "checkpoint-1")
    assert not (run / "checkpoint-2").exists() and not (run / "metrics.json").exists()

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in rows if r["step"] == 1 and "reward" in r)
    for name in ("accuracy", "clinical_reasoning", "consistency", "crpo_format", "cross_reference",
                 "completion_length"):
        assert f"rewards/{name}/mean" in step1, name
    for key in ("reward", "reward_std", "kl", "completions/mean_length", "format_rate", "cross_reference_rate"):
        assert key in step1, key
    assert step1["reward_std"] > 0, "no reward variance: the weight-change check below would be vacuous"
    w0, w1 = adapter_tensors(sft_dir / "adapter"), adapter_tensors(run / "checkpoint-1")
    assert w0.keys() == w1.keys() and any(not (w0[k] == w1[k]).all() for k in w0), "LoRA weights did not change"

    # a line logged after the last checkpoint (lost with the crash) must not survive the resume
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "loss": 123.0, "lost": True}) + "\n")
    t0 = time.time()
    assert run_crpo(REPO / "configs/cpu_demo_crpo.yaml", {**over, "resume": True}) == run
    t2 = time.time() - t0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(r.get("lost") for r in rows)
    assert [r["step"] for r in rows if "reward" in r] == [1, 2]
    assert json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    w2 = adapter_tensors(run / "checkpoint-2")
    assert any(not (w1[k] == w2[k]).all() for k in w1)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["resumed_from"].endswith("checkpoint-1") and summary["global_step"] == 2
    assert json.loads((run / "run_info.json").read_text())["previous"]["run_name"] == "cpu_demo_crpo"
    print(f"CRPO: CLI start + step 1 + checkpoint {t1:.1f} s; resume + step 2 {t2:.1f} s")


def test_trl_config_fields_are_read_from_the_installed_trl():
    from trl import GRPOConfig

    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert {"beta", "loss_type", "multi_objective_aggregation", "num_generations"} <= names
    assert "grpo" in C._supported_loss_types()


@pytest.mark.slow
def test_sft_loss_is_on_completion_tokens_only(tmp_path, embedded_model_dir):
    """The collated labels are -100 on every prompt token and equal the input on the completion."""
    from clinical_r1 import models
    from clinical_r1.sft import build_sft_trainer, load_traces, sft_row

    cfg = demo("sft", tmp_path, **{"data.traces": str(write_tiny_traces(tmp_path / "t.jsonl", 2)), "lora.r": 4})
    rows = [sft_row(r) for r in load_traces(cfg["data"]["traces"])]
    model, tok = models.load_policy(cfg["model"], cfg["lora"])
    tok.padding_side = "right"
    trainer = build_sft_trainer(cfg, C.trainer_args(cfg), model, tok, rows, rows, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    prompt_text = tok.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert (labels[:n_prompt] == -100).all()
    assert (labels[n_prompt:] == ids[n_prompt:]).all()
    target = tok.decode(ids[n_prompt:])
    assert target.startswith("<dx>") and "\\boxed{B}" in target and target.rstrip().endswith("<|im_end|>")


def test_cli_subcommands_and_clear_errors(capsys):
    from clinical_r1.cli import SUBCOMMANDS, build_parser, main

    assert {"sft", "crpo", "merge"} <= set(SUBCOMMANDS)
    parser, _ = build_parser()
    a = parser.parse_args(["crpo", "--config", "x.yaml", "--set", "reward.k=5", "--set", "trainer.max_steps=2"])
    assert a.overrides == ["reward.k=5", "trainer.max_steps=2"]
    assert main(["check-config", str(REPO / "configs/cpu_demo_crpo.yaml"), str(REPO / "configs/cpu_demo_sft.yaml")]) == 0
    assert main(["check-config", str(REPO / "configs/cpu_demo_crpo.yaml"), "--set", "trainer.betta=0.1"]) == 2
    assert main(["crpo", "--config", str(REPO / "configs/cpu_demo_crpo.yaml"), "--set", "reward.preset=nope"]) == 2


def test_resume_skips_an_incomplete_checkpoint(tmp_path):
    from clinical_r1.runs import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for n in (2, 10):
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-11").mkdir()  # killed while saving: no trainer_state.json
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
