"""eval_ijb.py: IJB-B / IJB-C 1:1 verification (TAR at FAR 1e-6 .. 1e-1) and 1:N identification
(rank-1/5/10, TPIR at FPIR 0.01 and 0.1) of a checkpoint or of saved features, computed by
evaluation/ijb/protocol.py as insightface's eval_ijbc.py and ijb_evals.py compute them.

Input: --root, the release folder of one set (IJB_release/IJBC or IJBB; layout in
evaluation/ijb/meta.py), and either a model (the eval scripts' --checkpoint ... arguments) or
--features FILE.npz (layout in evaluation/ijb/features.py; --save-features writes it).

From a model, every loose crop is aligned by its 5 landmarks (dataset.align_face), embedded with
its mirror image, --chunk-size images at a time, into the resumable store of
evaluation/feature_store.py in --feature-dir (default SET_features/ beside the checkpoint): an
interrupted run (or --max-chunks) resumes where it stopped. A missing image is an error naming it;
--skip-missing leaves such images out of their templates and counts them. A template all of whose
images are missing is emptied: it is named in one line on stderr and dropped, as if it were never
listed -- its pairs are not scored, and it leaves the galleries and the probe list (a probe whose
gallery template was emptied is non-mated in that gallery) -- so every number is computed over the
images and templates that remain.

Output: a table, or with --json one JSON object (tar_at_far, rank1, rank5, rank10, tpir_at_fpir --
the mean of the two galleries --, mode, and the counts of what was used: images, templates, pairs,
and of what was left out: skipped_images, emptied_templates); then, in --out-dir (default SET/
beside the checkpoint or the features file), SET_result.json with every number (and the emptied
templates' ids) and the figures SET_roc.png, SET_cmc.png and SET_det.png. Every output folder is
checked writable before anything is read, and the files are written after the numbers are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dataclasses import replace

import numpy as np
import torch

from runtime import DataFormatError, atomic_file, keep_freed_cpu_memory

from ..cli import (add_model_arguments, add_store_arguments, beside_input, check_model_arguments, check_outputs,
                  load_model, resolve_device, writing_outputs)
from .protocol import (DEFAULT_MODE, FAR_TARGETS, FPIR_TARGETS, RANKS, IJBResult, Mode, TemplatePooling, pair_scores,
                  read_tar_at_far, roc_curve, rows_of)
from .identify import scores_and_searches
from .features import default_feature_dir, extract_ijb_features, find_missing, load_ijb_features, save_ijb_features
from .meta import SETS, IJBMeta, line_number, read_ijb_meta


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--root", required=True, metavar="DIR", help="IJB_release/IJBC or IJB_release/IJBB")
    data.add_argument("--set", choices=SETS, default="ijbc", help="which set's meta files to read (default ijbc)")
    data.add_argument("--features", metavar="FILE.npz", help="saved per-image features instead of a model")
    add_model_arguments(parser)
    store = add_store_arguments(parser, "<checkpoint dir>/SET_features")
    store.add_argument("--skip-missing", action="store_true", help="leave missing images out instead of stopping")
    output = parser.add_argument_group("evaluation and output")
    output.add_argument("--mode", help=f"N{{0,1}}D{{0,1}}F{{0,1,2}} (default {DEFAULT_MODE}, or F0 when there are "
                                       "no mirror-image features): N0 normalises each image feature, D0 drops the "
                                       "faceness weight, F1 concatenates the mirror image's feature, F0 leaves it out")
    output.add_argument("--out-dir", help="results JSON and figures (default SET/ beside the checkpoint or the "
                                          "features file)")
    output.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


def parse_mode(parser, text: str | None) -> Mode | None:
    """--mode's Mode (None when not given), checked before any feature is read or extracted."""
    if text is None:
        return None
    try:
        return Mode.parse(text)
    except ValueError as error:
        parser.error(f"--mode: {error}")


def choose_mode(parser, mode: Mode | None, has_flip: bool) -> Mode:
    if mode is None:
        return Mode.parse(DEFAULT_MODE if has_flip else DEFAULT_MODE[:-1] + "0")
    if mode.flip and not has_flip:
        parser.error(f"--mode {mode.name} needs mirror-image features, which these features lack: use "
                     f"{mode.name[:-1]}0")
    return mode


