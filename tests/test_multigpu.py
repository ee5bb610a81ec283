"""Multi-process launch: the accelerate configs, and one CRPO step in two CPU processes (gloo) through the CLI.

    .venv/bin/pytest tests/test_multigpu.py -m slow      # the two-process run (about 1-2 minutes on 2 cores)

The same entry point as a single-process run, unchanged, launched by accelerate's torchrun launcher:

    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \\
        -m clinical_r1 crpo --config configs/cpu_demo_crpo.yaml --set ...

(``ACCELERATE_USE_CPU=true`` makes the trainer pick MULTI_CPU + gloo; see cpu_2proc.yaml.)
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ACCEL = REPO / "configs" / "accelerate"
CPU_RECIPE = REPO / "configs" / "cpu_demo_crpo.yaml"
EXPECTED = {
    "ddp.yaml": ("MULTI_GPU", None),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 2),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 3),
    "cpu_2proc.yaml": ("MULTI_GPU", None),  # torchrun launcher; ACCELERATE_USE_CPU=true selects gloo
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_parses_and_names_the_right_keys(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ACCEL / name
    raw = yaml.safe_load(path.read_text())
    dist, stage = EXPECTED[name]
    assert raw["distributed_type"] == dist and raw["num_processes"] >= 2 and raw["num_machines"] == 1
    assert raw["mixed_precision"] in ("no", "bf16", "fp16") and raw["compute_environment"] == "LOCAL_MACHINE"
    if stage is not None:
        ds = raw["deepspeed_config"]
        assert ds["zero_stage"] == stage and ds["offload_optimizer_device"] in ("none", "cpu")
        assert ds["zero3_init_flag"] is (stage == 3)
        assert raw["mixed_precision"] == "bf16"
    assert raw["use_cpu"] is (name == "cpu_2proc.yaml")
    cfg = load_config_from_file(str(path))  # accelerate's own loader accepts every key
    assert cfg.distributed_type.value == dist and cfg.num_processes == raw["num_processes"]
    assert "-m clinical_r1 crpo --config" in path.read_text()  # documents the unchanged entry point


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_missing() -> str | None:
    """Why the CRPO CLI cannot be launched yet, or None when it is there."""
    if not (REPO / "clinical_r1" / "__main__.py").is_file():
        return "clinical_r1/__main__.py (the `python -m clinical_r1` CLI) is not present yet"
    r = subprocess.run([sys.executable, "-m", "clinical_r1", "crpo", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0 and "invalid choice" in r.stderr:
        return "the CLI has no `crpo` subcommand yet"
    return None


@pytest.mark.slow
def test_one_crpo_step_in_two_cpu_processes(tmp_path):
    reason = _cli_missing()
    if reason:
        pytest.skip(reason)
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = [str(accelerate), "launch"] if accelerate.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    overrides = ["model.init_adapter=null", f"output_root={tmp_path}", "run_name=ddp2", "overwrite=false",
                 "data.limit=4", "trainer.max_steps=1", "trainer.max_completion_length=16",
                 "trainer.per_device_train_batch_size=4",
                 "trainer.save_strategy='no'", "trainer.log_level=info"]
    cmd = [*launcher, "--config_file", str(ACCEL / "cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
           "-m", "clinical_r1", "crpo", "--config", str(CPU_RECIPE)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    # the main process reports the global batch: 4 completions per device x 2 processes
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in out, out[-4000:]
    run = tmp_path / "ddp2"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == [1], lines  # logged once (by rank 0), one optimiser step
    assert json.loads((run / "metrics.json").read_text())["summary"]["global_step"] == 1
    assert (run / "adapter" / "adapter_config.json").is_file()
