"""Hashes name what was measured: a folder's weights hash follows its safetensors files and their names."""

import hashlib

import torch
from safetensors.torch import save_file

from erase.provenance import file_sha256, folder_hash, module_sha256


def test_folder_hash_follows_content_and_names_and_streams_files(tmp_path):
    (tmp_path / "unet").mkdir()
    save_file({"w": torch.ones(3)}, tmp_path / "unet" / "a.safetensors")
    (tmp_path / "notes.txt").write_text("not weights")
    first = folder_hash(tmp_path)
    assert len(first) == 16 and folder_hash(tmp_path) == first
    (tmp_path / "notes.txt").write_text("other")
    assert folder_hash(tmp_path) == first  # only weights count
    save_file({"w": torch.zeros(3)}, tmp_path / "unet" / "a.safetensors")
    assert folder_hash(tmp_path) != first
    data = (tmp_path / "unet" / "a.safetensors").read_bytes()
    assert file_sha256(tmp_path / "unet" / "a.safetensors") == hashlib.sha256(data).hexdigest()


def test_module_hash_sees_values_not_identity():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    b.load_state_dict(a.state_dict())
    assert module_sha256(a) == module_sha256(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert module_sha256(a) != module_sha256(b)
    norm = torch.nn.BatchNorm1d(3)  # holds a 0-d integer tensor (num_batches_tracked)
    assert module_sha256(norm) == module_sha256(torch.nn.BatchNorm1d(3))
