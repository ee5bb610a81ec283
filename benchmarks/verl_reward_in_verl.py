"""Our reward inside verl itself: verl 0.9's own loader and naive reward manager score a verl-launch's prompts.

Needs the full verl environment (torch, transformers, Ray: ``make venv-verl``) and a tokenizer, so it is not part
of the CPU suite (verl pins transformers < 5.11; the suite's .venv runs 5.17, and a torch + Ray install per CI run
would not fit the suite's time). CPU is enough; no GPU is used. UNRUN in this repository so far.

    python -m clinical_r1 verl-launch --recipe smoke --splits results/verl_smoke/splits --out results/verl_smoke
    .venv-verl/bin/python benchmarks/verl_reward_in_verl.py results/verl_smoke/launch.sh --tokenizer Qwen/Qwen2.5-0.5B-Instruct

It composes verl's packaged ``ppo_trainer`` config with the script's own overrides, loads ``compute_score`` through
``verl.trainer.ppo.reward.get_custom_reward_fn`` (so the path, name and ``reward_kwargs`` are read where the
trainer reads them), builds one ``DataProto`` per (row, response) with tokenized responses, scores it with
``NaiveRewardManager.run_single`` and checks each result against ``clinical_r1.verl_reward.compute_score``
called directly. Exit 0 and a pass line when every score and extra key matches.
"""

import argparse
import asyncio
import math
import os
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

RESPONSES = [
    "<dx>\nTSH 12 mU/L with anti-TPO antibodies. A is rejected because Graves suppresses TSH.\n</dx>\n"
    "<conclusion>\nThe TSH 12 mU/L fits. \\boxed{B}\n</conclusion>",
    "<think>x</think><answer>\\boxed{A}</answer>",
    "no format at all",
]


def overrides(script: Path) -> list[str]:
    env = {**os.environ, "PRINT_OVERRIDES": "1"}
    return subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, text=True).stdout.splitlines()


def item(tok, row, text):
    from verl import DataProto

    prompt = tok.apply_chat_template(list(row["prompt"]), add_generation_prompt=True, tokenize=True)
    resp = tok(text + tok.eos_token, add_special_tokens=False)["input_ids"]
    mask = torch.ones(1, len(prompt) + len(resp), dtype=torch.long)
    non_tensors = {k: np.array([v], dtype=object) for k, v in
                   (("data_source", row["data_source"]), ("reward_model", dict(row["reward_model"])),
                    ("extra_info", dict(row["extra_info"])))}
    return DataProto.from_dict(tensors={"prompts": torch.tensor([prompt]), "responses": torch.tensor([resp]),
                                        "attention_mask": mask}, non_tensors=non_tensors)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("launch", type=Path)
    ap.add_argument("--tokenizer", required=True, help="the policy's tokenizer (hub id or folder)")
    ap.add_argument("--rows", type=int, default=8)
    a = ap.parse_args()

    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from clinical_r1.verl_reward import compute_score

    cfg_dir = str(Path(distribution("verl").locate_file("verl/trainer/config")).resolve())
    with initialize_config_dir(config_dir=cfg_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides(a.launch))
    fn = get_custom_reward_fn(cfg)
    assert fn is not None, "verl found no custom reward in reward.custom_reward_function"
    kwargs = dict(cfg.reward.custom_reward_function.get("reward_kwargs", {}))
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    manager = NaiveRewardManager(cfg, tok, fn)
    rows = pd.read_parquet(Path(cfg.data.train_files)).head(a.rows).to_dict("records")
    n = 0
    for row in rows:
        for text in RESPONSES:
            out = asyncio.run(manager.run_single(item(tok, row, text)))
            ref = compute_score(row["data_source"], text, row["reward_model"]["ground_truth"],
                                dict(row["extra_info"]), **kwargs)
            got = out["reward_extra_info"]
            assert out["reward_score"] == ref["score"], (row["extra_info"]["id"], out["reward_score"], ref["score"])
            assert set(got) == set(ref) and all(math.isfinite(float(v)) for v in got.values()), got
            n += 1
    print(f"pass: {n} responses scored by verl's NaiveRewardManager through get_custom_reward_fn "
          f"(reward_kwargs {kwargs}), every score and key equal to compute_score")
    return 0


if __name__ == "__main__":
    sys.exit(main())
