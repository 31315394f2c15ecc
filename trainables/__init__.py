"""Balancing methods, one file each. Adding a method = one file + one import line below."""

from trainables._registry import METHODS, TRAINABLES, get_method, get_trainable, list_methods, register

# Every method module, imported explicitly so a grep finds them all (timm style).
from trainables import joint  # noqa: E402,F401  joint, unimodal
from trainables import ogm  # noqa: E402,F401  ogm (OGM, OGM-GE, OGM*)
from trainables import opm  # noqa: E402,F401  opm
from trainables import amss  # noqa: E402,F401  amss (AMSS, AMSS+; sampling, mask-unit and scope variants)
from trainables import aim  # noqa: E402,F401  aim (AIM, w/o PAM, w/o DAM, AIM-label)

# Compositions exercised by the registry-wide conformance tests and shipped specs.
COMPOSITIONS = ["opm+ogm"]

__all__ = ["COMPOSITIONS", "METHODS", "TRAINABLES", "get_method", "get_trainable", "list_methods", "register"]
