"""Command line: one subcommand per stage.

    python -m clinical_r1 split --train medqa:path/to/train.jsonl --eval medqa --eval medmcqa --out data/splits
    python -m clinical_r1 sft   --config configs/cpu_demo_sft.yaml  [--set trainer.max_steps=4 ...]
    python -m clinical_r1 crpo  --config configs/cpu_demo_crpo.yaml [--set reward.preset=grpo ...]
    python -m clinical_r1 merge --adapter results/cpu_demo_crpo/adapter --out results/cpu_demo_crpo/merged
    python -m clinical_r1 check-config configs/*.yaml              # validate recipes without training

Add a stage by writing ``add_<name>(subparsers)`` that registers its arguments and returns the function
to call with the parsed namespace, and listing it in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

Handler = Callable[[argparse.Namespace], Any]


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML recipe (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, dotted for sections (trainer.max_steps=2); repeatable")


def add_sft(sub: Any) -> Handler:
    p = sub.add_parser("sft", help="cold-start LoRA SFT on reasoning traces")
    _add_recipe_args(p)

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.sft import run_sft

        return run_sft(a.config, a.overrides)

    return run


def add_crpo(sub: Any) -> Handler:
    p = sub.add_parser("crpo", help="CRPO/GRPO reinforcement learning with a reward preset")
    _add_recipe_args(p)

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.crpo import run_crpo

        return run_crpo(a.config, a.overrides)

    return run


def add_merge(sub: Any) -> Handler:
    p = sub.add_parser("merge", help="merge a trained LoRA adapter (and the cold-start adapter under it) into its base")
    p.add_argument("--adapter", required=True, help="adapter or checkpoint-N folder (adapter_config.json)")
    p.add_argument("--out", required=True, help="output folder for the merged model")
    p.add_argument("--base", default=None, help="base model (default: the one the adapter was trained on)")
    p.add_argument("--dtype", default=None, help="auto | float32 | bfloat16 | float16 (default: the training dtype)")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.models import merge_lora

        return merge_lora(a.adapter, a.out, base=a.base, dtype=a.dtype)

    return run


def add_check_config(sub: Any) -> Handler:
    p = sub.add_parser("check-config", help="validate recipes and build their TRL configs (no training)")
    p.add_argument("configs", nargs="+")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cpu-safe", action="store_true", help="add use_cpu=True so GPU recipes (bf16) build on a CPU-only machine")
    p.add_argument("--check-paths", action="store_true",
                   help="a missing input path is an error (default: a warning; it may be an earlier stage's output)")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.config import check_paths, load_config, recipe_warnings, trainer_args

        for path in a.configs:
            cfg = load_config(path, a.overrides)
            args = trainer_args(cfg, cpu_safe=a.cpu_safe)
            for missing in check_paths(cfg, missing_ok=not a.check_paths):
                logging.getLogger("clinical_r1").warning("%s: %s", path, missing)
            for warning in recipe_warnings(cfg):
                logging.getLogger("clinical_r1").warning("%s: %s", path, warning)
            logging.getLogger("clinical_r1").info("%s: ok (%s, stage %s)", path, type(args).__name__, cfg["stage"])
        return len(a.configs)

    return run


def _name_path(spec: str) -> tuple[str, str | None]:
    name, _, path = spec.partition(":")
    return name, path or None


def add_split(sub: Any) -> Handler:
    p = sub.add_parser("split", help="the paper's split (SFT half, RL half, dev) + evaluation sets + decontamination")
    p.add_argument("--train", required=True, metavar="NAME[:PATH]", help="training benchmark, e.g. medqa or medqa:train.jsonl")
    p.add_argument("--eval", action="append", default=[], metavar="NAME[:PATH]", help="evaluation set; repeatable")
    p.add_argument("--out", required=True, help="output folder (sft/rl/dev.jsonl, eval/, manifest.json)")
    p.add_argument("--sizes", default="5000,5000,178", help="sft,rl,dev[,test] (default: the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-limit", type=int, default=None, help="keep the first N items of each evaluation set")
    p.add_argument("--allow-overlap", action="store_true", help="proceed despite train/eval overlap (recorded)")

    def run(a: argparse.Namespace) -> Any:
        from clinical_r1.data import DataError
        from clinical_r1.study import prepare_data

        try:
            sizes = dict(zip(("sft", "rl", "dev", "test"), (int(x) for x in a.sizes.split(","))))
        except ValueError:
            raise DataError(f"--sizes {a.sizes!r}: expected integers sft,rl,dev[,test]") from None
        train, path = _name_path(a.train)
        return prepare_data(a.out, train_benchmark=train, train_path=path, split_sizes=sizes,
                            eval_benchmarks=dict(_name_path(e) for e in a.eval), eval_limit=a.eval_limit,
                            seed=a.seed, allow_overlap=a.allow_overlap)["files"]

    return run


# name -> registrar; other stages (split, generate, evaluate, judge) add themselves here
SUBCOMMANDS: dict[str, Callable[[Any], Handler]] = {
    "split": add_split,
    "sft": add_sft,
    "crpo": add_crpo,
    "merge": add_merge,
    "check-config": add_check_config,
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(prog="python -m clinical_r1", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers = {name: register(sub) for name, register in SUBCOMMANDS.items()}
    for p in sub.choices.values():  # -v also after the subcommand; SUPPRESS keeps a -v given before it
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging; tracebacks")
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when done; 2 for a user error (one line naming the key or file; a traceback with ``-v``)."""
    from clinical_r1.cli import run_cli, setup_logging

    parser, handlers = build_parser()
    a = parser.parse_args(argv)
    setup_logging(a.verbose)
    result: list[Any] = []
    code = run_cli(lambda: result.append(handlers[a.command](a)), verbose=a.verbose)
    if code == 0 and result and result[0] is not None:
        print(result[0])  # the CLI's answer (a run folder, a model folder) for shell scripts
    return code


if __name__ == "__main__":
    sys.exit(main())
