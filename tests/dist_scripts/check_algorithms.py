"""Every algorithm through the real MegatronPolicy (megatron-core on gloo).

``matrix OUT HF``  (one process, TP1): for every algorithm x aggregation mode, one optimizer
    step on the same batch (several micro-batches, off-policy old log-probs so ratios leave the
    clip range); writes the policy's loss / pre-clip grad norm / two full gradients next to an
    INDEPENDENT computation of the same loss: HF transformers log-probs, the algorithm's
    token-loss function picked by name here (not by the registry), and the aggregation written
    out as plain sums (not ``aggregate`` / ``aggregation_weights``).

``theorem OUT HF TP PP`` (torchrun): one strictly on-policy step (pi_old = pi_theta, one update)
    of nft(1-r), drgrpo, nft(grpo weighting) and grpo from the same weights; rank 0 writes the
    four exported HF state dicts (PAPER.md: NFT with omega = 1 - r-hat has the gradient of
    Dr. GRPO, with omega = sqrt((1-r)/r) that of GRPO).
"""
import json
import sys

import torch

ALGOS = ("nft", "rft", "grpo", "drgrpo", "dapo")
AGGS = ("token-mean", "seq-mean-token-mean", "token-sum-norm")


def make_samples(vocab: int, seed: int = 0):
    from megatron_nft.types import Sample

    g = torch.Generator().manual_seed(seed)
    correct = [[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 1]]
    out = []
    for gi, cs in enumerate(correct):
        prompt = torch.randint(3, vocab, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist()
        r_hat = sum(cs) / len(cs)
        for c in cs:
            resp = torch.randint(3, vocab, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
            out.append(Sample(tokens=prompt + resp, prompt_len=len(prompt), correct=bool(c), reward=float(c),
                              r_hat=r_hat, group=gi))
    return out


def recipe(hf, algo, agg, **train):
    from megatron_nft.config import load_config

    sets = [f"model.hf_path={hf}", f"algorithm.name={algo}", f"algorithm.aggregation={agg}",
            "algorithm.loss_constant=7.0", "algorithm.epsilon=0.8", "train.lr=1e-3", "train.warmup_steps=0",
            "train.weight_decay=0.0", "train.grad_clip=1e9", "train.micro_batch_tokens=40"]
    sets += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, sets)


def policy_for(cfg, hf_config, hf):
    from megatron_nft.megatron.policy import MegatronPolicy

    policy = MegatronPolicy(cfg, hf_config, total_updates=4)
    policy.load_weights(hf)
    return policy


def hf_logprobs(model, samples):
    """Per-sample response-token log-probs from HF transformers (grad-carrying)."""
    out = []
    for s in samples:
        ids = torch.tensor([s.tokens])
        logits = model(input_ids=ids).logits[0].float()
        lp = torch.log_softmax(logits, -1)[:-1].gather(-1, ids[0, 1:, None])[:, 0]
        out.append(lp[s.prompt_len - 1:])
    return out


def reference_loss(algo, agg, lps, samples, cfg):
    """The aggregated loss, by name and by hand."""
    from megatron_nft.algorithms import grpo_token_loss, nft_token_loss, rft_token_loss

    a = cfg.algorithm
    per_seq = []
    for lp, s in zip(lps, samples):
        lp2, old = lp[None], torch.tensor(s.old_logprobs)[None]
        c, r, adv = torch.tensor([float(s.correct)]), torch.tensor([s.r_hat]), torch.tensor([s.advantage])
        if algo == "nft":
            t = nft_token_loss(lp2, old, c, r, epsilon=0.8, weighting=a.weighting, log_ratio_clamp=a.log_ratio_clamp)
        elif algo == "rft":
            t = rft_token_loss(lp2, c)
        else:
            t = grpo_token_loss(lp2, old, adv, clip_low=0.2, clip_high=0.28 if algo == "dapo" else 0.2)
        per_seq.append(t[0])
    if agg == "token-mean":
        return sum(t.sum() for t in per_seq) / sum(t.numel() for t in per_seq)
    if agg == "seq-mean-token-mean":
        return sum(t.mean() for t in per_seq) / len(per_seq)
    return sum(t.sum() for t in per_seq) / 7.0


def set_advantages(samples, std: bool):
    for g in {s.group for s in samples}:
        rs = [s.reward for s in samples if s.group == g]
        mean = sum(rs) / len(rs)
        sd = (sum((r - mean) ** 2 for r in rs) / len(rs)) ** 0.5
        for s in samples:
            if s.group == g:
                s.advantage = (s.reward - mean) / sd if std else s.reward - mean


def matrix(out_path, hf):
    from transformers import AutoModelForCausalLM

    from megatron_nft.megatron.parallel import init_distributed
    from megatron_nft.megatron.model import load_hf_config_dict

    init_distributed(1, 1, seed=0)
    hf_config = load_hf_config_dict(hf)
    results = []
    for algo in ALGOS:
        for agg in AGGS:
            cfg = recipe(hf, algo, agg)
            samples = make_samples(hf_config["vocab_size"])
            set_advantages(samples, std=algo in ("grpo", "dapo"))
            g = torch.Generator().manual_seed(1)
            ref_model = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
            with torch.no_grad():
                for lp, s in zip(hf_logprobs(ref_model, samples), samples):  # off-policy: ratios up to e^0.6
                    s.old_logprobs = (lp + 0.6 * (torch.rand(lp.shape, generator=g) * 2 - 1)).tolist()
            loss = reference_loss(algo, agg, hf_logprobs(ref_model, samples), samples, cfg)
            loss.backward()
            ref_grads = {"final_norm": ref_model.model.norm.weight.grad, "output": ref_model.lm_head.weight.grad}
            ref_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ref_model.parameters() if p.grad is not None))
            policy = policy_for(cfg, hf_config, hf)
            m = policy.train_step(samples)
            gpt = policy.unwrapped()
            got = {"final_norm": gpt.decoder.final_layernorm.weight.main_grad,
                   "output": gpt.output_layer.weight.main_grad[:hf_config["vocab_size"]]}
            results.append({
                "algo": algo, "agg": agg, "loss": m["train/loss"], "ref_loss": loss.item(),
                "grad_norm": m["train/grad_norm"], "ref_grad_norm": ref_norm.item(),
                "n_micro_batches": len(policy._micro_batches(samples)),
                "grad_err": {k: (got[k] - ref_grads[k]).abs().max().item() for k in got},
                "grad_scale": {k: ref_grads[k].abs().max().item() for k in got}})
            del policy
    with open(out_path, "w") as f:
        json.dump(results, f)