# ---------------------------------------------------------------- the evaluation, with input errors named

def _rows(meta: IJBMeta, ids: np.ndarray, wanted: np.ndarray, path, where) -> np.ndarray:
    rows, unknown = rows_of(ids, wanted)
    if unknown.any():
        first = int(np.argmax(unknown))
        raise DataFormatError(path, f"template {wanted[first]} has no image in {meta.files.template_media} "
                                    f"({int(unknown.sum())} such)", where(first))
    return rows


def emptied_templates(meta: IJBMeta, missing: np.ndarray) -> np.ndarray:
    """Sorted ids of the templates every one of whose images is missing."""
    if not missing.any():
        return np.zeros(0, dtype=meta.templates.dtype)
    return np.setdiff1d(np.unique(meta.templates[missing]), np.unique(meta.templates[~missing]))


def _kept(template_list, emptied: np.ndarray):
    keep = ~np.isin(template_list.templates, emptied)
    return replace(template_list, templates=template_list.templates[keep], subjects=template_list.subjects[keep],
                   lines=template_list.lines[keep])


def without_templates(meta: IJBMeta, emptied: np.ndarray) -> IJBMeta:
    """The metadata as if the `emptied` templates were never listed: their pairs and their entries
    in the galleries and the probe list are gone (a probe whose gallery template is gone is then
    non-mated in that gallery, as for a subject the gallery never held)."""
    if not emptied.size:
        return meta
    first, second = meta.pair_templates
    keep = ~(np.isin(first, emptied) | np.isin(second, emptied))
    return replace(meta, pair_templates=(first[keep], second[keep]), labels=meta.labels[keep],
                   galleries=tuple(_kept(gallery, emptied) for gallery in meta.galleries),
                   probes=None if meta.probes is None else _kept(meta.probes, emptied))


def emptied_lines(meta: IJBMeta, emptied: np.ndarray) -> list[str]:
    """One line per emptied template: which images it lost, and which pairs and lists it leaves."""
    first, second = meta.pair_templates
    in_pairs = np.concatenate((first, second))
    ids, counts = np.unique(in_pairs[np.isin(in_pairs, emptied)], return_counts=True)
    pair_count = dict(zip(ids.tolist(), counts.tolist()))
    lists = [("the probe list" if lst is meta.probes else f"gallery {lst.name}",
              set(lst.templates[np.isin(lst.templates, emptied)].tolist()))
             for lst in (*meta.galleries, *([meta.probes] if meta.probes is not None else []))]
    order = np.argsort(meta.templates, kind="stable")
    starts = np.searchsorted(meta.templates[order], emptied)
    ends = np.searchsorted(meta.templates[order], emptied, side="right")
    lines = []
    for template, start, end in zip(emptied.tolist(), starts, ends):
        rows = order[start:end]
        where = " and ".join([f"{pair_count.get(template, 0)} pairs"] + [name for name, ids in lists if template in ids])
        lines.append(f"template {template} emptied: all {len(rows)} of its images are missing (first "
                     f"{meta.names[rows[0]]}, line {rows[0] + 1} of {meta.files.landmarks}); left out of {where}")
    return lines


