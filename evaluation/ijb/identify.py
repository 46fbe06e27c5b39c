"""IJB 1:N identification (ijb_evals.py's ``evaluation_1N``, as evaluation/ijb/protocol.py's docstring states
it), and the scores of the 1:1 pairs read off the same products.

Each gallery is searched with the scores ``probes @ gallery.T`` (the reference's ``np.dot(query,
gallery.T)``), a block of probes at a time. IJB's 1:1 pairs are gallery x probe template pairs, so
``scores_and_searches`` computes probes x (all galleries) once per block of probes and reads both
the searches and those pairs' scores from it; other pairs are scored by ``ijb.pair_scores``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .protocol import CMC_MAX_RANK, DET_FPIRS, FPIR_ON_GRID, FPIR_TARGETS, SCORE_BLOCK_BYTES, pair_scores


@dataclass(eq=False)
class GalleryResult:
    """One gallery searched by every probe template."""

    name: str
    n_gallery: int
    n_probes: int
    n_mated: int
    cmc_counts: np.ndarray    # int [R]: mated probes whose mate is within the top k, k = 1..R
    tpir_at_fpir: dict        # {fpir: TPIR} over this gallery's mated probes
    thresholds: dict          # {fpir: score threshold}
    det_tpir: np.ndarray      # TPIR at each of DET_FPIRS

    def found_within(self, k: int) -> int:
        """Mated probes whose mate is among the top k (the CMC's last count for k past its end)."""
        return int(self.cmc_counts[min(k, len(self.cmc_counts)) - 1])


class GallerySearch:
    """The search of one gallery (each subject one template), fed the probes' scores against it a
    block of probes at a time (`add`), summed up by `result`."""

    def __init__(self, name: str, probe_subjects: np.ndarray, gallery_subjects: np.ndarray):
        self.name, self.n_gallery, self.n_probes = name, len(gallery_subjects), len(probe_subjects)
        if self.n_gallery < 2:
            raise ValueError(f"gallery {name} has {self.n_gallery} template: open-set search needs at least 2")
        by_subject = np.argsort(gallery_subjects, kind="stable")
        sorted_subjects = gallery_subjects[by_subject]
        repeated = np.flatnonzero(sorted_subjects[1:] == sorted_subjects[:-1])
        if repeated.size:
            raise ValueError(f"subject {sorted_subjects[repeated[0]]} has several templates in gallery {name}")
        place = np.minimum(np.searchsorted(sorted_subjects, probe_subjects), self.n_gallery - 1)
        self.mated = sorted_subjects[place] == probe_subjects
        self.mate = by_subject[place]
        if not self.mated.any():
            raise ValueError(f"no probe's subject is in gallery {name}")
        if self.mated.all():
            raise ValueError(f"every probe's subject is in gallery {name}: the open-set threshold needs "
                             "non-mated probes")
        self.ranks, self.mate_scores, self.best_others, self.non_mated_best = [], [], [], []

    def add(self, start: int, scores: np.ndarray) -> None:
        """scores [n, gallery] of probes start .. start + n - 1."""
        is_mated, mate = self.mated[start:start + len(scores)], self.mate[start:start + len(scores)]
        self.non_mated_best.append(scores[~is_mated].max(axis=1))
        scores, mate = scores[is_mated], mate[is_mated]
        rows = np.arange(len(scores))
        own = scores[rows, mate][:, np.newaxis]
        # a tie ranks the later column first, as a stable sort reversed does
        self.ranks.append((scores > own).sum(axis=1)
                          + ((scores == own) & (np.arange(self.n_gallery) > mate[:, np.newaxis])).sum(axis=1))
        self.mate_scores.append(own[:, 0])
        scores[rows, mate] = -np.inf
        self.best_others.append(scores.max(axis=1))

    def result(self, fpirs=FPIR_TARGETS) -> GalleryResult:
        ranks, mate_scores = np.concatenate(self.ranks), np.concatenate(self.mate_scores)
        non_mated_best = np.sort(np.concatenate(self.non_mated_best))[::-1]
        cmc_length = min(CMC_MAX_RANK, self.n_gallery)
        cmc_counts = np.cumsum(np.bincount(np.minimum(ranks, cmc_length), minlength=cmc_length + 1))[:cmc_length]
        identified = mate_scores > np.concatenate(self.best_others)

        def tpir(fpir):
            threshold = non_mated_best[max(int(non_mated_best.shape[0] * fpir) - 1, 0)]
            return float(np.logical_and(identified, mate_scores > threshold).sum() / mate_scores.shape[0]), \
                float(threshold)

        read = {fpir: tpir(FPIR_ON_GRID.get(fpir, fpir)) for fpir in fpirs}
        return GalleryResult(self.name, self.n_gallery, self.n_probes, int(self.mated.sum()), cmc_counts,
                             {fpir: value[0] for fpir, value in read.items()},
                             {fpir: value[1] for fpir, value in read.items()},
                             np.array([tpir(fpir)[0] for fpir in DET_FPIRS]))


def search_gallery(name: str, probes: np.ndarray, probe_subjects: np.ndarray, gallery: np.ndarray,
                   gallery_subjects: np.ndarray, fpirs=FPIR_TARGETS, block_bytes: int = SCORE_BLOCK_BYTES
                   ) -> GalleryResult:
    """ijb_evals.py's ``evaluation_1N`` for one gallery of template features."""
    search = GallerySearch(name, probe_subjects, gallery_subjects)
    step = max(1, block_bytes // (8 * len(gallery)))
    for start in range(0, len(probes), step):
        search.add(start, probes[start:start + step] @ gallery.T)
    return search.result(fpirs)


def scores_and_searches(features: np.ndarray, first: np.ndarray, second: np.ndarray, probe_rows: np.ndarray,
                        probe_subjects: np.ndarray, galleries: list, block_bytes: int = SCORE_BLOCK_BYTES
                        ) -> tuple[np.ndarray, list]:
    """(scores of the pairs (features rows `first`, `second`), a GalleryResult per gallery): every
    probe x gallery product computed once, for the searches and for the pairs of a gallery and a
    probe template. `galleries`: (name, features rows, subjects) of each."""
    searches = [GallerySearch(name, probe_subjects, subjects) for name, _, subjects in galleries]
    gallery_rows = np.concatenate([rows for _, rows, _ in galleries])
    offsets = np.cumsum([0] + [len(rows) for _, rows, _ in galleries])
    gallery_slot = np.full(len(features), -1, dtype=np.int64)
    gallery_slot[gallery_rows] = np.arange(len(gallery_rows))
    probe_slot = np.full(len(features), -1, dtype=np.int32)
    probe_slot[probe_rows] = np.arange(len(probe_rows), dtype=np.int32)
    forward = (gallery_slot[first] >= 0) & (probe_slot[second] >= 0)
    backward = ~forward & (probe_slot[first] >= 0) & (gallery_slot[second] >= 0)
    covered = np.flatnonzero(forward | backward)
    probe_of = np.where(forward[covered], probe_slot[second[covered]], probe_slot[first[covered]])
    gallery_of = np.where(forward[covered], gallery_slot[first[covered]], gallery_slot[second[covered]])
    del forward, backward
    scores = np.empty(len(first))
    rest = np.ones(len(first), dtype=bool)
    rest[covered] = False
    if rest.any():
        scores[rest] = pair_scores(features, first[rest], second[rest], block_bytes=block_bytes)
    gallery = np.ascontiguousarray(features[gallery_rows])
    step = max(1, block_bytes // (8 * len(gallery_rows)))
    for start in range(0, len(probe_rows), step):
        products = features[probe_rows[start:start + step]] @ gallery.T
        for search, low, high in zip(searches, offsets[:-1], offsets[1:]):
            search.add(start, products[:, low:high])
        in_block = np.flatnonzero((probe_of >= start) & (probe_of < start + step))
        scores[covered[in_block]] = products.ravel()[(probe_of[in_block] - start).astype(np.int64) * len(gallery_rows)
                                                     + gallery_of[in_block]]
    return scores, [search.result() for search in searches]
