"""verl-launch: the generated launch composes in verl 0.9.1's own packaged config, with the authors' values and our
reward, and the parquet rows it writes score through compute_score as verl calls it.

The config check runs tests/verl_compose.py in .venv-verlcfg (verl --no-deps + hydra-core + omegaconf, no torch;
``make verlcfg``, built here when missing, ~10 s from PyPI). It reads the overrides from the generated script
itself (``PRINT_OVERRIDES=1 bash launch.sh``), so what is checked is what a user runs. Not covered by any CPU
test: rollout, FSDP, Ray and training behaviour.
"""

import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from clinical_r1 import verl_launch as L
from clinical_r1.cli import main
from clinical_r1.errors import UsageError
from clinical_r1.rewards import get_preset

REPO = Path(__file__).resolve().parents[1]
VERLCFG = REPO / ".venv-verlcfg"
REWARD_PY = REPO / "clinical_r1" / "verl_reward.py"
OPTS = ["Graves disease", "Hashimoto thyroiditis", "Subacute thyroiditis", "Toxic adenoma"]
RECORDS = [
    {"id": f"q{i}", "question": f"Case {i}: fatigue, TSH 12 mU/L. Diagnosis?", "options": OPTS, "answer": "ABCD"[i % 4],
     "source": "test", "subgroup": "", "explanation": "", "meta": "{}"} for i in range(6)
]
COMPLETIONS = [
    "<dx>\nTSH 12 mU/L with anti-TPO antibodies. A is rejected because Graves suppresses TSH.\n</dx>\n"
    "<conclusion>\nThe TSH 12 mU/L fits. \\boxed{B}\n</conclusion>",
    "<think>x</think><answer>\\boxed{A}</answer>",
    "no format at all",
    "",
]
VERL_MANDATORY_BY_DESIGN = ["reward.reward_model.rollout.name"]  # ??? in verl 0.9.1; read only with a reward model


