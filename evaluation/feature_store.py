"""A resumable on-disk store of image features, for sets too large to extract in one go (MegaFace's
million distractors, IJB-B/C's images).

    embed = Embedder(model, dim, device, layout="normalized_sum", flip=True, precision="fp32")
    store = store_features(folder, "distractors", images, embed, checkpoint_identity(path, name, dim),
                           chunk_size=10000, names=relative_paths, max_new_chunks=None)
    if store.complete:
        features = store.arrays["features"]        # np.memmap float32 [N, D]

`images` is any lazy image sequence: `len(images)` and `images[i:j] -> uint8 [j-i,112,112,3]` RGB
(a dataset.ImageSequence, a numpy array, ...). `identity` is a dict of JSON values saying what the
features depend on besides the images (checkpoint_identity gives a checkpoint's); the store adds the
embedder's settings, the image count, the chunk size and, with `names`, a hash of the names.

Layouts (Embedder.outputs, each its own array):
- "normalized_sum": "features" = L2-normalise(f(x) + f(mirror x)), or of f(x) without flip, as
  insightface's gen_megaface.py computes MegaFace's features;
- "separate": "features" = f(x) and "features_flip" = f(mirror x), both unnormalised.

Files per KIND in the folder: KIND.npy for "features" and KIND_<output>.npy for the others, float32
[N, D] written through memory maps one chunk at a time; KIND_paths.txt, the names; KIND_progress.json,
the identity and the finished chunks. A chunk's rows reach the files before the record names the
chunk, so an interrupted run loses at most the chunk it was computing and a rerun computes only what
is missing. A store made under another identity is refused, never mixed in (the message names
--feature-dir, the eval scripts' option for the folder). For features computed some other way, use
FeatureStore(...).fill(images, embed) with any `embed(images, description) -> {output: float32 [n, D]}`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from runtime import DataFormatError, UnknownName, atomic_file, l2_normalize, listed

from .features import extract_embeddings

LAYOUTS = ("normalized_sum", "separate")


def checkpoint_identity(path, backbone: str, embedding_size: int) -> dict:
    """What features depend on in a checkpoint file: its path, size and modification time, and the network."""
    stat = os.stat(path)
    return {"checkpoint": os.path.abspath(path), "checkpoint_bytes": stat.st_size,
            "checkpoint_mtime_ns": stat.st_mtime_ns, "backbone": backbone, "embedding_size": embedding_size}


class Embedder:
    """A network's features of an image sequence in one of LAYOUTS: `embed(images, description)`."""

    def __init__(self, model, dim: int, device, *, layout: str = "normalized_sum", flip: bool = True,
                 precision: str = "fp32", batch_size: int = 256):
        if layout not in LAYOUTS:
            raise UnknownName("feature layout", layout, LAYOUTS)
        self.model, self.dim, self.device = model, dim, device
        self.layout, self.flip, self.precision, self.batch_size = layout, flip, precision, batch_size
        self.outputs = ("features", "features_flip") if layout == "separate" and flip else ("features",)
        self.settings = {"layout": layout, "flip": flip, "precision": precision}

    def __call__(self, images, description: str = "features") -> dict:
        embeddings, flipped = extract_embeddings(self.model, images, self.batch_size, self.device, self.precision,
                                                 flip=self.flip, description=description)
        if self.layout == "separate":
            return {"features": embeddings, **({"features_flip": flipped} if flipped is not None else {})}
        return {"features": l2_normalize(embeddings + flipped if flipped is not None else embeddings)}


class _Window:
    """Images start..stop of a sequence, sliced lazily: one chunk handed to the embedder."""

    def __init__(self, images, start: int, stop: int):
        self.images, self.start, self.stop = images, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, items: slice):
        first, last, step = items.indices(len(self))
        if step != 1:
            raise ValueError("a chunk is read in contiguous slices")
        return self.images[self.start + first:self.start + max(first, last)]


