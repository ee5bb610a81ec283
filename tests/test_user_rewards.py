"""Bring your own reward: rewards named by import path or registered in a notebook kernel train beside the paper's,
validated before training, stopped with the step and row when they fail, and passed through the verl export.

    .venv/bin/pytest tests/test_user_rewards.py -q                   # seconds

Training with the example user reward, and its move on held-out questions, is in tests/test_rl_effect.py.
"""

from __future__ import annotations

import json
import importlib
import math
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from clinical_r1 import rewards
from clinical_r1.config import ConfigError, load_config, portable_rewards, reward_preset, trainer_kwargs
from clinical_r1.rewards import RewardError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = "clinical_r1.examples.rewards:contradicts_dx"
OPTS = ["Hypothyroidism", "Graves disease", "Addison disease", "Cushing syndrome"]
DX = "TSH 12 mU/L points to hypothyroidism. Graves disease is unlikely given the high TSH."


def crpo(dx: str, letter: str) -> str:
    return f"<dx>{dx}</dx><conclusion>TSH 12 mU/L decides it. \\boxed{{{letter}}}</conclusion>"


def cfg(tmp_path, **over):
    return load_config(REPO / "configs" / "cpu_demo_crpo.yaml", {"output_root": str(tmp_path), **over})


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A researcher's module of rewards, good and bad, importable as ``myrewards``."""
    (tmp_path / "myrewards.py").write_text(textwrap.dedent('''
        import math
        from clinical_r1.rewards import register_reward

        def guideline(completions, **kwargs):
            return [1.0 if "guideline" in str(c) else 0.0 for c in completions]

        def no_kwargs(completions, answer):
            return [0.0 for _ in completions]

        def positional_only(completions, /, **kwargs):
            return [0.0 for _ in completions]

        def needs_column(completions, guideline_text, **kwargs):
            return [0.0 for _ in completions]

        def nan_reward(completions, **kwargs):
            return [math.nan for _ in completions]

        def short(completions, **kwargs):
            return [0.0]

        def raises(completions, id, **kwargs):
            return [1 / 0 if i in ("sample-003", "sample/2") else 0.0 for i in id]

        def accuracy(completions, **kwargs):
            return [0.0 for _ in completions]

        NOT_CALLABLE = 3

        @register_reward(name="grpo_tags", format="grpo")
        def reads_grpo(completions, **kwargs):
            return [0.0 for _ in completions]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "myrewards"
    sys.modules.pop("myrewards", None)
    for name in list(rewards.USER_REWARDS):
        if name not in ("contradicts_dx", "concise_answer"):
            rewards.USER_REWARDS.pop(name)
            rewards.USER_SOURCES.pop(name, None)


def probe_rows(prompt: str = "crpo"):
    from clinical_r1.crpo import add_prompts, load_train_dataset

    ds = add_prompts(load_train_dataset({"name": "sample", "path": None, "split": "train", "limit": 4}), prompt)
    return [ds[i] for i in range(len(ds))]


# ---------------------------------------------------------------------------------------------------
# The extension point
# ---------------------------------------------------------------------------------------------------


def test_a_reward_by_import_path_trains_beside_the_preset(tmp_path):
    c = cfg(tmp_path, **{"reward.functions": {EXAMPLE: -2.0}, "reward.k": 5})
    p = reward_preset(c)
    assert list(p.weights)[0] == "accuracy" and p.weights["accuracy"] == 5.0  # k stays the accuracy weight
    assert p.weights["contradicts_dx"] == -2.0 and p.sources == {"contradicts_dx": EXAMPLE} and p.prompt == "crpo"
    assert trainer_kwargs(c)["reward_weights"] == p.weight_list()
    assert [f.__name__ for f in p.functions()][-1] == "contradicts_dx"  # TRL logs rewards/contradicts_dx/mean
    # the same name works in reward.weights (by name or by path)
    assert reward_preset(cfg(tmp_path, **{"reward.functions": {EXAMPLE: -2.0},
                                          "reward.weights": {"contradicts_dx": -4.0}})).weights["contradicts_dx"] == -4.0
    assert reward_preset(cfg(tmp_path, **{"reward.functions": {EXAMPLE: -2.0},
                                          "reward.weights": {EXAMPLE: -1.0}})).weights["contradicts_dx"] == -1.0


def test_the_example_penalises_a_conclusion_that_boxes_a_rejected_option():
    from clinical_r1.examples.rewards import contradicts_dx, rejected_options

    assert rejected_options(DX, OPTS) == {"B"}
    assert rejected_options("Not B but C.", ["x" * 5, "y" * 5, "z" * 5]) == set()  # names two options: neither
    got = contradicts_dx([crpo(DX, "B"), crpo(DX, "A"), "\\boxed{B}"], options=[OPTS] * 3)
    assert got == [1.0, 0.0, 0.0]
    assert rewards.get_reward(EXAMPLE)([crpo(DX, "B")], options=[OPTS]) == [1.0]


def test_a_registered_name_is_recorded_by_import_path_when_it_has_one(tmp_path, user_module, caplog):
    importlib.import_module(user_module)  # its decorator registers grpo_tags
    c = cfg(tmp_path, **{"reward.functions": {"grpo_tags": 1.0}, "reward.preset": "grpo"})  # registered on import
    assert portable_rewards(c)["reward"]["functions"] == {"myrewards:reads_grpo": 1.0}
    rewards.register_reward(lambda completions, **kw: [0.0] * len(completions), name="kernel_only")
    c = cfg(tmp_path, **{"reward.functions": {"kernel_only": 1.0}})
    assert portable_rewards(c)["reward"]["functions"] == {"kernel_only": 1.0}
    assert "defined in this process only" in caplog.text
    rewards.USER_REWARDS.pop("kernel_only")
    with pytest.raises(ConfigError, match="unknown reward 'kernel_only'.*register"):
        cfg(tmp_path, **{"reward.functions": {"kernel_only": 1.0}})  # another kernel: not registered there


def test_without_a_preset_the_functions_are_the_reward(tmp_path):
    c = cfg(tmp_path, **{"reward.preset": None, "reward.prompt": "direct",
                         "reward.functions": {"clinical_r1.examples.rewards:concise_answer": 1.0}})
    p = reward_preset(c)
    assert p.weights == {"concise_answer": 1.0} and p.prompt == "direct" and p.accuracy_reward == "concise_answer"
    p = reward_preset(cfg(tmp_path, **{"reward.preset": None, "reward.functions": {EXAMPLE: -1.0}}))
    assert p.prompt == "crpo"  # the format the function declares


# ---------------------------------------------------------------------------------------------------
# Validation before training: one line each, naming the reward and the fix
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref, message", [
    ("nomodule_xyz:f", r"reward 'nomodule_xyz:f': cannot import module 'nomodule_xyz'.*PYTHONPATH"),
    ("myrewards:missing", r"module 'myrewards' has no 'missing'; check the name after ':'"),
    ("myrewards:NOT_CALLABLE", r"is a int, not a callable"),
    ("myrewards:no_kwargs", r"reward 'no_kwargs'\(completions, answer\): add \*\*kwargs"),
    ("myrewards:positional_only", r"argument 'completions' is positional-only.*drop the '/'"),
    ("myrewards:accuracy", r"its name 'accuracy' shadows the built-in reward 'accuracy'.*register_reward\(name=...\)"),
])
def test_config_time_failures(tmp_path, user_module, ref, message):
    with pytest.raises(ConfigError, match=message) as e:
        cfg(tmp_path, **{"reward.functions": {ref: 1.0}})
    assert "\n" not in str(e.value)


def test_a_format_mismatch_and_a_shadowing_registration(tmp_path, user_module):
    with pytest.raises(ConfigError, match=r"reward 'grpo_tags' reads the 'grpo' answer format but the run prompts "
                                          r"for 'crpo': set reward.prompt=grpo"):
        cfg(tmp_path, **{"reward.functions": {"myrewards:reads_grpo": 1.0}})
    with pytest.raises(RewardError, match="shadows the built-in reward 'consistency'"):
        rewards.register_reward(lambda completions, **kw: [], name="consistency")


@pytest.mark.parametrize("name, message", [
    ("needs_column", r"TRL cannot fill the argument 'guideline_text'.*give it a default or add the column"),
    ("nan_reward", r"returned nan on a probe batch of the training data, row 0 \(id 'sample-001'\); return a finite"),
    ("short", r"returned 1 values for 12 completions on a probe batch"),
    ("raises", r"raised on a probe batch of the training data, row 6 \(id 'sample-003'\): ZeroDivisionError"),
])
def test_probe_batch_failures(user_module, name, message):
    rewards.load_reward(f"myrewards:{name}")
    with pytest.raises(RewardError, match=message):
        rewards.probe_reward(name, probe_rows(), "crpo")


def test_the_example_passes_the_probe():
    rewards.probe_reward(rewards.load_reward(EXAMPLE), probe_rows(), "crpo")


def test_a_reward_that_fails_mid_run_names_the_step_the_reward_and_the_row(user_module):
    guarded = rewards.CheckedReward(rewards.get_reward(rewards.load_reward("myrewards:raises")), "raises")
    state = SimpleNamespace(global_step=6)
    ok = guarded(completions=["a", "b"], id=["sample/0", "sample/1"], trainer_state=state)
    assert ok == [0.0, 0.0]
    with pytest.raises(RewardError, match=r"reward 'raises' raised at step 7, row 1 \(id 'sample/2'\): ZeroDivision"):
        guarded(completions=["a", "b"], id=["sample/1", "sample/2"], trainer_state=state)
    nan = rewards.CheckedReward(lambda completions, **kw: [0.0, None, math.inf], "nan_reward")
    with pytest.raises(RewardError, match=r"reward 'nan_reward' returned inf at step 7, row 2"):
        nan(completions=["a", "b", "c"], trainer_state=state)


# ---------------------------------------------------------------------------------------------------
# A reward registered in a papermill-executed notebook
# ---------------------------------------------------------------------------------------------------


def test_a_reward_registered_in_a_notebook_kernel(tmp_path):
    import nbformat
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('out = "x.json"\nweight = 1.0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(textwrap.dedent('''
        import json
        from clinical_r1.config import load_config, reward_preset
        from clinical_r1.crpo import add_prompts, load_train_dataset
        from clinical_r1.rewards import probe_reward, register_reward

        @register_reward(format="crpo")
        def cites_tsh(completions, **kwargs):
            return [1.0 if "TSH" in str(c) else 0.0 for c in completions]

        cfg = load_config("configs/cpu_demo_crpo.yaml", {"reward.functions": {"cites_tsh": weight}})
        preset = reward_preset(cfg)
        ds = add_prompts(load_train_dataset(cfg["data"]), preset.prompt)
        probe_reward("cites_tsh", [ds[0], ds[1]], preset.prompt)
        scores = preset.functions()[-1](completions=["TSH 12", "none"])
        json.dump({"weights": preset.weights, "sources": preset.sources, "scores": scores}, open(out, "w"))
    '''))]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    src = tmp_path / "register.ipynb"
    nbformat.write(nb, src)
    out = tmp_path / "got.json"
    pm.execute_notebook(str(src), str(tmp_path / "ran.ipynb"), parameters={"out": str(out), "weight": 0.5},
                        cwd=str(REPO), progress_bar=False, kernel_name="python3")
    got = json.loads(out.read_text())
    assert got["weights"]["cites_tsh"] == 0.5 and got["sources"] == {"cites_tsh": "cites_tsh"}  # kernel only
    assert got["scores"] == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------------
# verl: the export passes the user reward through compute_score
# ---------------------------------------------------------------------------------------------------


def test_verl_round_trip_with_a_user_reward(tmp_path):
    import shlex

    from clinical_r1 import verl_launch as L
    from clinical_r1.verl_reward import compute_score

    c = load_config(REPO / "configs" / "paper_3b_crpo.yaml", {"reward.functions": {EXAMPLE: -2.0}})
    over = {o.key: o.value for o in L.from_config(c, gdpo=True)}
    raw = over["reward.custom_reward_function.reward_kwargs.functions"]
    assert json.loads(shlex.split(raw)[0]) == {EXAMPLE: -2.0}
    assert "contradicts_dx" in over["algorithm.gdpo_reward_keys"]
    kwargs = {"preset": "crpo", "k": 10.0, "functions": shlex.split(raw)[0]}  # Hydra hands the quoted JSON back
    bad, good = (compute_score("clinical_r1/medqa", crpo(DX, x), "A", {"options": OPTS}, **kwargs) for x in "BA")
    assert bad["contradicts_dx"] == 1.0 and good["contradicts_dx"] == 0.0
    plain = compute_score("clinical_r1/medqa", crpo(DX, "B"), "A", {"options": OPTS}, preset="crpo", k=10.0)
    assert bad["score"] == pytest.approx(plain["score"] - 2.0) and "contradicts_dx" not in plain
    assert list(bad)[-1] == "contradicts_dx"


# The example reward training and moving on held-out questions: tests/test_rl_effect.py (the RL wiring test trains
# with it beside completion_length, both directions).
