"""Training like the NFT reference: its boxed prompt (``nft-prepare-data --format reference``), its
strict-box reward (``rollout.reward``) and per-benchmark validation (``data.eval: DIR``).

Independent references: the mirror file's own bare-problem column (``prompt``) for the rewritten
prompts; the lenient verifier's verdict next to the strict reward's; the benchmark files' row
counts and hand-computed means for the validation metrics.
"""
import json
import os

import pytest

from megatron_nft.config import ConfigError, load_config
from megatron_nft.data.prompts import load_prompt_dataset
from megatron_nft.data.reference import BOXED_INSTRUCTION, answer_format_instructions
from megatron_nft.data.tokenizer import train_tiny_tokenizer
from megatron_nft.data import synthetic as S
from megatron_nft.rewards import MathVerifier
from megatron_nft.rewards.training import TrainingReward
from megatron_nft.rollout.validation import BenchmarkEval, eval_benchmarks
from tools import prepare_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
DAPO_SAMPLE = os.path.join(SHARED, "train", "dapo_math_17k_sample.jsonl")
EVAL_DIR = os.path.join(SHARED, "eval")
needs_shared = pytest.mark.skipif(not os.path.isfile(DAPO_SAMPLE), reason=f"{SHARED} not present")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tiny_tokenizer(S.tokenizer_training_texts(), 512, str(tmp_path_factory.mktemp("tok")))


@needs_shared
def test_reference_format_carries_one_answer_instruction(tmp_path, tok):
    out = tmp_path / "boxed.jsonl"
    stats = prepare_data.prepare(DAPO_SAMPLE, str(out), "reference", log=lambda m: None)
    rows = [json.loads(x) for x in open(out)]
    mirror = [json.loads(x) for x in open(DAPO_SAMPLE)]
    assert stats["kept"] == len(rows) == len(mirror) == 200
    for row, src in zip(rows, mirror):
        (msg,) = row["prompt"]
        assert msg["role"] == "user" and msg["content"] == f"{src['prompt'].strip()}\n\n{BOXED_INSTRUCTION}"
        assert answer_format_instructions(msg["content"]) == 1 and "Answer:" not in msg["content"]
        assert row["answer"] == src["reward_model"]["ground_truth"] and row["data_source"] == "math_dapo_boxed"
    # rendered as the cluster recipes do (data.system_prompt: ""): still one instruction
    cfg = load_config(os.path.join(ROOT, "recipes", "nft_qwen2.5_math_7b.yaml"))
    items = load_prompt_dataset(str(out), tok, system_prompt=cfg.data.system_prompt or None)
    assert len(items) == 200 and all(answer_format_instructions(i.prompt_text) == 1 for i in items)
    # what training used before: DAPO's Answer-line prompt plus a \boxed system prompt
    old = load_prompt_dataset(DAPO_SAMPLE, tok, system_prompt=BOXED_INSTRUCTION)
    assert all(answer_format_instructions(i.prompt_text) == 3 for i in old)


def test_strict_reward_rejects_a_last_number_only_answer():
    with MathVerifier(timeout_s=5.0, num_workers=1) as v:
        texts = ["I am not sure. 7 8 9 34", "so the answer is $\\boxed{34}$.", "\\boxed{34.0}", "\\boxed{33}"]
        golds = ["34"] * 4
        lenient = v.verify_batch(texts, golds)
        strict = TrainingReward(v, "strict_box").verify_batch(texts, golds)
        assert lenient[:3] == [True, True, True] and strict == [False, True, False, False]
        # evaluation asks for a grading mode explicitly: the verifier answers, not the reward
        assert TrainingReward(v, "strict_box").verify_batch(texts[:1], golds[:1], mode="math") == [True]
        assert TrainingReward(v, "math_verifier").verify_batch(texts, golds) == lenient
    with pytest.raises(ValueError, match="rollout.reward"):
        TrainingReward(None, "lenient")


@needs_shared
def test_benchmark_directory_and_list(tmp_path, tok):
    names = [n for n, _ in eval_benchmarks(EVAL_DIR)]
    assert names == ["aime24", "aime25", "amc23", "math500", "minerva_math", "olympiadbench"]
    assert [n for n, _ in eval_benchmarks(EVAL_DIR, "math500,aime24")] == ["math500", "aime24"]
    assert eval_benchmarks("synthetic") == [] and eval_benchmarks(None) == []
    with pytest.raises(ConfigError, match="eval.benchmarks"):
        eval_benchmarks(EVAL_DIR, "aime2024")
    with pytest.raises(ConfigError, match="holds none of the benchmark files"):
        eval_benchmarks(str(tmp_path))
    cfg = load_config(None, [f"data.eval={EVAL_DIR}", "eval.limit=3", "eval.benchmarks=aime24,amc23",
                             "data.system_prompt=\"\""])
    ev = BenchmarkEval(cfg, tok, eval_benchmarks(EVAL_DIR, cfg.eval.benchmarks))
    assert len(ev) == 6 and [p.benchmark for p in ev.problems] == ["aime24"] * 3 + ["amc23"] * 3
    first = json.loads(open(os.path.join(EVAL_DIR, "aime24.jsonl")).readline())["problem"]
    assert tok.decode(ev.prompt_ids[0]).count(BOXED_INSTRUCTION) == 1 and first[:30] in tok.decode(ev.prompt_ids[0])
    m = ev.summarize([[True, False], [False, False], [True, True], [False, False], [False, False], [True, False]])
    assert m["eval/aime24/accuracy"] == pytest.approx(3 / 6) and m["eval/amc23/accuracy"] == pytest.approx(1 / 6)
    assert m["eval/accuracy"] == pytest.approx((3 / 6 + 1 / 6) / 2)
