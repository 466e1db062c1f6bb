"""Data layer: synthetic task, tiny tokenizer, prompt loading, packing, prepare_data."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from megatron_nft.data import synthetic as S
from megatron_nft.data.batching import pack_micro_batches, pad_batch, padded_size, split_evenly
from megatron_nft.data.prompts import PromptItem, last_boxed, load_prompt_dataset
from megatron_nft.data.tokenizer import CHATML_TEMPLATE, stop_token_ids, train_tiny_tokenizer
from tools import prepare_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAPO_SAMPLE = os.path.join(ROOT, "..", "shared", "data", "train", "dapo_math_17k_sample.jsonl")
SYSTEM = S.DEFAULT_SYSTEM_PROMPT
needs_dapo = pytest.mark.skipif(not os.path.isfile(DAPO_SAMPLE), reason=f"{DAPO_SAMPLE} not present")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return train_tiny_tokenizer(S.tokenizer_training_texts(), 512, str(out)), str(out)


# --------------------------------------------------------------------------- synthetic


def test_buggy_answer_examples():
    assert S.buggy_answer(347, 285) == 522 and S.correct_answer(347, 285) == 632
    assert S.buggy_answer(123, 456) == 579 == S.correct_answer(123, 456)
    assert S.buggy_answer(95, 7 + 10) == 2  # 95+17: 5+7=12 -> 2, 9+1=10 -> 0
    assert S.buggy_answer(542, 187, "-") == 465 and S.correct_answer(542, 187, "-") == 355
    assert S.buggy_answer(347, 6, "*") == 842 and S.correct_answer(347, 6, "*") == 2082


@pytest.mark.parametrize("op", ["+", "-", "*"])
def test_buggy_differs_exactly_on_carry_problems(op):
    rng = random.Random(op)
    n_carry = 0
    for _ in range(3000):
        a = rng.randint(10, 999)
        b = rng.randint(2, 9) if op == "*" else rng.randint(10, 999)
        if op == "-" and a < b:
            a, b = b, a
        carry = S.has_carry(a, b, op)
        n_carry += carry
        assert (S.buggy_answer(a, b, op) != S.correct_answer(a, b, op)) == carry, (a, op, b)
    assert 0 < n_carry < 3000


def test_problems_deterministic_and_splits_disjoint():
    tr = S.make_problems(2000, seed=0, split="train")
    assert tr == S.make_problems(2000, seed=0, split="train")
    assert tr != S.make_problems(2000, seed=1, split="train")
    ev = set(p["prompt"] for p in S.make_problems(300, seed=0, split="eval"))
    ev |= set(p["prompt"] for p in S.make_problems(300, seed=5, split="eval"))
    train_all = set(p["prompt"] for p in tr) | set(p["prompt"] for p in S.make_problems(2000, seed=7))
    sft = set(x["prompt"] for x in S.make_sft_corpus(3000, seed=3))
    assert not (ev & train_all) and not (ev & sft)
    assert len(set(p["prompt"] for p in tr)) == 2000  # distinct within a set
    for p in tr[:200]:
        a, op, b = S.parse_problem(p["prompt"])
        assert p["prompt"] == f"What is {a} {op} {b}?" and p["answer"] == str(a + b)
        assert 10 <= a <= 999 and 10 <= b <= 999 and S.split_of(a, b, op) == "train"
    carry = sum(p["carry"] for p in tr) / len(tr)
    assert 0.7 <= carry <= 0.8, carry


def test_sft_corpus_mixture():
    corpus = S.make_sft_corpus(4000, seed=0, bug_rate=0.6)
    assert corpus == S.make_sft_corpus(4000, seed=0, bug_rate=0.6)
    carry = [c for c in corpus if S.has_carry(*S.parse_problem(c["prompt"])[::2])]
    assert 0.7 <= len(carry) / len(corpus) <= 0.8
    buggy = sum(c["buggy"] for c in carry) / len(carry)
    assert 0.55 <= buggy <= 0.65, buggy
    for c in corpus[:300]:
        stated = last_boxed(c["response"])
        kind = S.classify_answer(c["prompt"], stated)
        assert kind == ("buggy" if c["buggy"] else "correct")
        assert c["response"].endswith("\\boxed{%s}" % stated)
    assert all(not c["buggy"] for c in S.make_sft_corpus(500, seed=0, bug_rate=0.0))
    assert S.make_sft_corpus(3, 0)[0]["response"].startswith("\\boxed{")
    eq = S.make_sft_corpus(3, 0, style="equation")[0]
    a, op, b = S.parse_problem(eq["prompt"])
    assert eq["response"] == f"{a}{op}{b}={last_boxed(eq['response'])}. \\boxed{{{last_boxed(eq['response'])}}}"


def test_other_ops_and_validation():
    probs = S.make_problems(300, seed=0, ops=("+", "-", "*"))
    ops = {S.parse_problem(p["prompt"])[1] for p in probs}
    assert ops == {"+", "-", "*"}
    for p in probs:
        a, op, b = S.parse_problem(p["prompt"])
        assert int(p["answer"]) == S.correct_answer(a, b, op) >= 0
    with pytest.raises(ValueError, match="split"):
        S.make_problems(3, split="test")
    with pytest.raises(ValueError, match="ops"):
        S.make_problems(3, ops=("/",))


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_digits_and_specials(tok):
    tokenizer, _ = tok
    assert len(tokenizer) <= 512
    for s in ["What is 347 + 285?", "347+285=632. \\boxed{632}", "\\boxed{1082}", SYSTEM, "x  y\n\n$\\frac{1}{2}$ é∇"]:
        ids = tokenizer(s, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == s
    toks = tokenizer.convert_ids_to_tokens(tokenizer("\\boxed{632}", add_special_tokens=False).input_ids)
    assert ["6", "3", "2"] == [t for t in toks if any(ch.isdigit() for ch in t)]
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") == 2
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") == 3
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 1
    assert stop_token_ids(tokenizer) == [3, 1]


def test_tokenizer_saved_deterministic_and_chat_template(tok):
    tokenizer, out = tok
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(out)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.chat_template == CHATML_TEMPLATE
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 12 + 34?"}]
    text = again.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 12 + 34?<|im_end|>\n<|im_start|>assistant\n"
    )
    # a separate process (different hash seed) trains the same vocabulary
    code = (
        "import json; from megatron_nft.data import synthetic as S;"
        "from megatron_nft.data.tokenizer import build_tokenizer_object as b;"
        "print(json.dumps(b(S.tokenizer_training_texts(),512).get_vocab()))"
    )
    env = dict(os.environ, PYTHONHASHSEED="123")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == tokenizer.get_vocab()


# --------------------------------------------------------------------------- prompts


def test_load_synthetic(tok):
    tokenizer, _ = tok
    items = load_prompt_dataset("synthetic", tokenizer, system_prompt=SYSTEM, max_prompt_tokens=64, size=50, seed=0, split="eval")
    assert len(items) == 50 and isinstance(items[0], PromptItem)
    it = items[0]
    assert it.prompt_text.startswith("<|im_start|>system\n" + SYSTEM) and it.prompt_text.endswith("<|im_start|>assistant\n")
    assert it.prompt_ids == tokenizer(it.prompt_text, add_special_tokens=False).input_ids
    assert it.data_source == "synthetic" and len({i.uid for i in items}) == 50
    evals = {S.parse_problem(i.prompt_text) for i in items}
    assert all(S.split_of(a, b, op) == "eval" for a, op, b in evals)
    short = load_prompt_dataset("synthetic", tokenizer, system_prompt=SYSTEM, max_prompt_tokens=10, size=5)
    assert len(short) == 0 and short.dropped["too_long"] == 5


@needs_dapo
def test_load_dapo_mirror_sample(tok):
    tokenizer, _ = tok
    items = load_prompt_dataset(DAPO_SAMPLE, tokenizer, system_prompt=SYSTEM, max_prompt_tokens=None)
    assert len(items) == items.rows_read == 200 and not items.dropped
    for it in items:
        int(it.answer)  # DAPO answers are integers
        assert it.data_source == "math_dapo"
        assert "Remember to put your answer on its own line" in it.prompt_text  # template kept
        assert it.prompt_text.count("<|im_start|>") == 3  # system, user, assistant
    assert len({it.uid for it in items}) == 200
    assert items[0].answer == "34"
    limited = load_prompt_dataset(DAPO_SAMPLE, tokenizer, system_prompt=SYSTEM, limit=7)
    assert [i.uid for i in limited] == [i.uid for i in items[:7]]
    capped = load_prompt_dataset(DAPO_SAMPLE, tokenizer, system_prompt=SYSTEM, max_prompt_tokens=300)
    assert len(capped) + capped.dropped["too_long"] == 200 and 0 < len(capped) < 200
    assert all(len(i.prompt_ids) <= 300 for i in capped)


def _hub_rows(n=None):
    rows = [json.loads(line) for line in open(DAPO_SAMPLE, encoding="utf-8")][:n]
    return [
        {
            "data_source": r["data_source"],
            "prompt": r["source_prompt"],
            "ability": r["ability"],
            "reward_model": r["reward_model"],
            "extra_info": r["extra_info"],
        }
        for r in rows
    ]


@needs_dapo
@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_hub_layout_parses_same_as_mirror(tok, tmp_path, ext):
    tokenizer, _ = tok
    rows = _hub_rows(40)
    path = tmp_path / f"hub.{ext}"
    if ext == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows * 2), str(path))  # duplicated like the hub
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    hub = load_prompt_dataset(str(path), tokenizer, system_prompt=SYSTEM)
    mirror = load_prompt_dataset(DAPO_SAMPLE, tokenizer, system_prompt=SYSTEM, limit=40)
    assert hub == mirror and hub.dropped["duplicate"] == 40


def test_math_style_rows_and_errors(tok, tmp_path):
    tokenizer, _ = tok
    rows = [
        {"problem": "Compute $1+1$.", "solution": "Clearly $\\boxed{2}$."},
        {"question": "Find $x$.", "solution": "So $x = \\boxed{\\frac{1}{2}}$ and not \\boxed{3}... x=\\boxed{\\frac{1}{\\sqrt{2}}}"},
        {"problem": "Area?", "answer": 27.0},
        {"problem": "No answer here.", "solution": "We are done."},
        {"problem": "   ", "answer": "1"},
        {"problem": "Olympiad?", "final_answer": ["$5$"], "id": 9},
    ]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_prompt_dataset(str(path), tokenizer, system_prompt=SYSTEM)
    assert [i.answer for i in items] == ["2", "\\frac{1}{\\sqrt{2}}", "27", "$5$"]
    assert items.dropped == {"missing_answer": 1, "empty_prompt": 1}
    assert items[3].uid == "9" and items[0].data_source == "math"
    assert "Compute $1+1$." in items[0].prompt_text and SYSTEM in items[0].prompt_text
    # a tokenizer without a chat template gets the plain text
    tokenizer.chat_template, saved = None, tokenizer.chat_template
    try:
        plain = load_prompt_dataset(str(path), tokenizer, system_prompt=SYSTEM)
        assert plain[0].prompt_text == "Compute $1+1$."
    finally:
        tokenizer.chat_template = saved
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompt_dataset(str(tmp_path / "nope.jsonl"), tokenizer)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "hi", "meta": {"a": 1}}) + "\n")
    with pytest.raises(ValueError, match=r"columns found: text, meta \(a\)"):
        load_prompt_dataset(str(bad), tokenizer)
    assert last_boxed("\\boxed{a{b}c} then \\boxed {d}") == "d" and last_boxed("none") is None


# --------------------------------------------------------------------------- batching


def test_pack_micro_batches_budget_and_cover():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(500)] + [1000, 700]
    for budget in (256, 600, 2048):
        mbs = pack_micro_batches(lengths, budget)
        assert mbs == pack_micro_batches(lengths, budget)
        assert sorted(i for mb in mbs for i in mb) == list(range(len(lengths)))
        for mb in mbs:
            assert padded_size(lengths, mb) <= budget or len(mb) == 1
        # greedy over the length-sorted order: merging any two neighbours would break the budget
        for x, y in zip(mbs, mbs[1:]):
            assert (len(x) + 1) * max(lengths[i] for i in x) > budget
    over = pack_micro_batches([5, 50, 5], 20)
    assert over[0] == [1] and sorted(over[1]) == [0, 2]
    assert all(len(mb) <= 3 for mb in pack_micro_batches(lengths, 10**6, max_seqs=3))
    eq = pack_micro_batches(lengths, 10**6, min_batches=4)
    assert len(eq) == 4 and sorted(i for mb in eq for i in mb) == list(range(len(lengths)))
    assert len(pack_micro_batches([3, 3], 100, min_batches=5)) == 2
    assert pack_micro_batches([], 10) == []
    with pytest.raises(ValueError):
        pack_micro_batches([1], 0)


def test_pad_batch_and_split_evenly():
    tokens, lengths = pad_batch([[1, 2, 3], torch.tensor([4]), []], pad_id=0)
    assert tokens.dtype == torch.long and tokens.tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]]
    assert lengths.tolist() == [3, 1, 0]
    tokens, _ = pad_batch([[1, 2, 3]], pad_id=9, pad_to_multiple_of=4)
    assert tokens.tolist() == [[1, 2, 3, 9]]
    assert split_evenly(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]
    for n, k in [(0, 3), (7, 7), (5, 8), (1000, 16)]:
        shards = split_evenly(n, k)
        assert len(shards) == k and [i for s in shards for i in s] == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        split_evenly(3, 0)


# --------------------------------------------------------------------------- prepare_data


@needs_dapo
@pytest.mark.parametrize("multiple", [1, 2, 16])
def test_micro_batches_padded_to_multiple_carry_the_same_loss_positions(multiple):
    from megatron_nft.megatron.batches import build_micro_batches
    from megatron_nft.types import Sample

    rng = random.Random(multiple)
    samples = []
    for _ in range(9):
        p, r = rng.randint(2, 9), rng.randint(1, 12)
        samples.append(Sample(tokens=[rng.randrange(3, 99) for _ in range(p + r)], prompt_len=p,
                              old_logprobs=[-0.5] * r))
    mbs = build_micro_batches(samples, micro_batch_tokens=40, pad_id=0, pad_to_multiple_of=multiple)
    assert sorted(i for mb in mbs for i in mb.indices) == list(range(9))
    for mb in mbs:
        b, s = mb.tokens.shape
        longest = max(len(samples[i].tokens) for i in mb.indices)
        assert s % multiple == 0 and longest <= s < longest + multiple
        assert mb.attention_mask.shape[-1] == s and mb.position_ids.shape == (b, s)
        for row, i in enumerate(mb.indices):
            smp = samples[i]
            n, p = len(smp.tokens), smp.prompt_len
            assert mb.tokens[row, :n].tolist() == smp.tokens and not mb.tokens[row, n:].any()
            # loss exactly on the positions that predict response tokens, nothing in the padding
            assert mb.loss_mask[row].nonzero().flatten().tolist() == list(range(p - 1, n - 1))
            assert mb.labels[row, p - 1:n - 1].tolist() == smp.tokens[p:]


def test_prepare_data_dedupes_and_reports(tok, tmp_path, capsys):
    tokenizer, _ = tok
    rows = _hub_rows(30)
    rows[5] = dict(rows[5], reward_model={"ground_truth": "", "style": "x"})  # missing answer
    rows[6] = dict(rows[6], prompt=[{"role": "user", "content": "  "}])  # empty prompt
    src = tmp_path / "dapo.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    out = tmp_path / "out" / "train.jsonl"
    assert prepare_data.main(["--input", str(src), "--output", str(out), "--progress-every", "20"]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out.strip().splitlines()[-1])
    assert stats["read"] == 90 and stats["kept"] == 28 and stats["format"] == "dapo"
    assert stats["dropped"] == {"duplicate": 56, "missing_answer": 3, "empty_prompt": 3}
    assert "60 rows read" in captured.err and "kept 28" in captured.err
    lines = [json.loads(line) for line in open(out)]
    assert len(lines) == 28 and set(lines[0]) == {"prompt", "answer", "data_source", "uid"}
    assert lines[0]["prompt"] == rows[0]["prompt"] and lines[0]["answer"] == "34"
    items = load_prompt_dataset(str(out), tokenizer, system_prompt=SYSTEM)
    direct = load_prompt_dataset(str(src), tokenizer, system_prompt=SYSTEM)
    assert items == direct and len(items) == 28
    # the mirror sample converts to the same prompts, and MATH-style input works too
    out2 = tmp_path / "mirror.jsonl"
    assert prepare_data.main(["--input", DAPO_SAMPLE, "--output", str(out2)]) == 0
    assert [json.loads(x)["prompt"] for x in open(out2)][:5] == [r["prompt"] for r in _hub_rows(5)]
    math = tmp_path / "m.jsonl"
    math.write_text(json.dumps({"problem": "1+1?", "solution": "$\\boxed{2}$"}) + "\n")
    assert prepare_data.main(["--input", str(math), "--output", str(out2), "--format", "math"]) == 0
    assert json.loads(open(out2).read()) == {
        "prompt": [{"role": "user", "content": "1+1?"}], "answer": "2", "data_source": "m", "uid": "m-0"
    }
    assert prepare_data.main(["--input", str(tmp_path / "missing.jsonl"), "--output", str(out2)]) == 2
    assert "not found" in capsys.readouterr().err
