"""Shared fixtures.

``embedded_model_dir``: the embedded SmolLM2-135M-Instruct converted once from its GGUF into a plain HF
folder under ``$CLINICAL_R1_CACHE`` (default ``~/.cache/clinical_r1``); ~30 s the first time, instant
afterwards. Tests that train or generate with it are marked ``slow`` (they still run in CI).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from clinical_r1.models import ensure_embedded

    logging.getLogger("clinical_r1").setLevel(logging.INFO)
    return ensure_embedded()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
