"""``algorithm.aggregation: token-sum-dp-mean`` equals the NFT reference's loss scale on a real
offline step through the trainer at DP=2 with several micro-batches (torchrun, gloo).

Independent reference: the reference's procedure written out with HF transformers -- split the
step's answers over two "GPUs", on each sum every sequence's token losses / 1000 per
micro-batch and accumulate the gradients over its micro-batches, then average the two GPUs'
gradients (FSDP's DP mean) -- and its pre-clip gradient norm and loss.
"""
import pytest
import torch

from megatron_nft.testing import make_tiny_qwen2
from test_train_offline import _metrics, _recipe, _train, _write_offline

pytestmark = pytest.mark.slow
C = 1000.0


def _reference_step(hf, rollouts):
    """(loss, grad norm) of the reference's formula on the step's informative groups."""
    from transformers import AutoModelForCausalLM

    from megatron_nft.algorithms import nft_token_loss
    from megatron_nft.rollout.sources import load_offline_groups

    model = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
    rows = []
    for g in load_offline_groups(str(rollouts)):
        r_hat = sum(r["reward"] > 0 for r in g) / len(g)
        if 0 < r_hat < 1:
            rows += [(r, r_hat) for r in g]
    gpus = [rows[0::2], rows[1::2]]  # any split: the DP mean of per-GPU sums is one total / DP
    grads = [torch.zeros_like(p) for p in model.parameters()]
    total = 0.0
    for shard in gpus:
        for mb in (shard[:3], shard[3:]):  # two micro-batches per GPU, gradients accumulated
            model.zero_grad()
            loss = 0.0
            for r, r_hat in mb:
                ids = torch.tensor([r["prompt_ids"] + r["response_ids"]])
                lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)[:-1]
                lp = lp.gather(-1, ids[0, 1:, None])[len(r["prompt_ids"]) - 1:, 0][None]
                t = nft_token_loss(lp, lp.detach(), torch.tensor([float(r["reward"] > 0)]), torch.tensor([r_hat]),
                                   epsilon=1.0, weighting="1-r", log_ratio_clamp=10.0)
                loss = loss + t.sum() / C  # the sequence's token losses summed, / 1000
            if isinstance(loss, torch.Tensor):
                loss.backward()
                total += loss.item()
                for acc, p in zip(grads, model.parameters()):
                    acc += p.grad / len(gpus)  # FSDP: mean over the DP ranks
    return total / len(gpus), torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item(), len(rows)


def test_reference_scale_equals_the_reference_formula_at_dp2(tmp_path):
    hf = make_tiny_qwen2(tmp_path / "hf", vocab=1100, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32)
    data = _write_offline(tmp_path, n_groups=6, seed=4)
    recipe = _recipe(tmp_path, hf, data)
    common = ["train.prompts_per_step=6", "train.updates_per_rollout=1", "train.micro_batch_tokens=24",
              "train.grad_clip=1e9", "train.warmup_steps=0", "checkpoint.export_hf=false", "train.bf16=false"]
    got = {}
    for agg in ("token-sum-dp-mean", "token-mean"):
        out = tmp_path / agg
        p = _train(2, recipe, f"output.dir={out}", f"algorithm.aggregation={agg}", *common)
        assert "dp 2" in p.stdout + p.stderr
        got[agg] = _metrics(out)[-1]
    ref_loss, ref_norm, n_answers = _reference_step(hf, data)
    m = got["token-sum-dp-mean"]
    assert m["train/grad_norm"] == pytest.approx(ref_norm, rel=1e-4)
    assert m["train/loss"] == pytest.approx(ref_loss, abs=1e-7)  # on-policy NFT: value 0, gradient not
    # the same step at token-mean differs exactly by tokens / (1000 * DP): the scale is the mode's
    tokens = m["train/tokens"]
    assert got["token-mean"]["train/grad_norm"] * tokens / (C * 2) == pytest.approx(ref_norm, rel=1e-4)
    assert n_answers == 20  # 5 of the 6 groups are informative (0 < r-hat < 1)