@pytest.fixture(scope="session")
def verlcfg_python():
    """The config-check environment, built by the Makefile target when missing."""
    py = VERLCFG / "bin" / "python"
    if not (VERLCFG / ".installed-stamp").exists():
        r = subprocess.run(["make", "-s", "verlcfg"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"make verlcfg failed (needs PyPI):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return py


def compose(py, overrides):
    r = subprocess.run([str(py), str(REPO / "tests" / "verl_compose.py")], input=json.dumps(overrides),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def script_overrides(script, **env):
    """What the script passes to verl: bash runs it with PRINT_OVERRIDES=1."""
    e = {**os.environ, "PRINT_OVERRIDES": "1", "REWARD_PY": str(REWARD_PY), **{k: str(v) for k, v in env.items()}}
    r = subprocess.run(["bash", str(script)], env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    d = tmp_path_factory.mktemp("splits")
    for name in ("rl", "dev"):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return d


@pytest.fixture(scope="module")
def paper(splits, tmp_path_factory):
    """The paper launch, written through the command line."""
    out = tmp_path_factory.mktemp("paper")
    assert main(["verl-launch", "--recipe", "paper_3b", "--splits", str(splits), "--out", str(out)]) == 0
    return out


def get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def assert_batch_invariants(c, world):
    n, train, mini = get(c, "actor_rollout_ref.rollout.n"), get(c, "data.train_batch_size"), get(
        c, "actor_rollout_ref.actor.ppo_mini_batch_size")
    assert (train * n) % (mini * n) == 0, "a rollout must be whole PPO mini-batches"
    assert (mini * n) % world == 0 and (train * n) % world == 0, "mini-batches split evenly over the GPUs"


def test_paper_launch_composes_with_the_authors_values(paper, verlcfg_python):
    res = compose(verlcfg_python, script_overrides(paper / "launch.sh", NNODES=2, NGPUS_PER_NODE=4))
    assert res["ok"], res.get("error")
    assert res["verl"] == L.VERL_VERSION
    assert res["missing"] == VERL_MANDATORY_BY_DESIGN
    c = res["config"]
    expected = {
        "algorithm.adv_estimator": "grpo",
        "data.train_batch_size": 512, "data.max_prompt_length": 1024, "data.max_response_length": 4096,
        "data.train_files": str(paper / "data" / "train.parquet"), "data.val_files": str(paper / "data" / "val.parquet"),
        "actor_rollout_ref.rollout.n": 5, "actor_rollout_ref.actor.ppo_mini_batch_size": 16,
        "actor_rollout_ref.actor.optim.lr": 1e-6,
        "actor_rollout_ref.actor.use_kl_loss": True, "actor_rollout_ref.actor.kl_loss_coef": 0.001,
        "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
        "actor_rollout_ref.actor.entropy_coeff": 0.001,  # verl 0.9's default is 0
        "actor_rollout_ref.actor.use_dynamic_bsz": True, "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 24000,
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz": True,
        "actor_rollout_ref.rollout.name": "vllm", "actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.6, "actor_rollout_ref.rollout.temperature": 0.6,
        "actor_rollout_ref.ref.fsdp_config.param_offload": True,
        "actor_rollout_ref.model.lora_rank": 0,  # full-parameter, as the authors
        "actor_rollout_ref.model.path": "results/paper_3b_sft/merged",
        "trainer.total_epochs": 20, "trainer.nnodes": 2, "trainer.n_gpus_per_node": 4, "trainer.use_v1": True,
        "trainer.logger": ["console"],
        "reward.custom_reward_function.path": str(REWARD_PY),
        "reward.custom_reward_function.name": "compute_score",
        "reward.custom_reward_function.reward_kwargs": {"preset": "crpo", "k": 10.0},
        "reward.reward_manager.name": "naive",
        "custom_reward_function.path": None,  # the legacy key, which the main trainer never reads, stays unset
    }
    assert {k: get(c, k) for k in expected} == expected
    assert_batch_invariants(c, world=8)
    assert_batch_invariants(c, world=2 * 4)


def test_without_overrides_verl_leaves_the_rollout_engine_unset(verlcfg_python):
    """The mandatory key the launch fills: composing verl's config bare leaves it ???."""
    res = compose(verlcfg_python, [])
    assert res["ok"] and "actor_rollout_ref.rollout.name" in res["missing"]


def test_removed_and_legacy_keys(paper, verlcfg_python):
    base = script_overrides(paper / "launch.sh")
    res = compose(verlcfg_python, base + ["actor_rollout_ref.actor.fsdp_config.grad_offload=False"])
    assert not res["ok"] and "grad_offload" in res["error"]
    # the command the README documented before: composes, yet leaves verl's reward unset
    res = compose(verlcfg_python, [o for o in base if not o.startswith(("reward.custom_reward_function",
                                                                          "+reward.custom_reward_function"))]
                  + [f"custom_reward_function.path={REWARD_PY}", "custom_reward_function.name=compute_score"])
    assert res["ok"] and get(res["config"], "reward.custom_reward_function.path") is None


def test_every_override_names_its_source_and_the_header_the_dropped_keys(paper):
    lines = (paper / "launch.sh").read_text().splitlines()
    start, end = lines.index("ARGS=("), lines.index(")")
    body = lines[start + 1:end]
    assert len(body) == 2 * len(script_overrides(paper / "launch.sh"))
    for comment, arg in zip(body[::2], body[1::2]):
        assert comment.startswith("  # ") and len(comment) > 6 and arg.startswith('  "'), (comment, arg)
    head = "\n".join(lines[:start])
    for what, why in L.DROPPED:
        assert f"{what}: {why}" in head
    assert not any("grad_offload" in a or "add_bo_think_token" in a or "val_batch_size" in a for a in body[1::2])


def test_lora_and_gdpo_switches(splits, tmp_path, verlcfg_python):
    script = L.write_launch(tmp_path, "paper_3b", splits=splits, lora=True, gdpo=True)
    res = compose(verlcfg_python, script_overrides(script))
    assert res["ok"], res.get("error")
    c = res["config"]
    assert [get(c, f"actor_rollout_ref.model.{k}") for k in ("lora_rank", "lora_alpha", "target_modules")] == [
        32, 16, "all-linear"]
    assert get(c, "actor_rollout_ref.rollout.load_format") == "safetensors"
    assert get(c, "algorithm.adv_estimator") == "gdpo"
    keys, weights = get(c, "algorithm.gdpo_reward_keys"), get(c, "algorithm.gdpo_reward_weights")
    assert keys == ["accuracy", "clinical_reasoning", "consistency"] and weights == [10.0, 1.0, 0.5]
    from clinical_r1.verl_reward import compute_score

    got = compute_score("clinical_r1/medqa", COMPLETIONS[0], "B", {"options": OPTS}, preset="crpo", k=10.0)
    assert set(keys) <= set(got) and got["score"] == sum(w * got[k] for k, w in zip(keys, weights))
    assert "GDPO (--gdpo)" in script.read_text() and "NOT the paper's method" in script.read_text()


def test_smoke_recipe_is_the_same_script_small(splits, tmp_path, verlcfg_python):
    script = L.write_launch(tmp_path, "smoke", splits=splits)
    res = compose(verlcfg_python, script_overrides(script))
    assert res["ok"] and res["missing"] == VERL_MANDATORY_BY_DESIGN, res.get("error")
    c = res["config"]
    assert get(c, "actor_rollout_ref.model.path") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (get(c, "trainer.n_gpus_per_node"), get(c, "actor_rollout_ref.rollout.tensor_model_parallel_size")) == (1, 1)
    assert (get(c, "trainer.total_training_steps"), get(c, "data.train_batch_size"),
            get(c, "actor_rollout_ref.actor.ppo_mini_batch_size"), get(c, "data.max_response_length")) == (3, 8, 8, 1024)
    assert get(c, "actor_rollout_ref.actor.entropy_coeff") == 0.001 and get(c, "actor_rollout_ref.rollout.n") == 5
    assert_batch_invariants(c, world=1)


def _load_like_verl(path, name):
    """verl's load_extern_object: import the file by path under a fresh module name, take the attribute."""
    spec = importlib.util.spec_from_file_location("custom_module", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def test_reward_contract_rows_from_the_launch(paper):
    """Each exported row, scored as verl's naive reward manager calls the function: keywords, the row's
    extra_info plus verl's additions, the config's reward_kwargs taking precedence."""
    fn = _load_like_verl(REWARD_PY, "compute_score")
    kwargs = {"preset": "crpo", "k": 10.0}  # the launch's reward_kwargs (composed in the test above)
    keys = ["score", "acc", *get_preset("crpo").weights]
    rows = pd.read_parquet(paper / "data" / "train.parquet").to_dict("records")
    assert len(rows) == len(RECORDS)
    for row in rows:
        for text in COMPLETIONS:
            info = dict(row["extra_info"])
            info.update(num_turns=None, rollout_reward_scores={})
            got = fn(data_source=row["data_source"], solution_str=text,
                     ground_truth=row["reward_model"]["ground_truth"], extra_info=info, **kwargs)
            assert list(got) == keys and all(isinstance(v, float) and math.isfinite(v) for v in got.values())
    assert fn(data_source="d", solution_str=COMPLETIONS[0], ground_truth="B", extra_info={"options": OPTS},
              **kwargs)["score"] == 10.0 + 1.5 + 0.5 * fn("d", COMPLETIONS[0], "B", {"options": OPTS})["consistency"]


def test_bad_requests_fail_naming_the_option(splits, tmp_path):
    with pytest.raises(UsageError, match="unknown verl recipe 'paper'"):
        L.write_launch(tmp_path, "paper", splits=splits)
    with pytest.raises(UsageError, match=r"no rl\.jsonl"):
        L.write_launch(tmp_path, "paper_3b", splits=tmp_path)
    with pytest.raises(UsageError, match="reward.weights"):
        L.write_launch(tmp_path, "paper_3b", splits=splits, config_overrides=["reward.weights={consistency: 1}"])
    with pytest.raises(UsageError, match="not a whole number of PPO mini-batches"):
        L.write_launch(tmp_path, "paper_3b", splits=splits, config_overrides=["trainer.gradient_accumulation_steps=7",
                                                                            "trainer.per_device_train_batch_size=5"])
    assert not (tmp_path / "launch.sh").exists()


def test_verl_requirements_sit_in_verls_declared_ranges(verlcfg_python):
    """requirements-verl.txt and requirements-verlcfg.txt pin the release whose keys the launch uses, and
    TransferQueue inside the range verl 0.9.1's own metadata declares (read from the installed package)."""
    from packaging.requirements import Requirement

    def pins(name):
        lines = (REPO / name).read_text().splitlines()
        return {(r := Requirement(ln.split("#")[0].strip())).name.lower(): r
                for ln in lines if ln.split("#")[0].strip()}

    verl, cfg = pins("requirements-verl.txt"), pins("requirements-verlcfg.txt")
    assert str(verl["verl"].specifier) == str(cfg["verl"].specifier) == f"=={L.VERL_VERSION}"
    assert "vllm" in verl["verl"].extras
    code = ("import json; from importlib.metadata import requires; "
            "print(json.dumps(requires('verl')))")
    declared = [Requirement(r) for r in json.loads(subprocess.run([str(verlcfg_python), "-c", code],
                                                                  capture_output=True, text=True, check=True).stdout)]
    tq = next(r for r in declared if r.name.lower() == "transferqueue")
    assert tq.specifier.contains(next(iter(verl["transferqueue"].specifier)).version)