def evaluate(meta: IJBMeta, features, mode: Mode, valid: np.ndarray | None, features_path=None) -> IJBResult:
    """The result over the images `valid` marks (all without it); templates left without any image
    must already be gone from `meta`'s pairs and lists (without_templates)."""
    pooling = TemplatePooling(meta.templates, meta.medias, valid)
    template_features = pooling.pool(features, meta.faceness, mode)
    broken = np.flatnonzero(~np.isfinite(template_features).all(axis=1))
    if broken.size:
        rows = np.flatnonzero(meta.templates == pooling.ids[broken[0]])
        embeddings, flipped = features.take(rows)
        bad = [rows[i] for i in range(len(rows)) if not np.isfinite(embeddings[i]).all()
               or (flipped is not None and not np.isfinite(flipped[i]).all())]
        raise DataFormatError(features_path or "features", f"image row {bad[0] if bad else rows[0]} (line "
                                                           f"{(bad[0] if bad else rows[0]) + 1} of the 5-point file) "
                                                           "has a NaN or infinite feature")
    first, second = meta.pair_templates
    where = lambda row: f"line {line_number(meta.files.pairs, row)}"  # noqa: E731
    first = _rows(meta, pooling.ids, first, meta.files.pairs, where)
    second = _rows(meta, pooling.ids, second, meta.files.pairs, where)
    galleries = []
    if meta.probes is not None:
        lists = (*meta.galleries, meta.probes)
        rows = [_rows(meta, pooling.ids, lst.templates, lst.path, lambda i, lst=lst: f"line {lst.lines[i]}")
                for lst in lists]
        for gallery in meta.galleries:
            subjects, first_of = np.unique(gallery.subjects, return_index=True)
            if len(subjects) < len(gallery.subjects):
                repeated = np.setdiff1d(np.arange(len(gallery.subjects)), first_of)[0]
                raise DataFormatError(gallery.path, f"subject {gallery.subjects[repeated]} has a second template "
                                                    f"{gallery.templates[repeated]}: a gallery holds one per subject",
                                      f"line {gallery.lines[repeated]}")
        try:
            scores, galleries = scores_and_searches(template_features, first, second, rows[-1], meta.probes.subjects,
                                                    [(g.name, r, g.subjects) for g, r in zip(meta.galleries, rows)])
        except ValueError as error:
            raise DataFormatError(meta.probes.path, f"{error} (galleries: "
                                                    f"{', '.join(g.path for g in meta.galleries)})") from None
    else:
        scores = pair_scores(template_features, first, second)
    try:
        roc = roc_curve(meta.labels, scores)
    except ValueError as error:  # only genuine or only impostor pairs (left)
        raise DataFormatError(meta.files.pairs, str(error)) from None
    read = read_tar_at_far(roc, FAR_TARGETS)
    n_images = len(meta.templates) if valid is None else int(valid.sum())
    return IJBResult(mode.name, n_images, len(pooling.template_rows), len(scores),
                     {far: tar for far, (tar, _, _) in read.items()}, {far: fpr for far, (_, fpr, _) in read.items()},
                     roc, galleries, 0 if meta.probes is None else len(meta.probes.templates))


# ---------------------------------------------------------------- output

def record_of(result: IJBResult) -> dict:
    """Everything SET_result.json holds: the JSON line's numbers and the per-gallery ones."""
    galleries = {g.name: {"gallery_templates": g.n_gallery, "mated_probes": g.n_mated,
                          "rank": {str(k): g.found_within(k) / g.n_mated for k in RANKS},
                          "tpir_at_fpir": {str(f): g.tpir_at_fpir[f] for f in FPIR_TARGETS},
                          "threshold_at_fpir": {str(f): g.thresholds[f] for f in FPIR_TARGETS}}
                 for g in result.galleries}
    return {**result.to_json(), "far_reached": {f"{far:.0e}": fpr for far, fpr in result.far_reached.items()},
            "probes": result.n_probes, "galleries": galleries}


