"""IJB-B / IJB-C 1:1 verification and 1:N identification from per-image features, computed as the
reference code computes them, without its per-template Python loops.

1:1 -- insightface's ``recognition/arcface_torch/eval_ijbc.py``:
  image feature (float32): F2 f(x) + f(mirror x) | F1 their concatenation | F0 f(x); N1 keeps its
  norm, N0 divides it by ``np.sqrt(np.sum(x ** 2, -1))``; D1 multiplies it by the faceness score,
  D0 does not. Within a template the images of each media id are averaged where there are several
  (``np.mean``, rows in file order), the media vectors summed in media id order (float32, as the
  reference's ``np.sum(axis=0)`` adds rows one after another), the sum cast to float64 and
  L2-normalised with sklearn ``normalize`` semantics. A pair's score is the dot product of its two
  templates. TAR at FAR is read off scikit-learn's ``roc_curve(label, score)`` (drop_intermediate=
  True) as the reference reads it: FPR and TPR reversed, then the point whose FPR is nearest the
  target, the first such point in that reversed order when several are equally near.
1:N -- insightface's ``recognition/_evaluation_/ijb/ijb_evals.py`` ``evaluation_1N``, the same
  template features, each gallery searched on its own (open set): a probe whose subject the
  gallery lacks is non-mated there. Rank-k counts mated probes whose mate is among the k highest
  scores (ties ranked as the reference's ``np.argsort(score)[::-1]`` ranks them under a stable
  sort: the later gallery column first); rank-k over both galleries is the sum of the two counts
  over the number of probe templates. TPIR at FPIR f: threshold = the non-mated probes' maximum
  scores sorted in descending order, at index ``max(int(n * f) - 1, 0)``; a mated probe counts
  when its mate scores above every other gallery template and above the threshold; per gallery
  over its mated probes, and the mean of the galleries.

Speed: the pooling is segment sums over images sorted by (template, media, row), blocks of
templates on two threads; pair scores are blocks of matrix products read at the pairs' positions
(evaluation/ijb/identify.py reads the gallery x probe pairs off the 1:N search's own products); the
ROC comes from counts over one sort of the scores. Scores are float64 dot products like the
reference's, summed in BLAS's order rather than ``np.sum``'s, so they agree to float64 rounding;
equal template features still give equal scores, so the reference's ties stay ties. The 1:N
search is in evaluation/ijb/identify.py.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from runtime import l2_normalize

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
RANKS = (1, 5, 10)
CMC_MAX_RANK = 100
# ijb_evals.py's DET grid: 100 points from 1e-4 on a log scale, then 1. Its table shows the points
# at 0.01 and 0.1, which np.arange makes 0.01000000000000004 and 0.10000000000000062: those are
# the FPIRs the reported TPIRs are read at.
DET_FPIRS = tuple(float(10 ** exponent) for exponent in np.arange(-4, 0, 4 / 100)) + (1.0,)
FPIR_TARGETS = (0.01, 0.1)
FPIR_ON_GRID = {0.01: DET_FPIRS[50], 0.1: DET_FPIRS[75]}
DEFAULT_MODE = "N1D1F2"
SCORE_BLOCK_BYTES = 64 << 20
_POOL_BLOCK_IMAGES = 1 << 13


# ---------------------------------------------------------------- modes and image features

@dataclass(frozen=True)
class Mode:
    """eval_ijbc.py's test mode: N1 keep the norm / N0 normalise each image feature, D1 weight it
    by faceness / D0 not, F2 add the mirror image's feature / F1 concatenate it / F0 leave it out."""

    keep_norm: bool = True
    faceness: bool = True
    flip: int = 2

    @classmethod
    def parse(cls, text: str) -> "Mode":
        text = text.strip().upper()
        if len(text) != 6 or text[0::2] != "NDF" or text[1] not in "01" or text[3] not in "01" or text[5] not in "012":
            raise ValueError(f"mode {text!r} is not N{{0,1}}D{{0,1}}F{{0,1,2}}, e.g. {DEFAULT_MODE}")
        return cls(text[1] == "1", text[3] == "1", int(text[5]))

    @property
    def name(self) -> str:
        return f"N{int(self.keep_norm)}D{int(self.faceness)}F{self.flip}"


