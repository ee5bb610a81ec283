"""Compose verl's packaged ``ppo_trainer`` config with Hydra overrides, without importing torch or verl's trainer.

Run by tests/test_verl_launch.py in the small environment ``.venv-verlcfg`` (verl --no-deps, hydra-core,
omegaconf; ``make verlcfg``):

    .venv-verlcfg/bin/python tests/verl_compose.py < overrides.json     # a JSON list of override strings

Prints one JSON object: ``{"ok": true, "verl": version, "missing": [keys left ???], "config": {...resolved}}``
or ``{"ok": false, "error": "..."}``. verl's config folder is found from the installed package's files, not by
importing ``verl`` (its ``__init__`` imports torch and Ray).
"""

import json
import sys
from importlib.metadata import distribution, version
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf


def config_dir() -> Path:
    dist = distribution("verl")
    return Path(dist.locate_file("verl/trainer/config")).resolve()


def main() -> int:
    overrides = json.load(sys.stdin)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose(config_name="ppo_trainer", overrides=overrides)
        missing = sorted(OmegaConf.missing_keys(cfg))
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as e:  # reported to the test as data: the test asserts on it
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return 0
    print(json.dumps({"ok": True, "verl": version("verl"), "missing": missing, "config": out}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
