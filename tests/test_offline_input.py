"""Bad offline rollout rows: each is refused with one line naming file:line, the key and the fix
(the reader on real files; one real nft-train shows it happens before the model, once, exit 2)."""
import json
import subprocess

import pytest

from _dist_helpers import PYTHON, REPO, env
from megatron_nft.rollout.offline_rows import read_offline_groups
from megatron_nft.stability import InputError

GOOD = [{"group": "a", "prompt_ids": [5, 6], "response_ids": [7, 8], "reward": 1},
        {"group": "a", "prompt_ids": [5, 6], "response_ids": [9], "reward": 0}]


def _file(tmp_path, rows, raw=None):
    p = tmp_path / "answers.jsonl"
    if raw is not None:
        p.write_bytes(raw)
    else:
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _bad(**change):
    return GOOD[:1] + [dict(GOOD[1], **change)]


@pytest.mark.parametrize("rows,match", [
    (_bad(response_ids=[7, 1100]), r":2: response_ids\[1\] = 1100 is not a token id \[0, 1100\).*tokenizer"),
    (_bad(prompt_ids=[-1, 5]), r":2: prompt_ids\[0\] = -1 is not a token id"),
    (_bad(reward="yes"), r":2: reward = 'yes'; accepted rewards are .* 0 and 1"),
    (_bad(reward=None), r":2: reward = None"),
    (_bad(reward=0.5), r":2: reward = 0.5"),
    (_bad(reward=-1), r":2: reward = -1"),
    (_bad(rollout_logprobs=[-0.1, -0.2]), r":2: rollout_logprobs has 2 values for 1 response tokens"),
    (_bad(response_ids=list(range(5, 40))), r":2: prompt \+ response = 37 tokens, past .*max_position_embeddings 32"),
    ([dict(GOOD[0], group="b"), dict(GOOD[1], reward=1)], r"no informative group"),
    ([], r"no rows"),
])
def test_bad_rows_named(tmp_path, rows, match):
    with pytest.raises(InputError, match=match):
        read_offline_groups(_file(tmp_path, rows), vocab=1100, max_positions=32)


def test_nan_reward_refused(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1]).replace('"reward": 0', '"reward": NaN') + "\n")
    with pytest.raises(InputError, match=r":2: reward = nan"):
        read_offline_groups(str(path))


def test_broken_json_and_non_utf8_name_the_right_line(tmp_path):
    good = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    with pytest.raises(InputError, match=r"answers.jsonl:3: invalid JSON"):
        read_offline_groups(_file(tmp_path, None, raw=good + b'{"group": "b", \n'))
    with pytest.raises(InputError, match=r"answers.jsonl:3: not UTF-8"):
        read_offline_groups(_file(tmp_path, None, raw=good + b'{"group": "\xff"}\n'))
    assert len(read_offline_groups(_file(tmp_path, GOOD), vocab=1100, max_positions=32)) == 1


@pytest.mark.slow
def test_nft_train_one_line_before_the_model(tmp_path):
    data = _file(tmp_path, _bad(reward="yes"))
    p = subprocess.run([PYTHON, "-m", "megatron_nft.train", "--recipe", str(REPO / "recipes" / "tiny_cpu.yaml"),
                        "--set", f"rollout.source={data}", "--set", f"output.dir={tmp_path / 'run'}"],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("nft-train:")]
    assert lines == [f"nft-train: error: {data}:2: reward = 'yes'; accepted rewards are the verifier's outcomes "
                     "0 and 1 (true/false, 0.0/1.0 too): grade the answers to 0/1 (the algorithm shapes them)"], p.stderr
    assert "Traceback" not in p.stderr


def _train_prompts(tmp_path, data):
    return subprocess.run([PYTHON, "-m", "megatron_nft.train", "--recipe", str(REPO / "recipes" / "tiny_cpu.yaml"),
                           "--set", f"data.train={data}", "--set", f"output.dir={tmp_path / 'run'}"],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_empty_and_non_utf8_prompt_files_refused_before_the_model(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    p = _train_prompts(tmp_path, empty)
    assert p.returncode == 2 and f"data.train: no usable prompt in {empty}: kept 0 of 0 rows" in p.stderr, p.stderr
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "1+1", "answer": "2"}\n{"prompt": "caf\xe9", "answer": "3"}\n')
    p = _train_prompts(tmp_path, bad)
    assert p.returncode == 2 and f"{bad}:2: not UTF-8" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_prompt_json_array_errors_name_file_and_line(tmp_path):
    from megatron_nft.data.prompts import iter_rows

    f = tmp_path / "p.json"
    f.write_bytes(b'[{"prompt": "1+1", "answer": "2"},\n {"prompt": "caf\xe9"}]')
    with pytest.raises(InputError, match=r"p.json: not UTF-8"):
        list(iter_rows(str(f)))
    f.write_text('[{"prompt": "1+1", "answer": "2"},\n {"prompt": }]')
    with pytest.raises(InputError, match=r"p.json:2: invalid JSON"):
        list(iter_rows(str(f)))