def image_features(embeddings: np.ndarray, flipped: np.ndarray | None, faceness: np.ndarray, mode: Mode) -> np.ndarray:
    """float32 [n, D or 2D]: the per-image vector the templates are pooled from, in the reference's
    float32 operations (in place on the first new array, which rounds the same)."""
    features = np.asarray(embeddings, dtype=np.float32)
    if mode.flip:
        if flipped is None:
            raise ValueError(f"mode {mode.name} needs the mirror images' features; use F0")
        flipped = np.asarray(flipped, dtype=np.float32)
        features = features + flipped if mode.flip == 2 else np.concatenate((features, flipped), axis=1)
    elif features is embeddings and (mode.faceness or not mode.keep_norm):
        features = features.copy()
    if not mode.keep_norm:
        features /= np.sqrt(np.sum(features ** 2, -1, keepdims=True))
    if mode.faceness:
        features *= np.asarray(faceness, dtype=np.float32)[:, np.newaxis]
    return features


class FeatureRows:
    """Per-image features, any float [n, D] array (or anything indexed by row arrays, such as a memory
    map) and its mirror-image twin (or None), read a block of rows at a time. With `positions`, image
    row r is array row positions[r] (a store that holds only the images present)."""

    def __init__(self, embeddings, flipped=None, positions: np.ndarray | None = None):
        self.embeddings, self.flipped, self.positions = embeddings, flipped, positions
        if flipped is not None and tuple(flipped.shape) != tuple(embeddings.shape):
            raise ValueError(f"embeddings_flip has shape {tuple(flipped.shape)}, embeddings {tuple(embeddings.shape)}")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        rows = rows if self.positions is None else self.positions[rows]
        return self.embeddings[rows], None if self.flipped is None else self.flipped[rows]


# ---------------------------------------------------------------- template pooling

