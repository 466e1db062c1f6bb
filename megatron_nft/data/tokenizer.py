"""A tiny byte-level BPE tokenizer trained offline for the CPU demo model.

* byte-level: every string round-trips exactly (``decode(encode(x)) == x``), LaTeX included;
* digits are always single tokens (``pre_tokenizers.Digits(individual_digits=True)``), so
  ``"632"`` is ``["6", "3", "2"]`` and arithmetic is learnable digit by digit;
* special tokens with fixed ids: ``<|pad|>`` 0, ``<|endoftext|>`` 1 (eos), ``<|im_start|>`` 2,
  ``<|im_end|>`` 3;
* a ChatML chat template (Qwen style, no default system prompt);
* deterministic: the same texts give the same vocabulary on every run (single-threaded
  training, ties broken by the library's fixed pair order).

The result is saved with ``save_pretrained`` so ``AutoTokenizer.from_pretrained(out_dir)`` works.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, IM_START, IM_END]

# ChatML, as in Qwen2.5 but without a built-in default system message: the system prompt is
# data (see prompts.load_prompt_dataset), so the template renders exactly what it is given.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tokenizer_object(texts: Iterable[str], vocab_size: int = 512):
    """Train and return a raw ``tokenizers.Tokenizer`` (byte-level BPE, single digits)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(byte_alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level tokenizer needs at least "
            f"{len(byte_alphabet) + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=sorted(byte_alphabet),
        show_progress=False,
    )
    # Chat markers are special tokens: strip them from the training text so that no merges are
    # wasted on their pieces.
    def cleaned():
        for t in texts:
            for s in SPECIAL_TOKENS:
                t = t.replace(s, "\n")
            yield t

    tok.train_from_iterator(cleaned(), trainer=trainer)
    return tok


def train_tiny_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    out_dir: Optional[str] = None,
    *,
    model_max_length: int = 4096,
):
    """Train a tiny tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        texts: training strings (e.g. ``synthetic.tokenizer_training_texts()``).
        vocab_size: total vocabulary including the 256 byte tokens and 4 special tokens.
        out_dir: if given, ``save_pretrained`` there (loadable with ``AutoTokenizer``).
        model_max_length: recorded in the tokenizer config.

    Returns the tokenizer with ``pad_token``, ``eos_token`` and ``chat_template`` set.
    """
    # Single-threaded training: identical merges on every run, and < 1 s for the demo corpus.
    prev = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tok_obj = build_tokenizer_object(texts, vocab_size)
    finally:
        if prev is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = prev

    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok_obj,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: ``<|im_end|>`` (chat) and the eos token."""
    ids = []
    for t in (IM_END, tokenizer.eos_token):
        i = tokenizer.convert_tokens_to_ids(t) if t is not None else None
        if i is not None and i != tokenizer.unk_token_id and i not in ids:
            ids.append(i)
    return ids
