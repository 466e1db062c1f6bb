"""The embedded tiny default: everything built offline, in minutes, on a 2-core CPU.

1. a tokenizer trained on the synthetic arithmetic task (``data/tokenizer.py``);
2. a randomly initialised Qwen2-shaped model (``model.tiny``: head_dim 32, GQA, QKV bias);
3. a short supervised warm start *through the same megatron policy* (RFT loss on a corpus
   whose answers are right or systematically wrong -- forgotten carries -- so the policy
   starts as a mixture with room to improve; see ``data/synthetic.py``).

The result is an ordinary HF directory (``output.dir/base_model``) that the rest of the
pipeline treats like any downloaded checkpoint. It is built once per ``output.dir``
(atomically: a temp dir renamed at the end) and reused on resume.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time

import torch
import torch.distributed as dist

from megatron_nft.config import RecipeConfig

BASE_DIR_NAME = "base_model"


def tiny_problem_kwargs(cfg: RecipeConfig) -> dict:
    """Arguments of ``data.synthetic`` generators for this recipe's tiny task."""
    return {"ops": tuple(cfg.model.tiny.ops.split(",")), "shape": cfg.model.tiny.shape}


def _random_hf_model(cfg: RecipeConfig, out_dir: str, tokenizer) -> None:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from megatron_nft.data.tokenizer import stop_token_ids

    t = cfg.model.tiny
    hf_cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.ffn_hidden_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim, max_position_embeddings=256,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=stop_token_ids(tokenizer)[0], pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(hf_cfg)
    model.generation_config = GenerationConfig(eos_token_id=stop_token_ids(tokenizer),
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _sft_samples(cfg: RecipeConfig, tokenizer, n: int):
    from megatron_nft.data.prompts import render_prompt
    from megatron_nft.data.synthetic import make_sft_corpus
    from megatron_nft.data.tokenizer import stop_token_ids
    from megatron_nft.megatron.batches import TrainSample

    t = cfg.model.tiny
    eos = stop_token_ids(tokenizer)[0]
    out = []
    for ex in make_sft_corpus(n, seed=cfg.seed, bug_rate=t.bug_rate, **tiny_problem_kwargs(cfg)):
        text = render_prompt(ex["prompt"], tokenizer, cfg.data.system_prompt or None)
        p = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        r = tokenizer.encode(ex["response"], add_special_tokens=False) + [eos]
        out.append(TrainSample(tokens=p + r, prompt_len=len(p), reward=1.0, correct_rate=1.0))
    return out


def build_tiny_base(cfg: RecipeConfig, log=print) -> str:
    """Collective (every rank calls it): returns the HF dir of the warm-started tiny model."""
    from megatron_nft.checkpoint.convert import load_hf_into_model
    from megatron_nft.data.synthetic import tokenizer_training_texts
    from megatron_nft.data.tokenizer import train_tiny_tokenizer
    from megatron_nft.megatron.policy import MegatronPolicy
    from megatron_nft.trainer import export_hf_dir

    final = os.path.join(cfg.output.dir, BASE_DIR_NAME)
    if os.path.isfile(os.path.join(final, "nft_base.json")):
        return final
    rank = dist.get_rank()
    tmp = final + ".tmp"
    t0 = time.time()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        tok = train_tiny_tokenizer(tokenizer_training_texts(), cfg.model.tiny.vocab_size)
        _random_hf_model(cfg, tmp, tok)
    dist.barrier()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp)
    with open(os.path.join(tmp, "config.json")) as f:
        hf_config = json.load(f)
    t = cfg.model.tiny
    sft_cfg = copy.deepcopy(cfg)
    sft_cfg.algorithm.name = "rft"
    sft_cfg.algorithm.aggregation = "token-mean"
    sft_cfg.train.lr, sft_cfg.train.warmup_steps, sft_cfg.train.lr_schedule = t.sft_lr, 10, "cosine"
    sft_cfg.train.min_lr = t.sft_lr * 0.1
    sft_cfg.train.weight_decay = 0.0
    policy = MegatronPolicy(sft_cfg, hf_config, total_updates=t.sft_steps)
    load_hf_into_model([policy.unwrapped()], tmp)
    policy.weights_loaded()
    samples = _sft_samples(cfg, tokenizer, t.sft_steps * t.sft_batch)
    for step in range(t.sft_steps):
        m = policy.train_step(samples[step * t.sft_batch:(step + 1) * t.sft_batch])
        if rank == 0 and (step % 50 == 0 or step == t.sft_steps - 1):
            log(f"[warm start] step {step + 1}/{t.sft_steps}  loss {m['train/loss']:.4f}  "
                f"lr {m['train/lr']:.2e}")
    export_hf_dir(policy, tmp + ".sft", tmp)
    if rank == 0:
        for name in os.listdir(tmp + ".sft"):
            os.replace(os.path.join(tmp + ".sft", name), os.path.join(tmp, name))
        os.rmdir(tmp + ".sft")
    del policy
    if rank == 0:
        with open(os.path.join(tmp, "nft_base.json"), "w") as f:
            json.dump({"sft_steps": t.sft_steps, "bug_rate": t.bug_rate, "seconds": time.time() - t0}, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    dist.barrier()
    return final