def _sequential_sums(values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Row sums of the segments ``values[start:start + size]``, adding the rows one after another
    as numpy's axis-0 reductions do (the order float32 rounding depends on); all segments advance
    together, longest first."""
    sums = values[starts].copy()
    if sizes.size and sizes.max() > 1:
        longest_first = np.argsort(-sizes, kind="stable")
        descending = -sizes[longest_first]
        for step in range(1, int(sizes.max())):
            active = longest_first[:np.searchsorted(descending, -step)]
            sums[active] += values[starts[active] + step]
    return sums


class TemplatePooling:
    """Which image rows make each template and media: the images sorted by (template, media, row),
    in segments. `valid` (bool [N]) leaves images out; a template left without any keeps a zero feature."""

    def __init__(self, templates: np.ndarray, medias: np.ndarray, valid: np.ndarray | None = None):
        self.ids = np.unique(templates)
        rows = np.arange(len(templates)) if valid is None else np.flatnonzero(valid)
        order = rows[np.lexsort((rows, medias[rows], templates[rows]))]
        sorted_templates, sorted_medias = templates[order], medias[order]
        new_group = np.ones(len(order), dtype=bool)
        new_group[1:] = (sorted_templates[1:] != sorted_templates[:-1]) | (sorted_medias[1:] != sorted_medias[:-1])
        self.order = order
        self.group_starts = np.flatnonzero(new_group)
        self.group_sizes = np.diff(np.append(self.group_starts, len(order)))
        group_templates = sorted_templates[self.group_starts]
        new_template = np.ones(len(group_templates), dtype=bool)
        new_template[1:] = group_templates[1:] != group_templates[:-1]
        self.template_group_starts = np.flatnonzero(new_template)
        self.template_rows = np.searchsorted(self.ids, group_templates[self.template_group_starts])

    def blocks(self, block_images: int) -> list:
        """(first, last) template ranges of about `block_images` images each (at least one template)."""
        group_ends = np.append(self.template_group_starts[1:], len(self.group_starts))
        image_ends = np.append(self.group_starts, len(self.order))[group_ends]
        ranges, first = [], 0
        while first < len(self.template_group_starts):
            image_start = self.group_starts[self.template_group_starts[first]]
            last = max(first + 1, int(np.searchsorted(image_ends, image_start + block_images, side="right")))
            ranges.append((first, min(last, len(self.template_group_starts))))
            first = ranges[-1][1]
        return ranges

    def _pool_block(self, features: FeatureRows, faceness: np.ndarray, mode: Mode, first: int, last: int):
        """(output rows, float32 template sums) of templates first..last-1."""
        group_start = self.template_group_starts[first]
        group_stop = self.template_group_starts[last] if last < len(self.template_group_starts) else len(self.group_starts)
        image_start = self.group_starts[group_start]
        image_stop = self.group_starts[group_stop] if group_stop < len(self.group_starts) else len(self.order)
        rows = self.order[image_start:image_stop]
        embeddings, flipped = features.take(rows)
        images = image_features(embeddings, flipped, faceness[rows], mode)
        sizes = self.group_sizes[group_start:group_stop]
        medias = _sequential_sums(images, self.group_starts[group_start:group_stop] - image_start, sizes)
        several = sizes > 1
        medias[several] = medias[several] / sizes[several, np.newaxis]
        template_starts = self.template_group_starts[first:last] - group_start
        sums = _sequential_sums(medias, template_starts, np.diff(np.append(template_starts, len(medias))))
        return self.template_rows[first:last], sums

    def pool(self, features: FeatureRows, faceness: np.ndarray, mode: Mode,
             block_images: int = _POOL_BLOCK_IMAGES) -> np.ndarray:
        """float64 [templates, D'] L2-normalised template features, rows in `self.ids` order; blocks of
        templates two at a time on two threads."""
        pooled = np.zeros((len(self.ids), features.dim * (2 if mode.flip == 1 else 1)))
        for rows, sums in ordered_map(lambda block: self._pool_block(features, faceness, mode, *block),
                                      self.blocks(block_images)):
            pooled[rows] = sums
        return l2_normalize(pooled)


def ordered_map(function, items, workers: int = min(2, os.cpu_count() or 1)):
    """function(item) of each item, in order, computed `workers` at a time on threads (numpy lets go
    of the interpreter lock inside its loops); at most workers + 1 results wait at once."""
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ---------------------------------------------------------------- 1:1

def pair_scores(features: np.ndarray, first: np.ndarray, second: np.ndarray, dense: bool | None = None,
                block_bytes: int = SCORE_BLOCK_BYTES) -> np.ndarray:
    """float64 [P]: features[first[i]] . features[second[i]], through matrix products of blocks of
    the templates that occur as `first` against all that occur as `second` when the pairs cover
    enough of that rectangle (or `dense`); pair by pair otherwise."""
    n = len(features)
    rows_used, columns_used = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    rows_used[first] = True
    columns_used[second] = True
    row_ids, column_ids = np.flatnonzero(rows_used), np.flatnonzero(columns_used)
    scores = np.empty(len(first))
    if dense is None:
        dense = row_ids.size * column_ids.size <= 32 * len(first)  # else a product would be mostly wasted
    if not dense:
        step = max(1, block_bytes // (16 * features.shape[1]))
        for start in range(0, len(first), step):
            stop = start + step
            scores[start:stop] = np.einsum("ij,ij->i", features[first[start:stop]], features[second[start:stop]])
        return scores
    row_of = (np.cumsum(rows_used, dtype=np.int32) - 1)[first]
    column_of = (np.cumsum(columns_used, dtype=np.int32) - 1)[second]
    columns = np.ascontiguousarray(features[column_ids])
    block_rows = max(1, min(row_ids.size, block_bytes // (8 * column_ids.size)))
    for top in range(0, row_ids.size, block_rows):
        pairs = np.flatnonzero((row_of >= top) & (row_of < top + block_rows))
        products = features[row_ids[top:top + block_rows]] @ columns.T
        scores[pairs] = products.ravel()[(row_of[pairs] - top).astype(np.int64) * column_ids.size + column_of[pairs]]
    return scores


@dataclass(frozen=True, eq=False)
class Roc:
    """scikit-learn's ``roc_curve(labels, scores)`` with drop_intermediate=True: increasing FPR and
    TPR, the thresholds decreasing from +inf."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> Roc:
    """The points scikit-learn's roc_curve keeps, from counts: for each distinct score t
    (descending), tps / fps = genuine / impostor pairs scoring >= t; a point is dropped when the
    numbers of genuine and of impostor scores equal to t are the same as at the next distinct
    score on both sides (zero second differences of fps and tps), the first and last kept; (0, 0)
    at +inf is prepended."""
    labels = np.asarray(labels, dtype=bool)
    n_positive = int(labels.sum())
    if n_positive == 0 or n_positive == labels.size:
        raise ValueError(f"the ROC needs both genuine and impostor pairs; got {n_positive} genuine of {labels.size}")
    ascending = np.sort(scores)
    distinct = np.ones(ascending.size, dtype=bool)
    distinct[1:] = ascending[1:] != ascending[:-1]
    firsts = np.flatnonzero(distinct)  # where each distinct value starts (ascending)
    del distinct
    count = np.diff(firsts, append=ascending.size).astype(np.int32)
    positives = np.sort(scores[labels])
    positive_index = np.searchsorted(firsts, np.searchsorted(ascending, positives))
    positive_count = np.zeros(len(firsts), dtype=np.int32)
    np.add.at(positive_count, positive_index, 1)
    # (count, positives) at a value equal to the previous value's: a collinear point (ascending order)
    kept = np.ones(len(firsts), dtype=bool)
    kept[1:-1] = (count[1:-1] != count[:-2]) | (positive_count[1:-1] != positive_count[:-2])
    kept = np.flatnonzero(kept)[::-1]  # descending thresholds
    thresholds = ascending[firsts[kept]]
    tps = n_positive - np.searchsorted(positives, thresholds)
    fps = (labels.size - firsts[kept]) - tps
    fps, tps = np.concatenate(([0], fps)).astype(np.float64), np.concatenate(([0], tps)).astype(np.float64)
    return Roc(fps / fps[-1], tps / tps[-1], np.concatenate(([np.inf], thresholds)))


def read_tar_at_far(roc: Roc, targets=FAR_TARGETS) -> dict:
    """{far: (tar, fpr of the point read, its threshold)}: eval_ijbc.py's reading of the reversed
    curve, ``min(zip(abs(fpr - far), range(len(fpr))))``, i.e. the first nearest point."""
    fpr, tpr, thresholds = roc.fpr[::-1], roc.tpr[::-1], roc.thresholds[::-1]
    read = {}
    for far in targets:
        index = int(np.argmin(np.abs(fpr - far)))
        read[far] = (float(tpr[index]), float(fpr[index]), float(thresholds[index]))
    return read


# ---------------------------------------------------------------- a whole set

@dataclass(eq=False)
class IJBResult:
    mode: str
    n_images: int                    # images whose features were used
    n_templates: int                 # templates with at least one such image
    n_pairs: int                     # pairs scored (neither template emptied)
    tar_at_far: dict                 # {far: TAR}
    far_reached: dict                # {far: FPR of the ROC point read}
    roc: Roc
    galleries: list = field(default_factory=list)
    n_probes: int = 0
    skipped_images: int = 0          # images left out (missing, --skip-missing)
    emptied_templates: int = 0       # templates all of whose images were left out: dropped from every list

    def rank(self, k: int) -> float | None:
        """Rank-k over both galleries: mated probes found within the top k, over all probe templates."""
        if not self.galleries:
            return None
        found = sum(g.found_within(k) for g in self.galleries)
        return found / self.n_probes

    def tpir_at_fpir(self) -> dict | None:
        if not self.galleries:
            return None
        return {fpir: float(np.mean([g.tpir_at_fpir[fpir] for g in self.galleries])) for fpir in FPIR_TARGETS}

    def cmc(self) -> np.ndarray:
        length = min(len(g.cmc_counts) for g in self.galleries)
        return sum(g.cmc_counts[:length] for g in self.galleries) / self.n_probes

    def to_json(self) -> dict:
        tpir = self.tpir_at_fpir()
        return {"tar_at_far": {f"{far:.0e}": tar for far, tar in self.tar_at_far.items()},
                "rank1": self.rank(1), "rank5": self.rank(5), "rank10": self.rank(10),
                "tpir_at_fpir": None if tpir is None else {str(fpir): value for fpir, value in tpir.items()},
                "mode": self.mode, "images": self.n_images, "templates": self.n_templates, "pairs": self.n_pairs,
                "skipped_images": self.skipped_images, "emptied_templates": self.emptied_templates}


def rows_of(ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 row of each wanted template id in the sorted `ids`, mask of the ids `ids` lacks); a
    lookup table when the ids are small enough to index one, else a binary search."""
    if ids.size and 0 <= ids[0] and ids[-1] < max(1 << 24, 8 * ids.size):
        table = np.full(int(ids[-1]) + 2, -1, dtype=np.int32)
        table[ids] = np.arange(ids.size, dtype=np.int32)
        rows = table[np.clip(wanted, -1, ids[-1] + 1)]
        unknown = rows < 0
        return np.where(unknown, 0, rows), unknown
    rows = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1).astype(np.int32)
    return rows, ids[rows] != wanted