def print_table(result: IJBResult, set_name: str, source: str) -> None:
    title = set_name.upper().replace("IJB", "IJB-")
    left_out = ""
    if result.skipped_images:
        left_out = (f" ({result.skipped_images:,} missing images skipped, {result.emptied_templates:,} templates "
                    "emptied and left out)")
    print(f"{title} 1:1, mode {result.mode}: {result.n_images:,} images, {result.n_templates:,} templates, "
          f"{result.n_pairs:,} pairs{left_out}; {source}")
    print("  ".join(f"{'FAR=' + format(far, '.0e'):>10}" for far in FAR_TARGETS))
    print("  ".join(f"{100 * result.tar_at_far[far]:>9.2f}%" for far in FAR_TARGETS) + "   TAR")
    if result.galleries:
        print(f"{title} 1:N: {result.n_probes:,} probe templates, open set")
        header = "".join(f"{'rank-' + str(k):>9}" for k in RANKS) + "".join(f"{'TPIR@' + str(f):>11}" for f in FPIR_TARGETS)
        print(f"{'':>20}{header}")
        for g in result.galleries:
            ranks = "".join(f"{100 * g.found_within(k) / g.n_mated:>8.2f}%" for k in RANKS)
            tpirs = "".join(f"{100 * g.tpir_at_fpir[f]:>10.2f}%" for f in FPIR_TARGETS)
            print(f"{g.name + ' (' + format(g.n_gallery, ',') + ' templates)':>20}{ranks}{tpirs}")
        ranks = "".join(f"{100 * result.rank(k):>8.2f}%" for k in RANKS)
        tpirs = "".join(f"{100 * v:>10.2f}%" for v in result.tpir_at_fpir().values())
        print(f"{'both / mean':>20}{ranks}{tpirs}")


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_arguments(parser, args, args.features is not None)
    if args.features is not None and (args.skip_missing or args.max_chunks or args.feature_dir):
        parser.error("--skip-missing, --max-chunks and --feature-dir are extraction options; --features needs none")
    requested_mode = parse_mode(parser, args.mode)
    out_dir = args.out_dir or beside_input(args, args.set)
    check_outputs([
        (None if args.features is not None else args.feature_dir or default_feature_dir(args.checkpoint, args.set),
         "--feature-dir" if args.feature_dir else f"feature store (default: {args.set}_features/ beside the checkpoint)",
         True, "give --feature-dir DIR in a folder you can write"),
        (args.save_features, "--save-features", False, "choose a file in a folder you can write"),
        (out_dir, "--out-dir" if args.out_dir else f"results folder (default: {args.set}/ beside the checkpoint "
                                                   "or the features file)", True, "give --out-dir DIR in a folder you can write")])
    meta = read_ijb_meta(args.root, args.set, landmarks=args.features is None)

    # ============ per-image features ============
    if args.features is not None:
        keep_freed_cpu_memory(torch.device("cpu"))
        features, missing = load_ijb_features(args.features, len(meta.names))
        missing = np.zeros(len(meta.names), dtype=bool) if missing is None else missing
        source = f"features {args.features}"
    else:
        device = resolve_device(parser, args.device)
        missing = find_missing(meta.files.images, meta.names, meta.files.landmarks, args.skip_missing)
        model, name, size = load_model(args, device)
        features, folder = extract_ijb_features(meta, missing, model, name, size, device, args)
        if features is None:
            sys.exit(1)
        source = f"checkpoint {args.checkpoint} ({name}, {size}-d), features in {folder}"
    emptied = emptied_templates(meta, missing)
    if missing.any():
        print(f"{int(missing.sum())} of {len(missing)} images missing and left out of their templates; "
              f"{len(emptied)} templates emptied and left out of the pairs and lists", file=sys.stderr)
        for line in emptied_lines(meta, emptied):
            print(line, file=sys.stderr)
    mode = choose_mode(parser, requested_mode, features.flipped is not None)

    # ============ evaluation, the numbers, then the files ============
    result = evaluate(without_templates(meta, emptied), features, mode, ~missing if missing.any() else None,
                      args.features)
    result.skipped_images, result.emptied_templates = int(missing.sum()), len(emptied)
    if args.json:
        print(json.dumps(result.to_json()), flush=True)
    else:
        print_table(result, args.set, source)
        sys.stdout.flush()
    with writing_outputs():  # the results, then the (large) features file
        from .plot import save_ijb_figures  # matplotlib only once there is something to draw
        files = save_ijb_figures(result, out_dir, args.set)
        files["json"] = os.path.join(out_dir, f"{args.set}_result.json")
        if args.save_features:
            files["features"] = args.save_features
        with atomic_file(files["json"], "w") as handle:
            json.dump({**record_of(result), "emptied_template_ids": emptied.tolist(), "source": source,
                       "files": files}, handle, indent=1)
        if args.save_features:
            save_ijb_features(args.save_features, features, missing)
    if not args.json:
        print("files: " + ", ".join(files.values()))
