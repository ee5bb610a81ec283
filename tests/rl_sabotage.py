"""A pytest plugin that breaks TRL's advantage the way a wiring bug would, to show the RL wiring test fails then.

    RL_SABOTAGE=shuffle PYTHONPATH=tests .venv/bin/pytest -p rl_sabotage tests/test_rl_effect.py   # must fail
    RL_SABOTAGE=flip    PYTHONPATH=tests .venv/bin/pytest -p rl_sabotage tests/test_rl_effect.py   # must fail

flip:    the advantage's sign is negated (a reward sign error)
shuffle: the advantages are permuted across the batch's completions (rewards aligned to the wrong completions)

Without ``RL_SABOTAGE`` it does nothing. Not a test module (pytest never collects it): load it with ``-p``.
"""

import os

MODE = os.environ.get("RL_SABOTAGE", "")

if MODE:
    import torch
    from trl import GRPOTrainer

    if MODE not in ("flip", "shuffle"):
        raise ValueError(f"RL_SABOTAGE={MODE!r}: choose flip or shuffle")
    _original = GRPOTrainer._generate_and_score_completions

    def _sabotaged(self, inputs):
        out = _original(self, inputs)
        adv = out["advantages"]
        if MODE == "flip":
            out["advantages"] = -adv
        else:
            g = torch.Generator().manual_seed(int(self.state.global_step))
            out["advantages"] = adv[torch.randperm(adv.shape[0], generator=g)]
        return out

    GRPOTrainer._generate_and_score_completions = _sabotaged
