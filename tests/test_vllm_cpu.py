"""vLLM-CPU integration test for megatron_nft.rollout.vllm_engine.

Builds a tiny Qwen2 (head_dim 32, vocab 256) plus an offline WordLevel tokenizer, runs the vLLM
engine in-process on CPU, and checks it against HF transformers: sampled log-probs equal the
raw-distribution log-probs recomputed by an HF forward pass, and after ``update_weights`` with a
different model's state dict (HF names, streamed through weight-sync buckets as a Megatron export
would be) greedy output equals HF greedy decoding with the new weights.

Needs the ``vllm-cpu`` package. Skipped when vLLM is missing, unless ``NFT_REQUIRE_VLLM=1``
(CI), where a missing vLLM is a failure.
"""
from __future__ import annotations

import os
import subprocess
import sys

# Must be set before vLLM is imported: in-process engine core, small KV cache, no network.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from megatron_nft.rollout import SamplingConfig, bucket_named_tensors, make_engine  # noqa: E402
from megatron_nft.rollout.weight_sync import flatten_buckets  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

VOCAB = 256
EOS = VOCAB - 1
PROMPTS = [[3, 14, 15, 92, 65], [35, 89], [79, 32, 38, 46, 26, 43, 38]]


def _require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        if os.environ.get("NFT_REQUIRE_VLLM") == "1":
            pytest.fail(f"NFT_REQUIRE_VLLM=1 but vllm is not importable: {exc}")
        pytest.skip("vllm (vllm-cpu) not installed")


def build_tokenizer(path: str) -> None:
    """A WordLevel tokenizer over tokens w0..w254 plus <|endoftext|> (id 255), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)}
    vocab["<|endoftext|>"] = EOS
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="w0"
    ).save_pretrained(path)


def tiny_qwen2(seed: int):
    """Random tiny Qwen2: hidden 128, 4 heads (head_dim 32), 2 kv heads, 2 layers, untied."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, eos_token_id=EOS, bos_token_id=0, initializer_range=0.2,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).eval()


@torch.no_grad()
def hf_greedy(model, prompt, steps):
    """Argmax decoding with full forward passes; stops after (and includes) EOS."""
    ids, out = list(prompt), []
    for _ in range(steps):
        tok = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        out.append(tok)
        ids.append(tok)
        if tok == EOS:
            break
    return out


@torch.no_grad()
def hf_logprobs(model, prompt, completion):
    """Raw-distribution log-probs of ``completion`` given ``prompt``, one HF forward pass."""
    logits = model(torch.tensor([list(prompt) + list(completion)])).logits[0].float()
    lp = torch.log_softmax(logits[len(prompt) - 1: len(prompt) - 1 + len(completion)], dim=-1)
    return lp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


def eos_prone_copy(model, prompt, step):
    """Swap the lm_head rows of EOS and the greedy token at ``step``: greedy now stops there."""
    target = hf_greedy(model, prompt, step + 1)[step]
    with torch.no_grad():
        w = model.lm_head.weight
        w[[EOS, target]] = w[[target, EOS]].clone()
    return model


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core box they cost 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _require_vllm()
    path = str(tmp_path_factory.mktemp("tiny_qwen2_vllm"))
    model_a = tiny_qwen2(0)
    model_a.save_pretrained(path)
    build_tokenizer(path)
    model_b = eos_prone_copy(tiny_qwen2(1), PROMPTS[0], 3)
    import gc

    rng, set_threads = torch.get_rng_state(), torch.set_num_threads
    engine = make_engine("vllm", path, tp=1, gpu_memory_utilization=0.5, sleep_mode=False, seed=0,
                         max_model_len=128)
    # in-process vLLM must not leak global state into the trainer
    assert torch.equal(torch.get_rng_state(), rng) and torch.set_num_threads is set_threads
    assert gc.get_freeze_count() == 0
    yield engine, model_a, model_b
    engine.close()


def test_engine_is_vllm(setup):
    from megatron_nft.rollout.vllm_engine import VLLMEngine

    engine, _, _ = setup
    assert isinstance(engine, VLLMEngine) and engine.on_cpu
    engine.sleep(), engine.wake()  # no-ops on CPU


def test_samples_and_raw_logprobs(setup):
    engine, model_a, _ = setup
    cfg = SamplingConfig(n=3, temperature=0.7, top_p=0.9, max_tokens=8, seed=1234)
    out = engine.generate(PROMPTS, cfg)
    assert len(out) == len(PROMPTS) and all(len(g) == 3 for g in out)
    for prompt, group in zip(PROMPTS, out):
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) >= 1
            assert c.finish_reason in ("stop", "length")
            if c.finish_reason == "length":
                assert len(c.token_ids) == 8
            else:
                assert c.token_ids[-1] == EOS
            # vLLM's raw log-probs (not temperature/top-p processed) == HF recomputation (fp32)
            torch.testing.assert_close(torch.tensor(c.logprobs), hf_logprobs(model_a, prompt, c.token_ids),
                                       atol=1e-3, rtol=0)
    assert any(len({tuple(c.token_ids) for c in g}) > 1 for g in out), "n samples should differ"
    again = engine.generate(PROMPTS, cfg)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in out]


