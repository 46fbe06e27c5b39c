"""evaluation/feature_store.py on its own, on real image files and a real network: an interrupted
fill resumes without recomputing a finished chunk, a store made under other settings is refused,
and each layout stores what its benchmark needs."""

import json

import cv2
import numpy as np
import pytest
import torch

from backbone import build_backbone
from dataset import image_files
from evaluation.feature_store import Embedder, FeatureStore, checkpoint_identity, store_features
from evaluation.features import extract_embeddings
from runtime import DataFormatError, l2_normalize

IDENTITY = {"checkpoint": "model.pt", "precision": "fp32"}
N_IMAGES, CHUNK = 10, 3  # chunks of 3, 3, 3 and 1 images


def colour(index: int) -> np.ndarray:
    return np.array([index, 2 * index, 255 - index], dtype=np.uint8)


@pytest.fixture
def folder_of_images(tmp_path):
    names = [f"id{i % 3}/{i:02d}.png" for i in range(N_IMAGES)]
    for index, name in enumerate(names):
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        image = np.broadcast_to(colour(index), (112, 112, 3))
        assert cv2.imwrite(str(tmp_path / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return tmp_path / "images", names


class PixelFeatures:
    """A 3-d feature per image (its top-left pixel), recording which chunks it computed."""

    def __init__(self):
        self.chunks = []

    def __call__(self, images, description):
        batch = images[0:len(images)]
        self.chunks.append(description)
        return {"features": batch[:, 0, 0, :].astype(np.float32)}


def open_store(tmp_path, names, identity=IDENTITY, chunk_size=CHUNK):
    return FeatureStore(tmp_path / "store", "faces", identity, len(names), 3, chunk_size=chunk_size, names=names)


def test_an_interrupted_fill_resumes_without_recomputing_a_finished_chunk(folder_of_images, tmp_path):
    root, names = folder_of_images
    images = image_files(root, names, "the test list")
    original = (root / names[7]).read_bytes()
    (root / names[7]).write_bytes(b"broken")  # in the third chunk
    embed = PixelFeatures()
    store = open_store(tmp_path, names)
    with pytest.raises(DataFormatError, match=f"{names[7]}, whole file: payload of 6 bytes"):
        store.fill(images, embed)
    assert embed.chunks == ["faces chunk 1/4", "faces chunk 2/4"] and not store.complete
    progress = json.loads((tmp_path / "store" / "faces_progress.json").read_text())
    assert progress["done"] == [0, 1] and progress["complete"] is False
    # Mark the finished rows: recomputing any of them would overwrite the mark.
    store.arrays["features"][:6] = -1.0
    store.arrays["features"].flush()
    del store

    (root / names[7]).write_bytes(original)
    embed = PixelFeatures()
    resumed = open_store(tmp_path, names)
    assert resumed.fill(images, embed, max_new_chunks=1) == 1 and not resumed.complete
    assert resumed.fill(images, embed) == 1 and resumed.complete and resumed.computed == 2
    assert embed.chunks == ["faces chunk 3/4", "faces chunk 4/4"]
    features = np.load(tmp_path / "store" / "faces.npy")
    assert (features[:6] == -1.0).all()
    np.testing.assert_array_equal(features[6:], np.stack([colour(i) for i in range(6, N_IMAGES)]))
    assert json.loads((tmp_path / "store" / "faces_progress.json").read_text())["complete"] is True
    assert (tmp_path / "store" / "faces_paths.txt").read_text().splitlines() == names
    embed = PixelFeatures()
    assert open_store(tmp_path, names).fill(images, embed) == 0 and embed.chunks == []


def test_a_store_of_other_settings_is_refused(folder_of_images, tmp_path):
    root, names = folder_of_images
    open_store(tmp_path, names).fill(image_files(root, names, "the test list"), PixelFeatures())
    progress = tmp_path / "store" / "faces_progress.json"
    refusals = {
        "(precision was 'fp32', now 'bf16')": dict(identity={**IDENTITY, "precision": "bf16"}),
        "(chunk_size was 3, now 4)": dict(chunk_size=4),
        "(paths_sha1 was ": dict(names=names[::-1]),
        "(checkpoint was 'model.pt', now 'other.pt'; precision was 'fp32', now 'bf16'; flip was None, now True "
        "(+1 more))": dict(identity={"checkpoint": "other.pt", "precision": "bf16", "flip": True, "seed": 1}),
    }
    for message, change in refusals.items():
        with pytest.raises(DataFormatError) as refused:
            open_store(tmp_path, change.pop("names", names), **change)
        assert str(refused.value).startswith(f"{progress}: holds faces features of another run {message}")
        assert str(refused.value).endswith(": pass another --feature-dir or delete this one")
    progress.write_text("{not json")
    with pytest.raises(DataFormatError, match="faces_progress.json: unreadable progress record"):
        open_store(tmp_path, names)


def test_each_layout_stores_what_its_benchmark_needs(tmp_path, one_thread):
    """MegaFace keeps normalise(f(x) + f(mirror x)); IJB keeps f(x) and f(mirror x) unnormalised."""
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet", 16).eval()
    images = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)  # any sequence will do
    plain, mirrored = extract_embeddings(model, images, device="cpu", progress=False)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    identity = checkpoint_identity(tmp_path / "model.pt", "mobilefacenet", 16)
    assert identity["checkpoint"] == str(tmp_path / "model.pt") and identity["embedding_size"] == 16

    separate = Embedder(model, 16, "cpu", layout="separate")
    assert separate.outputs == ("features", "features_flip")
    store = store_features(tmp_path / "ijb", "images", images, separate, identity, chunk_size=3)
    assert store.complete and store.computed == 2
    np.testing.assert_allclose(store.arrays["features"], plain, atol=1e-5)
    np.testing.assert_allclose(store.arrays["features_flip"], mirrored, atol=1e-5)
    assert (tmp_path / "ijb" / "images_features_flip.npy").is_file()

    summed = store_features(tmp_path / "megaface", "images", images, Embedder(model, 16, "cpu"), identity,
                            chunk_size=3)
    assert set(summed.arrays) == {"features"}
    np.testing.assert_allclose(summed.arrays["features"], l2_normalize(plain + mirrored), atol=1e-5)
    recorded = json.loads((tmp_path / "megaface" / "images_progress.json").read_text())["run"]
    assert recorded["layout"] == "normalized_sum" and recorded["flip"] is True and recorded["dim"] == 16
    assert Embedder(model, 16, "cpu", layout="separate", flip=False).outputs == ("features",)
    with pytest.raises(ValueError, match="unknown feature layout 'sum'; valid: normalized_sum, separate"):
        Embedder(model, 16, "cpu", layout="sum")
