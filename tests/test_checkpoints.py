"""Checkpoints: written on exit and on Ctrl-C, atomic, and refused with one line when corrupt or foreign."""

from __future__ import annotations

import json
import shutil
import signal
from collections import OrderedDict

import pytest
import torch

import launch
from common.storage.checkpoint import (LEARNER_FILE, complete_checkpoints, encode_learner_state, load_checkpoint,
                               save_checkpoint)
from tests.helpers import start_launch, stop_process, wait_for


def tiny(data_dir, checkpoints, *extra) -> list[str]:
    return ["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir), "--num-goals", "256",
            "--checkpoint-dir", str(checkpoints), "--progress-every", "1", *extra]


@pytest.fixture
def saved(data_dir, tmp_path, capsys):
    """A finished 30-update single-process run's checkpoint directory."""
    checkpoints = tmp_path / "ckpt"
    assert launch.main(tiny(data_dir, checkpoints, "--total-updates", "30")) == 0
    capsys.readouterr()
    return checkpoints


def resume_error(capsys, data_dir, checkpoints, *extra) -> str:
    code = launch.main(tiny(data_dir, checkpoints, "--total-updates", "40", "--resume", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_ctrl_c_saves_a_checkpoint_that_resumes(data_dir, tmp_path, capsys):
    checkpoints = tmp_path / "ckpt"
    log = tmp_path / "log.txt"
    process = start_launch(tiny(data_dir, checkpoints, "--total-updates", "1000000"), log)
    try:
        wait_for(lambda: "updates " in log.read_text() and "updates 0/" not in log.read_text().splitlines()[-1],
                 120, what="progress")
    finally:
        code = stop_process(process, signal.SIGINT)
    assert code == 0 and "stopped by SIGINT" in log.read_text()
    updates = load_checkpoint(checkpoints).manifest["updates"]
    assert updates > 0
    assert launch.main(tiny(data_dir, checkpoints, "--total-updates", str(updates + 5), "--resume")) == 0
    assert f"at update {updates}" in capsys.readouterr().out
    assert load_checkpoint(checkpoints).manifest["updates"] == updates + 5


def test_flipped_byte_is_refused_by_its_digest(saved, data_dir, capsys):
    path = complete_checkpoints(saved)[-1] / LEARNER_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "does not match its SHA-256" in resume_error(capsys, data_dir, saved)


def test_truncated_replay_file_is_refused_by_its_size(saved, data_dir, capsys):
    path = complete_checkpoints(saved)[-1] / "replay-0.msgpack"
    path.write_bytes(path.read_bytes()[:1000])
    assert "is 1000 bytes, the manifest says" in resume_error(capsys, data_dir, saved)


def test_foreign_manifest_is_refused(saved, data_dir, capsys):
    manifest = complete_checkpoints(saved)[-1] / "manifest.json"
    manifest.write_text(json.dumps({"format": "someone-elses-model", "files": {}}))
    assert "is not a gcrl checkpoint" in resume_error(capsys, data_dir, saved)


def test_a_new_run_into_a_folder_with_checkpoints_is_refused_and_they_stay(saved, data_dir, capsys):
    before = [(p.name, sorted(f.name for f in p.iterdir())) for p in complete_checkpoints(saved)]
    code = launch.main(tiny(data_dir, saved, "--total-updates", "40"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already holds checkpoints (newest update-000000030)" in err[0]
    assert [(p.name, sorted(f.name for f in p.iterdir())) for p in complete_checkpoints(saved)] == before


def _copy_replay(checkpoint):
    """A replay writer that copies a checkpoint's replay files into the new staging folder."""
    def write(staging):
        files = {name: info for shard in checkpoint.replay_shards for name, info in shard.items()}
        for name in files:
            shutil.copyfile(checkpoint.path / name, staging / name)
        return files
    return write


def test_format_1_checkpoint_is_refused_for_resume_but_still_evaluates(saved, data_dir, capsys):
    path = complete_checkpoints(saved)[-1]
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    assert "has checkpoint format 1 (replay stored per transition)" in resume_error(capsys, data_dir, saved)
    assert load_checkpoint(saved, with_replay=False).learner_state()["learner"]["counts"]["steps"] > 0


def test_replay_files_without_a_header_are_refused(saved, data_dir, capsys):
    path = complete_checkpoints(saved)[-1]
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]["replay-0.msgpack"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert "without a header" in resume_error(capsys, data_dir, saved)


class Payload:
    """A class a pickle would construct on load; weights_only must refuse it."""


def test_pickled_object_with_valid_digest_is_never_unpickled(saved, data_dir, capsys):
    checkpoint = load_checkpoint(saved)
    state = checkpoint.learner_state()
    state["learner"]["counts"] = OrderedDict(payload=Payload())
    save_checkpoint(saved, checkpoint.manifest["updates"] + 1, encode_learner_state(state),
                    _copy_replay(checkpoint), {k: v for k, v in checkpoint.manifest.items()
                                               if k in ("config", "preset", "runtime", "dataset")})
    assert "cannot be read as a learner state" in resume_error(capsys, data_dir, saved)


def test_other_settings_or_other_data_are_refused(saved, data_dir, capsys):
    line = resume_error(capsys, data_dir, saved, "--set", "mdp.horizon=5")
    assert "trained with other settings (mdp.horizon)" in line
    line = resume_error(capsys, data_dir, saved, "--num-goals", "128")
    assert "was trained on mnist/train/256x1x28x28" in line


def test_ray_resume_with_other_shard_count_is_refused_before_ray_starts(saved, data_dir, capsys):
    args = ["--runtime", "ray", "--num-replay-shards", "2", "--metrics-port", "-1"]
    code = launch.main(tiny(data_dir, saved, "--total-updates", "40", "--resume")[2:] + args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds 1 replay shards; resume with --num-replay-shards 1" in err


def test_interrupted_write_leaves_the_newest_complete_checkpoint(saved, monkeypatch):
    before = complete_checkpoints(saved)
    state = load_checkpoint(saved)

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("common.storage.checkpoint.write_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(saved, 999, state.learner_bytes, _copy_replay(state), {})
    assert complete_checkpoints(saved) == before
    assert load_checkpoint(saved).manifest["updates"] == state.manifest["updates"]


def test_single_process_checkpoint_holds_everything_to_continue(saved):
    checkpoint = load_checkpoint(saved)
    state = checkpoint.learner_state()
    assert set(state) >= {"learner", "x1", "counters", "rng"}
    assert set(state["learner"]) == {"agent", "target_q", "optimizers", "counts", "precision"}
    assert set(state["learner"]["optimizers"]) == {"proposal", "selection", "q"}
    assert torch.is_tensor(state["rng"]["torch"]) and "state" in state["rng"]["worker"]
    assert checkpoint.manifest["config"]["mdp"]["horizon"] == 3 and len(checkpoint.replay_shards) == 1


def test_keeps_only_the_newest_checkpoints(saved, data_dir, capsys):
    for total in (35, 40, 45):
        assert launch.main(tiny(data_dir, saved, "--total-updates", str(total), "--resume",
                                "--keep-checkpoints", "2")) == 0
    assert [p.name for p in complete_checkpoints(saved)] == ["update-000000040", "update-000000045"]
    shutil.rmtree(complete_checkpoints(saved)[-1])
    assert load_checkpoint(saved).manifest["updates"] == 40


def test_manifest_from_before_loss_reduction_reads_as_the_per_pixel_loss():
    import dataclasses

    from common.method.presets import small
    from common.storage.run_state import config_from_manifest

    old = small().to_dict()
    del old["mdp"]["loss_reduction"]  # what checkpoints written before the setting existed hold
    restored = config_from_manifest({"config": old})
    assert restored.mdp.loss_reduction == "mean" != small().mdp.loss_reduction
    per_pixel = dataclasses.replace(small(), mdp=dataclasses.replace(small().mdp, loss_reduction="mean"))
    assert restored == per_pixel