def test_update_weights_matches_hf(setup):
    engine, model_a, model_b = setup
    greedy = SamplingConfig(n=2, temperature=0.0, max_tokens=10)
    before = engine.generate(PROMPTS, greedy)
    for prompt, group in zip(PROMPTS, before):
        assert [c.token_ids for c in group] == [hf_greedy(model_a, prompt, 10)] * 2

    # a "Megatron export": HF names, fp32 CPU tensors, streamed through bounded buckets
    stream = ((k, v.detach().clone()) for k, v in model_b.state_dict().items())
    engine.update_weights(flatten_buckets(bucket_named_tensors(stream, 64 * 1024)))

    after = engine.generate(PROMPTS, greedy)
    for prompt, group in zip(PROMPTS, after):
        ref = hf_greedy(model_b, prompt, 10)
        for c in group:
            assert c.token_ids == ref
            torch.testing.assert_close(torch.tensor(c.logprobs), hf_logprobs(model_b, prompt, c.token_ids),
                                       atol=1e-3, rtol=0)
            assert c.finish_reason == ("stop" if ref[-1] == EOS else "length")
    # model_b was made to stop on prompt 0: EOS is kept as the last token, with its log-prob
    stopped = after[0][0]
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == EOS and len(stopped.token_ids) <= 4
    assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]


def test_update_weights_per_bucket_calls(setup):
    """One update_weights call per small bucket (splitting q/k/v and gate/up across calls) is
    as good as one stream: a module half-loaded in one vLLM reload would be corrupt."""
    engine, model_a, _ = setup
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=10)
    stream = ((k, v.detach().clone()) for k, v in model_a.state_dict().items())
    buckets = list(bucket_named_tensors(stream, 16 * 1024))
    assert len(buckets) > 10
    for i, bucket in enumerate(buckets):
        engine.update_weights(bucket)
        if i == 2:  # q_proj arrived, k/v not yet: generating now must refuse, not misbehave
            with pytest.raises(RuntimeError, match="incomplete weight update"):
                engine.generate(PROMPTS[:1], greedy)
    out = engine.generate(PROMPTS, greedy)
    assert [g[0].token_ids for g in out] == [hf_greedy(model_a, p, 10) for p in PROMPTS]


def test_torchrun_tp2_spmd(tmp_path):
    """The SPMD path: 2 gloo ranks under torchrun, one vLLM replica with tensor_parallel_size=2
    (external_launcher, the GPU-cluster code path). Both ranks must agree, match HF greedy, and
    take a bucketed weight update (full HF tensors; vLLM slices each rank's shard)."""
    _require_vllm()
    path = str(tmp_path / "model")
    tiny_qwen2(0).save_pretrained(path)
    build_tokenizer(path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           os.path.abspath(__file__), path]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=480)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert "RANK_OK 0" in proc.stdout and "RANK_OK 1" in proc.stdout, tail


def _torchrun_worker(path: str) -> None:
    """Body of each rank of :func:`test_torchrun_tp2_spmd`."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    engine = make_engine("vllm", path, tp=2, max_model_len=128, seed=rank)  # per-rank seeds, as the trainer
    assert engine.seed == 0  # ... but one TP group samples with its leader's seed
    model_a, model_b = tiny_qwen2(0), eos_prone_copy(tiny_qwen2(1), PROMPTS[0], 3)
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=10)
    out = engine.generate(PROMPTS, greedy)
    assert [g[0].token_ids for g in out] == [hf_greedy(model_a, p, 10) for p in PROMPTS], rank
    sampled = engine.generate(PROMPTS, SamplingConfig(n=2, max_tokens=6))  # engine-derived seed
    mine = [[c.token_ids for c in g] for g in sampled]
    both = [None, None]
    dist.all_gather_object(both, mine)
    assert both[0] == both[1], "the two TP ranks of one replica must sample identically"
    for c, p in ((c, p) for g, p in zip(sampled, PROMPTS) for c in g):
        torch.testing.assert_close(torch.tensor(c.logprobs), hf_logprobs(model_a, p, c.token_ids), atol=1e-3, rtol=0)
    stream = ((k, v.detach().clone()) for k, v in model_b.state_dict().items())
    for bucket in bucket_named_tensors(stream, 64 * 1024):
        engine.update_weights(bucket)
    out = engine.generate(PROMPTS, greedy)
    assert [g[0].token_ids for g in out] == [hf_greedy(model_b, p, 10) for p in PROMPTS], rank
    engine.close()
    # the trainer's process group survives the engine's shutdown
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == 2.0
    print(f"RANK_OK {rank}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    _torchrun_worker(sys.argv[1])
