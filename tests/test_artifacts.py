"""runtime.artifacts: the one atomic writer, the one reader and the checkpoint format."""

import os
import stat

import numpy as np
import pytest
import torch

from runtime import DataFormatError
from runtime.artifacts import (ArtifactError, MappedRows, atomic_file, atomic_save, backbone_file, check_fit,
                               load_torch_file, open_npz, read_backbone_weights, save_npz)


def test_the_writer_fsyncs_the_file_renames_it_then_fsyncs_the_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "fsync file")
        real_fsync(descriptor)

    def replace(source, target):
        events.append(f"rename {os.path.basename(source).endswith('.partial')} -> {os.path.basename(target)}")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_file(tmp_path / "a.txt", "w") as handle:
        handle.write("new")
    assert events == ["fsync file", "rename True -> a.txt", "fsync folder"]
    assert (tmp_path / "a.txt").read_text() == "new"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


class FailsMidWrite:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_keep_previous_moves_the_old_file_aside_only_once_the_new_one_is_written(tmp_path):
    latest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    atomic_save({"step": 1}, latest, keep_previous=previous)
    assert not previous.exists()
    atomic_save({"step": 2}, latest, keep_previous=previous)
    assert load_torch_file(latest) == {"step": 2} and load_torch_file(previous) == {"step": 1}
    with pytest.raises(RuntimeError):
        atomic_save({"step": 3, "bad": FailsMidWrite()}, latest, keep_previous=previous)
    assert load_torch_file(latest) == {"step": 2} and load_torch_file(previous) == {"step": 1}


def test_npz_keeps_its_exact_name_and_reads_back(tmp_path):
    path = tmp_path / "sub" / "features.embeddings"  # np.savez alone would append .npz
    save_npz(path, embeddings=np.eye(3, dtype=np.float32), labels=np.arange(3))
    arrays = open_npz(path, ("embeddings",), ("labels", "absent"))
    assert sorted(arrays) == ["embeddings", "labels"]
    np.testing.assert_array_equal(arrays["labels"], np.arange(3))
    with pytest.raises(ArtifactError, match=r"no array issame in the archive \(it holds embeddings, labels"):
        open_npz(path, ("embeddings", "issame"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ArtifactError, match="not a readable .npz archive"):
        open_npz(tmp_path / "text.npz", ("embeddings",))
    with pytest.raises(ArtifactError, match="not found"):
        open_npz(tmp_path / "absent.npz", ("embeddings",))


def test_the_reader_refuses_code_damage_and_absence_with_one_error_type(tmp_path):
    torch.save({"callable": os.getcwd}, tmp_path / "code.pt")  # unpickling it would import a function
    (tmp_path / "cut.pt").write_bytes((tmp_path / "code.pt").read_bytes()[:40])
    for name, problem in (("code.pt", "not a PyTorch checkpoint"), ("cut.pt", "not a PyTorch checkpoint"),
                          ("absent.pt", "not found")):
        with pytest.raises(ArtifactError, match=problem) as caught:
            load_torch_file(tmp_path / name)
        assert isinstance(caught.value, DataFormatError) and str(tmp_path / name) in str(caught.value)


def test_the_three_checkpoint_layouts_give_the_same_weights(tmp_path):
    weights = torch.nn.Linear(3, 2).state_dict()
    torch.save(backbone_file("mobilefacenet", 2, weights, {"lr": 0.1}), tmp_path / "backbone.pt")
    torch.save({"backbone": weights, "head": {}, "config": {"backbone": "ir18", "embedding_size": 2}},
               tmp_path / "checkpoint.pt")
    torch.save({f"module.{key}": value for key, value in weights.items()}, tmp_path / "ddp.pt")
    read = {name: read_backbone_weights(tmp_path / name) for name in ("backbone.pt", "checkpoint.pt", "ddp.pt")}
    assert [(stored, size) for _, stored, size in read.values()] == [("mobilefacenet", 2), ("ir18", 2), (None, None)]
    for state_dict, _, _ in read.values():
        assert list(state_dict) == ["weight", "bias"] and torch.equal(state_dict["weight"], weights["weight"])
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="not a checkpoint: expected .* found a dict with keys 'epoch'"):
        read_backbone_weights(tmp_path / "other.pt")


def test_check_fit_names_missing_unexpected_and_mismatched_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    state_dict = dict(model.state_dict())
    check_fit(state_dict, model, "f.pt", "two layers")
    state_dict.pop("1.bias")
    state_dict["extra"] = torch.zeros(1)
    state_dict["0.weight"] = torch.zeros(4, 3)
    with pytest.raises(ArtifactError) as caught:
        check_fit(state_dict, model, "f.pt", "two layers")
    assert str(caught.value) == ("f.pt: does not fit two layers: missing keys 1.bias; unexpected keys extra; "
                                 "shape mismatch (file vs network) 0.weight [4, 3] vs [2, 3] "
                                 "(check --backbone and --embedding-size)")


def test_mapped_matrices_read_by_blocks_of_rows_equal_the_array(tmp_path):
    matrix = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    save_npz(tmp_path / "f.npz", embeddings=matrix, labels=np.arange(40))
    arrays = open_npz(tmp_path / "f.npz", ("embeddings",), ("labels",), mapped=("embeddings",))
    assert type(arrays["embeddings"]) is MappedRows and arrays["embeddings"].shape == (40, 3)
    for rows in ([0, 1, 2], [39, 0], np.arange(5, 40, 7)):  # a near span, and rows far apart
        np.testing.assert_array_equal(arrays["embeddings"][np.asarray(rows)], matrix[rows])
    np.testing.assert_array_equal(arrays["labels"], np.arange(40))
    with open(tmp_path / "f.npz", "rb") as handle:  # an archive cut inside the matrix
        (tmp_path / "cut.npz").write_bytes(handle.read(200))
    with pytest.raises(ArtifactError, match="cut.npz"):
        open_npz(tmp_path / "cut.npz", ("embeddings",), mapped=("embeddings",))