class FeatureStore:
    """The [N, dim] float32 arrays of one image set KIND in `folder`, created empty or reopened."""

    def __init__(self, folder, kind: str, identity: dict, n_images: int, dim: int, outputs=("features",),
                 chunk_size: int = 10000, names=None):
        if n_images < 1 or chunk_size < 1:
            raise ValueError(f"a store needs images and chunks of at least one, got {n_images} and {chunk_size}")
        if names is not None and len(names) != n_images:
            raise ValueError(f"{len(names)} names for {n_images} images")
        self.folder, self.kind, self.n_images, self.chunk_size = os.fspath(folder), kind, n_images, chunk_size
        self.n_chunks = -(-n_images // chunk_size)
        self.computed = 0  # chunks this object computed
        self.identity = {**identity, "outputs": list(outputs), "dim": dim, "images": n_images,
                         "chunk_size": chunk_size}
        if names is not None:
            self.identity["paths_sha1"] = hashlib.sha1("\n".join(names).encode()).hexdigest()
        self.progress_path = os.path.join(self.folder, f"{kind}_progress.json")
        files = {name: os.path.join(self.folder, f"{kind}.npy" if name == "features" else f"{kind}_{name}.npy")
                 for name in outputs}
        if os.path.exists(self.progress_path) and all(os.path.exists(path) for path in files.values()):
            self.done = self._stored_chunks()
            self.arrays = {name: self._reopen(path, dim) for name, path in files.items()}
            return
        os.makedirs(self.folder, exist_ok=True)
        self.arrays = {name: np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_images, dim))
                       for name, path in files.items()}
        if names is not None:
            with open(os.path.join(self.folder, f"{kind}_paths.txt"), "w", encoding="utf-8") as handle:
                handle.writelines(f"{name}\n" for name in names)
        self.done = set()
        self._write_progress()

    @property
    def complete(self) -> bool:
        return len(self.done) == self.n_chunks

    def _stored_chunks(self) -> set:
        try:
            with open(self.progress_path, encoding="utf-8") as handle:
                progress = json.load(handle)
            stored, done = progress["run"], set(progress["done"])
        except (ValueError, KeyError, TypeError) as error:
            raise DataFormatError(self.progress_path, f"unreadable progress record ({error}); "
                                                      "delete the folder") from None
        differing = [f"{key} was {stored.get(key)!r}, now {value!r}" for key, value in self.identity.items()
                     if stored.get(key) != value]
        if differing:
            raise DataFormatError(self.progress_path, f"holds {self.kind} features of another run "
                                                      f"({listed(differing, 3, '; ')}): pass another "
                                                      "--feature-dir or delete this one")
        return done

    def _reopen(self, path, dim: int) -> np.memmap:
        array = np.lib.format.open_memmap(path, mode="r+")
        if array.shape != (self.n_images, dim) or array.dtype != np.float32:
            raise DataFormatError(path, f"holds {array.dtype} {array.shape}, expected float32 "
                                        f"{(self.n_images, dim)}; delete the folder")
        return array

    def _write_progress(self) -> None:
        with atomic_file(self.progress_path, "w") as handle:
            json.dump({"run": self.identity, "done": sorted(self.done), "complete": self.complete}, handle, indent=1)

    def fill(self, images, embed, max_new_chunks: int | None = None) -> int:
        """Compute the chunks the store lacks, at most `max_new_chunks` of them; the number computed."""
        if len(images) != self.n_images:
            raise ValueError(f"{len(images)} images for a store of {self.n_images}")
        computed = 0
        for chunk in range(self.n_chunks):
            if chunk in self.done:
                continue
            if computed == max_new_chunks:
                break
            start, stop = chunk * self.chunk_size, min(self.n_images, (chunk + 1) * self.chunk_size)
            rows = embed(_Window(images, start, stop), f"{self.kind} chunk {chunk + 1}/{self.n_chunks}")
            for name, array in self.arrays.items():
                array[start:stop] = rows[name]
                array.flush()  # the rows reach the file before the progress record names their chunk
            self.done.add(chunk)
            self._write_progress()
            computed += 1
            print(f"{self.kind}: chunk {chunk + 1}/{self.n_chunks} (images {start}-{stop - 1}) computed",
                  file=sys.stderr)
        self.computed += computed
        print(f"{self.kind}: {computed} chunks computed, {len(self.done) - computed} reused, "
              f"{self.n_chunks - len(self.done)} left ({self.folder})", file=sys.stderr)
        return computed


def store_features(folder, kind: str, images, embed: Embedder, identity: dict, *, chunk_size: int = 10000,
                   names=None, max_new_chunks: int | None = None) -> FeatureStore:
    """Open (or create) the store of `images` under `identity` plus the embedder's settings and fill
    what it lacks, at most `max_new_chunks` chunks; check `.complete` before reading `.arrays`."""
    store = FeatureStore(folder, kind, {**identity, **embed.settings}, len(images), embed.dim, embed.outputs,
                         chunk_size, names)
    store.fill(images, embed, max_new_chunks)
    return store
