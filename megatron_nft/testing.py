"""Helpers for tests: tiny random HF checkpoints (Qwen2 / Llama) built offline.

Nothing is downloaded: the config is built in code, the weights are random (seeded), and the
tokenizer is a byte-level BPE trained in a few milliseconds on a built-in corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "What is 12 + 35? The answer is \\boxed{47}.",
    "Compute 7 * 8 - 3. First 7 * 8 = 56, then 56 - 3 = 53. So the answer is \\boxed{53}.",
    "Solve for x: 2x + 4 = 10. Subtract 4, divide by 2, x = 3.",
    "The quick brown fox jumps over the lazy dog. Please reason step by step.",
    "user assistant system question answer final result number sum product difference",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 + - * / = ( ) { } [ ]",
]


def make_tiny_tokenizer(path, vocab: int = 512) -> Path:
    """Writes tokenizer.json + tokenizer_config.json (ChatML template) into ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(300, vocab),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.save(str(path / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "model_max_length": 4096,
        "chat_template": CHATML_TEMPLATE,
        "add_bos_token": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return path


def _randomize_(model, seed: int, std: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(std * noise)


def _write_model(path, config, seed: int, std: float, tokenizer_vocab: int, dtype) -> Path:
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    _randomize_(model, seed, std)
    model = model.to(dtype)
    model.save_pretrained(path)
    make_tiny_tokenizer(path, vocab=min(tokenizer_vocab, config.vocab_size))
    special = json.loads((path / "tokenizer.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in special}
    gen = {"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return path


def make_tiny_qwen2(
    path,
    *,
    vocab: int = 1100,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 32,
    intermediate: int = 128,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    seed: int = 0,
    std: float = 0.08,
    tokenizer_vocab: int = 512,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Tiny random Qwen2 (QKV bias, GQA, head_dim may differ from hidden/heads) HF dir."""
    from transformers import Qwen2Config

    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_theta": rope_theta, "rope_type": "default"},
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg.architectures = ["Qwen2ForCausalLM"]
    return _write_model(path, cfg, seed, std, tokenizer_vocab, dtype)


def make_tiny_llama(
    path,
    *,
    vocab: int = 1100,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate: int = 128,
    tie_word_embeddings: bool = False,
    rope_theta: float = 500000.0,
    seed: int = 0,
    std: float = 0.08,
    tokenizer_vocab: int = 512,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Tiny random Llama (no biases, GQA) HF dir."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": rope_theta, "rope_type": "default"},
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    return _write_model(path, cfg, seed, std, tokenizer_vocab, dtype)


def hf_logits(hf_dir, input_ids: torch.Tensor) -> torch.Tensor:
    """Reference logits [b, s, vocab] (fp32) from HF transformers (eager attention)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(hf_dir), dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()
