"""Merge candidates on real data: LFW (../shared/lfw, dlib descriptors). Skips where it is absent.

LFW files some people under two names. Looking at the candidates' photos, these pairs are one
person (name variants or a photo filed twice) and must rank near the top at threshold 0.95."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset_checks.rules import Rules
from dataset_checks.session import CheckSession

LFW = Path(__file__).resolve().parents[2] / "shared" / "lfw"
ONE_PERSON = [
    ("Joseph_Blatter", "Sepp_Blatter"),
    ("Felipe_De_Borbon", "Prince_Felipe"),
    ("John_Barnett", "John_Burnett"),
    ("Choi_Sung-hong", "Sung_Hong_Choi"),
    ("Carlos_Beltran", "Raul_Ibanez"),  # one photo under two names
    ("Bart_Hendricks", "Ricky_Ray"),
    ("Mireya_Elisa_Moscoso_Rodriguez", "Mireya_Moscoso"),
    ("Hasan_Wirayuda", "Hassan_Wirajuda"),
]


@pytest.mark.skipif(not LFW.is_dir(), reason=f"LFW is not at {LFW} (shared material, absent in a user's clone)")
def test_lfw_name_variants_rank_near_the_top():
    session = CheckSession(Rules(dataset=LFW, threshold=0.95), progress=False)
    findings = session.findings()
    assert findings.metadata["verification"]["recall"] == 1.0
    ranked = [(c.identity, c.other_identity) for c in session.merge_candidates()]
    assert len(ranked) > 500
    ranks = {pair: ranked.index(pair) for pair in ONE_PERSON}
    assert max(ranks.values()) < 30, ranks
    assert ranked.index(("Nan_Wang", "Wang_Nan")) < 60