def theorem(out_path, hf, tp, pp):
    import torch.distributed as dist

    from megatron_nft.algorithms import get_algorithm
    from megatron_nft.megatron.model import load_hf_config_dict
    from megatron_nft.megatron.parallel import init_distributed

    init_distributed(int(tp), int(pp), seed=0)
    hf_config = load_hf_config_dict(hf)
    states = {}
    for algo, weighting in (("nft", "1-r"), ("drgrpo", "1-r"), ("nft", "grpo"), ("grpo", "1-r")):
        cfg = recipe(hf, algo, "token-mean", updates_per_rollout=1)
        cfg.algorithm.weighting = weighting
        samples = make_samples(hf_config["vocab_size"])
        algo_obj = get_algorithm(algo)
        for s, adv in zip(samples, algo_obj.advantages([s.reward for s in samples], [s.group for s in samples])):
            s.advantage = adv
        policy = policy_for(cfg, hf_config, hf)
        policy.compute_logprobs(samples)  # strictly on-policy: pi_old = pi_theta
        policy.train_step(samples)
        state = {k: v.detach().cpu().clone() for k, v in policy.hf_state(gather_to="rank0")}
        states[f"{algo}:{weighting}"] = state
        del policy
    if dist.get_rank() == 0:
        torch.save(states, out_path)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "matrix":
        matrix(*sys.argv[2:4])
    else:
        theorem(*sys.argv[2:6])
