"""bf16 autocast decided by the hardware: `auto` is on exactly where bfloat16 is native, the start-up line says
what was chosen and why, a checkpoint records what the learner resolved, and a resumed run re-resolves.

A CPU without native bfloat16 is imitated with oneDNN's and ATen's ISA caps (ONEDNN_MAX_CPU_ISA=AVX2,
ATEN_CPU_CAPABILITY=avx2), read when torch loads, so those runs are separate processes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from common.device import native_bf16, resolve_bf16
from common.storage.checkpoint import load_checkpoint
from tests.helpers import REPO

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def python(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_avx2_cap_makes_the_probe_say_not_native_and_auto_pick_float32():
    code = ("import torch; from common.device import native_bf16, resolve_bf16; cpu = torch.device('cpu'); "
            "print(native_bf16(cpu)[0], resolve_bf16('auto', cpu), resolve_bf16(True, cpu), resolve_bf16(False, cpu))")
    assert python(code, AVX2) == "False False True False"


def test_auto_follows_the_probe_and_explicit_values_are_kept():
    cpu = torch.device("cpu")
    assert resolve_bf16("auto", cpu) == native_bf16(cpu)[0]
    assert (resolve_bf16(True, cpu), resolve_bf16(False, cpu)) == (True, False)


def train(args: list[str], env: dict) -> str:
    result = subprocess.run([sys.executable, str(REPO / "launch.py"), "--runtime", "single-process", "--preset", "tiny",
                             "--num-goals", "64", "--threads", "1", *args], cwd=REPO, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_checkpoint_records_the_resolved_precision_and_resume_re_resolves(tmp_path, data_dir):
    run = ["--data-dir", str(data_dir), "--checkpoint-dir", str(tmp_path / "run")]
    first = train([*run, "--total-updates", "4"], AVX2)
    assert "acting float32 (auto), learning float32 (auto)" in first and "no native bfloat16" in first
    assert load_checkpoint(tmp_path / "run").learner_state()["learner"]["precision"] == {"learning_bf16": False}
    resumed = train([*run, "--total-updates", "8", "--resume"], {})  # this machine's own CPU, uncapped
    native = native_bf16(torch.device("cpu"))[0]
    assert f"learning {'bf16 autocast' if native else 'float32'} (auto)" in resumed
    assert load_checkpoint(tmp_path / "run").learner_state()["learner"]["precision"] == {"learning_bf16": native}


def test_explicit_bf16_on_a_cpu_without_it_runs_with_a_warning(tmp_path, data_dir):
    out = train(["--data-dir", str(data_dir), "--total-updates", "2", "--set", "acting.bf16=true",
                 "--set", "learning.bf16=true"], AVX2)
    assert "warning: bf16 was set explicitly on a CPU without native bfloat16" in out and "done: 2 updates" in out
