"""clinical_r1: reproduce and extend Clinical-R1 / CRPO (arXiv 2512.00601).

The helper package behind the numbered notebooks: data, prompts, the one answer parser, the CRPO
rewards, training (SFT, CRPO/GRPO), generation, evaluation, judging, figures and the papermill pipeline.
Heavy modules (torch, transformers, trl) are imported only by the stages that need them.
"""

__version__ = "0.1.0"

from clinical_r1 import redact as _redact

_redact.install()  # every log line of the process passes through redact(): no URL userinfo, no key
