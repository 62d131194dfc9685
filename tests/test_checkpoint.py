"""Unit tests of atomic, checksummed checkpoints: round trip, corruption, fallback, retention."""

import os

import pytest
import torch

from utilities.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    newest_valid_checkpoint,
    save_checkpoint,
)


def state_of(epoch):
    generator = torch.Generator().manual_seed(epoch)
    return {
        "model": {"weight": torch.randn(4, 3, generator=generator), "bias": torch.zeros(4)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1 * epoch}]},
        "progress": {"epoch": epoch, "step": 10 * epoch},
        "identity": {"training_type": "MBSGD"},
    }


def assert_same_state(loaded, expected):
    assert loaded.keys() == expected.keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    assert loaded["optimizer"] == expected["optimizer"]
    assert loaded["progress"] == expected["progress"]
    assert loaded["identity"] == expected["identity"]


def flip_byte(path, position=None):
    data = bytearray(open(path, "rb").read())
    index = len(data) // 2 if position is None else position
    data[index] ^= 0xFF
    with open(path, "wb") as handle:
        handle.write(bytes(data))


def test_round_trip(tmp_path):
    path = save_checkpoint(state_of(3), str(tmp_path), epoch=3)
    assert path == checkpoint_path(str(tmp_path), 3) == str(tmp_path / "epoch-00003.pt")
    assert_same_state(load_checkpoint(path), state_of(3))


def test_save_creates_the_directory_and_a_checksum(tmp_path):
    directory = tmp_path / "run" / "checkpoints"
    path = save_checkpoint(state_of(1), str(directory), epoch=1)
    assert os.path.exists(path) and os.path.exists(path + ".sha256")
    assert len(open(path + ".sha256").read().strip()) == 64


def test_flipped_byte_is_a_checksum_mismatch(tmp_path):
    path = save_checkpoint(state_of(2), str(tmp_path), epoch=2)
    flip_byte(path)
    with pytest.raises(CheckpointError, match="checksum") as caught:
        load_checkpoint(path)
    assert path in str(caught.value)


def test_truncated_file_without_checksum_cannot_be_loaded(tmp_path):
    path = save_checkpoint(state_of(2), str(tmp_path), epoch=2)
    os.remove(path + ".sha256")
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(str(tmp_path / "epoch-00001.pt"))


def test_file_that_is_no_trainer_checkpoint(tmp_path):
    path = save_checkpoint({"weights": torch.ones(2)}, str(tmp_path), epoch=1)  # checksummed, so it is read
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(path)


def test_newest_valid_checkpoint_is_the_newest(tmp_path):
    for epoch in (1, 2, 3):
        save_checkpoint(state_of(epoch), str(tmp_path), epoch)
    path, state = newest_valid_checkpoint(str(tmp_path))
    assert path == checkpoint_path(str(tmp_path), 3)
    assert_same_state(state, state_of(3))


def test_newest_valid_checkpoint_skips_a_corrupt_newest_with_a_warning(tmp_path, capsys):
    for epoch in (1, 2):
        save_checkpoint(state_of(epoch), str(tmp_path), epoch)
    flip_byte(checkpoint_path(str(tmp_path), 2))
    path, state = newest_valid_checkpoint(str(tmp_path))
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning:") and "epoch-00002.pt" in warning[0]
    assert path == checkpoint_path(str(tmp_path), 1)
    assert_same_state(state, state_of(1))


def test_newest_valid_checkpoint_none_when_all_corrupt_or_absent(tmp_path, capsys):
    assert newest_valid_checkpoint(str(tmp_path / "nothing-here")) is None
    save_checkpoint(state_of(1), str(tmp_path), 1)
    flip_byte(checkpoint_path(str(tmp_path), 1))
    assert newest_valid_checkpoint(str(tmp_path)) is None
    assert "warning:" in capsys.readouterr().err


def test_keep_bounds_the_number_of_checkpoints(tmp_path):
    for epoch in range(1, 6):
        save_checkpoint(state_of(epoch), str(tmp_path), epoch, keep=2)
        assert len(list_checkpoints(str(tmp_path))) == min(epoch, 2)
    assert sorted(os.listdir(tmp_path)) == [
        "epoch-00004.pt",
        "epoch-00004.pt.sha256",
        "epoch-00005.pt",
        "epoch-00005.pt.sha256",
    ]
    assert_same_state(load_checkpoint(checkpoint_path(str(tmp_path), 5)), state_of(5))


def test_keep_zero_keeps_all(tmp_path):
    for epoch in range(1, 5):
        save_checkpoint(state_of(epoch), str(tmp_path), epoch, keep=0)
    assert len(list_checkpoints(str(tmp_path))) == 4


def test_list_checkpoints_oldest_first_and_ignores_other_files(tmp_path):
    for epoch in (10, 2, 7):
        save_checkpoint(state_of(epoch), str(tmp_path), epoch)
    (tmp_path / "epoch-00011.pt.tmp.1234").write_bytes(b"half a file")  # a writer that died
    (tmp_path / "notes.pt").write_bytes(b"")
    names = [os.path.basename(p) for p in list_checkpoints(str(tmp_path))]
    assert names == ["epoch-00002.pt", "epoch-00007.pt", "epoch-00010.pt"]


def test_no_temporary_files_left_behind(tmp_path):
    for epoch in range(1, 4):
        save_checkpoint(state_of(epoch), str(tmp_path), epoch, keep=2)
    atomic_torch_save({"model": {}}, str(tmp_path / "model.pt"))
    leftovers = [name for name in os.listdir(tmp_path) if ".tmp" in name]
    assert leftovers == []
    assert sorted(os.listdir(tmp_path)) == [
        "epoch-00002.pt",
        "epoch-00002.pt.sha256",
        "epoch-00003.pt",
        "epoch-00003.pt.sha256",
        "model.pt",
    ]


def test_overwriting_a_checkpoint_replaces_it(tmp_path):
    save_checkpoint(state_of(1), str(tmp_path), epoch=4)
    save_checkpoint(state_of(2), str(tmp_path), epoch=4)
    assert_same_state(load_checkpoint(checkpoint_path(str(tmp_path), 4)), state_of(2))


def test_load_maps_to_the_requested_device(tmp_path):
    path = save_checkpoint(state_of(1), str(tmp_path), epoch=1)
    assert load_checkpoint(path, device="cpu")["model"]["weight"].device.type == "cpu"
