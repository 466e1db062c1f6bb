"""slurm/*.sh and .ci/*.sh: shellcheck-clean, and the launcher's SLURM_* -> torchrun derivation
(NFT_LAUNCH_DRY=1 prints the plan and every node's torchrun command without running srun)."""
import glob
import os
import re
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "slurm", "*.sh")) + glob.glob(os.path.join(ROOT, ".ci", "*.sh")))


def test_shellcheck_clean():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed: `apt-get install -y shellcheck` (CI must install it; "
                    "this test deliberately fails rather than skips)")
    names = {os.path.relpath(s, ROOT) for s in SCRIPTS}
    assert {"slurm/launch.sh", "slurm/node.sh", "slurm/nft_tiny.sh", "slurm/nft_7b.sh", "slurm/nft_32b.sh",
            "slurm/convert.sh", "slurm/eval.sh", "slurm/build_image.sh", ".ci/slurm_up.sh", ".ci/slurm_down.sh",
            ".ci/slurm_test.sh", ".ci/mcore_gpu_pin.sh"} <= names
    r = subprocess.run([exe, "-x", *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _env(tmp_path, **kw):
    """A clean environment (no SLURM_*/launcher vars from an outer job) with a fake `scontrol`
    that expands the node list the way Slurm would for this test."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "NFT_", "MASTER_", "CONTAINER_")) and
           k not in ("NNODES", "NPROC_PER_NODE", "LOG_DIR")}
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    sc = fake / "scontrol"
    sc.write_text('#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] || exit 3\n'
                  'for h in ${FAKE_HOSTS}; do echo "$h"; done\n')
    sc.chmod(sc.stat().st_mode | stat.S_IEXEC)
    env["PATH"] = f"{fake}:{env['PATH']}"
    env["NFT_LAUNCH_DRY"] = "1"
    env.update(kw)
    return env


def run(script, env, *args):
    r = subprocess.run(["bash", os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def node_cmds(out):
    return dict(re.findall(r"^\[launch\] node (\d+): (.*)$", out, re.M))


def test_launcher_derives_rendezvous_from_slurm_env(tmp_path):
    env = _env(tmp_path, SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="3", SLURM_JOB_NODELIST="gpu[07-09]",
               FAKE_HOSTS="gpu07 gpu08 gpu09", SLURM_GPUS_PER_NODE="h100:8", NFT_PYTHON="python3",
               NCCL_SOCKET_IFNAME="ib0")
    out = run("slurm/launch.sh", env, "--recipe", "recipes/x.yaml", "--set", "train.max_steps=2")
    assert "nnodes=3 nproc_per_node=8 master=gpu07:29742" in out  # 29500 + 4242 % 1000
    assert "NCCL_SOCKET_IFNAME=ib0" in out
    srun = re.search(r"^\[launch\] srun (.*)$", out, re.M).group(1)
    assert "--nodes=3" in srun and "--ntasks-per-node=1" in srun and "slurm/node.sh" in srun
    cmds = node_cmds(out)
    assert sorted(cmds) == ["0", "1", "2"]
    for rank, cmd in cmds.items():
        assert cmd.startswith("python3 -m torch.distributed.run ")
        assert f"--nnodes 3 --node-rank {rank} --nproc-per-node 8" in cmd
        assert "--master-addr gpu07 --master-port 29742" in cmd
        assert cmd.endswith("-m megatron_nft.train --recipe recipes/x.yaml --set train.max_steps=2")
        assert f"node_rank={rank} nnodes=3" in out


def test_launcher_fallbacks_and_overrides(tmp_path):
    env = _env(tmp_path, SLURM_JOB_ID="17", SLURM_NNODES="2", SLURM_NODELIST="n[1-2]", FAKE_HOSTS="n1 n2",
               SLURM_GPUS_ON_NODE="4", MASTER_PORT="31000", NFT_MODULE="megatron_nft.dist_smoke",
               CONTAINER_IMAGE="nvcr.io#nvidia/pytorch:25.01-py3")
    out = run("slurm/launch.sh", env, "--wait-for-signal", "5")
    assert "nnodes=2 nproc_per_node=4 master=n1:31000 module=megatron_nft.dist_smoke python=python " in out
    assert "--container-image=nvcr.io\\#nvidia/pytorch:25.01-py3" in out or \
        "--container-image=nvcr.io#nvidia/pytorch:25.01-py3" in out
    assert f"--container-mounts={ROOT}:{ROOT}" in out
    cmds = node_cmds(out)
    assert "--node-rank 1 --nproc-per-node 4" in cmds["1"]
    assert cmds["1"].endswith("-m megatron_nft.dist_smoke --wait-for-signal 5")


def test_launcher_needs_a_job(tmp_path):
    env = _env(tmp_path)
    env.pop("NFT_LAUNCH_DRY")
    r = subprocess.run(["bash", "slurm/launch.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "SLURM_JOB_ID is not set" in r.stderr


@pytest.mark.parametrize("wrapper,nodes,nproc,recipe", [
    ("slurm/nft_tiny.sh", 2, 1, "recipes/tiny_cpu.yaml"),
    ("slurm/nft_7b.sh", 4, 8, "recipes/nft_qwen2.5_math_7b.yaml"),
    ("slurm/nft_32b.sh", 16, 8, "recipes/nft_qwen2.5_32b.yaml"),
])
def test_wrappers(tmp_path, wrapper, nodes, nproc, recipe):
    text = open(os.path.join(ROOT, wrapper)).read()
    assert f"#SBATCH --nodes={nodes}\n" in text
    assert "#SBATCH --requeue\n" in text and re.search(r"#SBATCH --signal=B:USR1@\d+\n", text)
    assert os.path.isfile(os.path.join(ROOT, recipe))
    hosts = " ".join(f"h{i}" for i in range(nodes))
    env = _env(tmp_path, SLURM_JOB_ID="5", SLURM_JOB_NUM_NODES=str(nodes), SLURM_JOB_NODELIST="h[0-x]",
               FAKE_HOSTS=hosts, SLURM_SUBMIT_DIR=ROOT)
    out = run(wrapper, env, "--set", "train.max_steps=2")
    cmds = node_cmds(out)
    assert len(cmds) == nodes
    assert f"--nnodes {nodes} --node-rank {nodes - 1} --nproc-per-node {nproc}" in cmds[str(nodes - 1)]
    assert cmds["0"].endswith(f"-m megatron_nft.train --recipe {recipe} --set train.max_steps=2")


def test_convert_wrapper(tmp_path):
    env = _env(tmp_path, SLURM_JOB_ID="9", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="h0", FAKE_HOSTS="h0",
               SLURM_SUBMIT_DIR=ROOT)
    out = run("slurm/convert.sh", env, "hf-to-mcore", "--hf", "/m", "--out", "/o")
    assert node_cmds(out)["0"].endswith("--nproc-per-node 1 --master-addr h0 --master-port 29509 "
                                        "--log-dir " + ROOT + "/logs/9/torchrun/node0 "
                                        "-m megatron_nft.checkpoint.convert hf-to-mcore --hf /m --out /o")


def _preflight(out):
    return re.findall(r"^\[launch\] preflight: (.*)$", out, re.M)


def test_preflight_checks_env_inside_the_container(tmp_path):
    env = _env(tmp_path, SLURM_JOB_ID="3", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="g[1-2]", FAKE_HOSTS="g1 g2",
               SLURM_GPUS_PER_NODE="8", CONTAINER_IMAGE="/shared/nft.sqsh")
    dry, check = _preflight(run("slurm/launch.sh", env, "--recipe", "recipes/x.yaml"))
    for cmd in (dry, check):
        assert cmd.startswith("srun --nodes=1 --ntasks=1 --container-image=/shared/nft.sqsh "
                              f"--container-mounts={ROOT}:{ROOT} --container-workdir={ROOT} python -m megatron_nft.train")
        assert cmd.endswith("--set cluster.nodes=2 --set cluster.gpus_per_node=8")
    assert "--dry-run" in dry and "--check-env --set" in check  # a GPU job: no --cpu


def test_preflight_tiny_cpu_run_skips_cuda_and_bare_metal_runs_directly(tmp_path):
    env = _env(tmp_path, SLURM_JOB_ID="4", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="n[1-2]", FAKE_HOSTS="n1 n2",
               SLURM_SUBMIT_DIR=ROOT, NFT_PYTHON="python3")
    dry, check = _preflight(run("slurm/nft_tiny.sh", env))
    assert dry.startswith("python3 -m megatron_nft.train --recipe recipes/tiny_cpu.yaml --dry-run")
    assert "--check-env --cpu --set cluster.nodes=2 --set cluster.gpus_per_node=1" in check
    assert not _preflight(run("slurm/nft_tiny.sh", dict(env, NFT_PREFLIGHT="0")))


def test_build_image_dry_run_follows_the_pins(tmp_path):
    env = dict(_env(tmp_path), NFT_BUILD_DRY="1", NFT_IMAGE_DIR=str(tmp_path / "img"))
    out = run("slurm/build_image.sh", env, str(tmp_path / "nft.sqsh"))
    vllm = re.search(r"^vllm==(\S+)$", open(os.path.join(ROOT, "requirements-gpu.txt")).read(), re.M).group(1)
    steps = re.findall(r"^\[build_image\] (enroot \w+)", out, re.M)
    assert steps == ["enroot import", "enroot create", "enroot start", "enroot export"]
    assert f"docker://vllm/vllm-openai:v{vllm}" in out
    assert "pip install --no-build-isolation -r requirements-gpu-te.txt" in out
    assert f"enroot export --output {tmp_path / 'nft.sqsh'}" in out
