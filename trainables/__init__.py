"""Balancing methods, one file each, installed as ``mmtune.trainables``.

Adding a method = one file that ``@register``s its strategy + one import line below (timm style: a
grep finds them all). Importing this package registers every built-in method; it does not import Ray.
"""

from mmtune.engine.registry import METHODS, get_method, list_methods, register

# Every method module, imported explicitly so a grep finds them all.
from mmtune.trainables import joint  # noqa: E402,F401  joint, unimodal
from mmtune.trainables import ogm  # noqa: E402,F401  ogm (OGM, OGM-GE, OGM*)
from mmtune.trainables import opm  # noqa: E402,F401  opm
from mmtune.trainables import amss  # noqa: E402,F401  amss (AMSS, AMSS+; sampling, mask-unit and scope variants)
from mmtune.trainables import aim  # noqa: E402,F401  aim (AIM, w/o PAM, w/o DAM, AIM-label)
from mmtune.trainables import pmr  # noqa: E402,F401  pmr (PMR: prototypical modal rebalance)
from mmtune.trainables import agm  # noqa: E402,F401  agm (AGM: Shapley responses, adaptive gradient modulation)
from mmtune.trainables import ume  # noqa: E402,F401  ume (uni-modal ensemble: one stage per modality)
from mmtune.trainables import mbsd  # noqa: E402,F401  mbsd (MBSD: confidence-gap-weighted self-distillation between uni-modal predictions)
from mmtune.trainables import lfm  # noqa: E402,F401  lfm (LFM: learned / heuristic integration of alignment and CE losses)
from mmtune.trainables import umt  # noqa: E402,F401  umt (UMT: uni-modal teacher stages, then a student with feature distillation, λ)
from mmtune.trainables import reconboost  # noqa: E402,F401  reconboost (ReconBoost: alternating modality boosting with reconcilement + global rectification)
from mmtune.trainables import valuation  # noqa: E402,F401  valuation (sample-/modality-level Shapley valuation, re-sampling low contributors)
from mmtune.trainables import relearn  # noqa: E402,F401  relearn (Diagnosing & Re-learning: purity-gap-diagnosed soft re-initialisation of the encoders)
from mmtune.trainables import mla  # noqa: E402,F401  mla (MLA: alternating uni-modal steps through a shared head, entropy-weighted test-time fusion)
from mmtune.trainables import amco  # noqa: E402,F401  amco (AMCo: modal-dependence class masks on the dominant logits + unimodal co-optimisation)
from mmtune.trainables import greedy  # noqa: E402,F401  greedy (Greedy: conditional learning speed, re-balancing steps)
from mmtune.trainables import cml  # noqa: E402,F401  cml (CML: confidence ranking regulariser, λ)
from mmtune.trainables import gblending  # noqa: E402,F401  gblending (G-Blending: OGR-weighted blended losses)
from mmtune.trainables import mmcosine  # noqa: E402,F401  mmcosine (MMCosine: cosine logits, scale s)
from mmtune.trainables import mmpareto  # noqa: E402,F401  mmpareto (MMPareto: Pareto integration + magnitude rule)

# Compositions exercised by shipped specs (every composable pair is tested in tests/trainables).
COMPOSITIONS = ["opm+ogm", "opm+amss", "aim+ogm"]

__all__ = ["COMPOSITIONS", "METHODS", "get_method", "list_methods", "register"]
