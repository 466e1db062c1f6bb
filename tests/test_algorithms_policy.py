"""Every algorithm and aggregation mode through the real MegatronPolicy, and the paper's theorem
end to end (tests/dist_scripts/check_algorithms.py does the work in a subprocess).

Independent references: HF transformers log-probs and gradients of the loss written out by
name and by hand (matrix); for the theorem, the other algorithm of each pair (PAPER.md: one
strictly on-policy step of NFT with omega = 1 - r-hat equals Dr. GRPO, with omega = grpo equals
GRPO) -- compared bit for bit on the exported weights.
"""
import json

import pytest
import torch

from _dist_helpers import DIST_SCRIPTS, run_python, run_torchrun
from megatron_nft.testing import make_tiny_qwen2

pytestmark = pytest.mark.slow
SCRIPT = DIST_SCRIPTS / "check_algorithms.py"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_tiny_qwen2(tmp_path_factory.mktemp("alg") / "hf", vocab=300, hidden=64, layers=2)


def test_every_algorithm_and_aggregation_matches_an_independent_computation(hf_dir, tmp_path):
    out = tmp_path / "matrix.json"
    p = run_python(SCRIPT, "matrix", out, hf_dir, timeout=900)
    assert p.returncode == 0, p.output
    rows = json.loads(out.read_text())
    assert {(r["algo"], r["agg"]) for r in rows} == {
        (a, g) for a in ("nft", "rft", "grpo", "drgrpo", "dapo")
        for g in ("token-mean", "seq-mean-token-mean", "token-sum-norm")}
    for r in rows:
        case = f"{r['algo']} / {r['agg']}"
        assert r["n_micro_batches"] > 1, case  # the aggregate must be exact across micro-batches
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-4, abs=1e-6), case
        assert r["grad_norm"] == pytest.approx(r["ref_grad_norm"], rel=1e-4), case
        for k, err in r["grad_err"].items():
            assert err <= 1e-4 * r["grad_scale"][k] + 1e-8, (case, k, err, r["grad_scale"][k])
    # the cases differ from each other: a dispatch that ignored the name or the mode would not
    assert len({round(r["ref_loss"], 6) for r in rows}) >= 12


def _assert_pairs_identical(states):
    assert set(states) == {"nft:1-r", "drgrpo:1-r", "nft:grpo", "grpo:1-r"}
    for a, b in (("nft:1-r", "drgrpo:1-r"), ("nft:grpo", "grpo:1-r")):
        assert states[a].keys() == states[b].keys()
        for k in states[a]:
            assert torch.equal(states[a][k], states[b][k]), (a, b, k)
    # and the step did something: the two pairs moved the weights differently
    assert any(not torch.equal(states["nft:1-r"][k], states["nft:grpo"][k]) for k in states["nft:1-r"])


def test_theorem_nft_equals_drgrpo_and_grpo_bit_for_bit_tp1(hf_dir, tmp_path):
    out = tmp_path / "tp1.pt"
    p = run_torchrun(1, SCRIPT, "theorem", out, hf_dir, 1, 1, timeout=900)
    assert p.returncode == 0, p.output
    _assert_pairs_identical(torch.load(out))


def test_theorem_nft_equals_drgrpo_and_grpo_bit_for_bit_tp2_pp2(hf_dir, tmp_path):
    out = tmp_path / "tp2pp2.pt"
    p = run_torchrun(4, SCRIPT, "theorem", out, hf_dir, 2, 2, timeout=900)
    assert p.returncode == 0, p.output
    _assert_pairs_identical(torch.load(out))
