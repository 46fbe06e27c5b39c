"""MegaFace Challenge 1 of a checkpoint (Kemelmacher-Shlizerman et al., "The MegaFace Benchmark: 1
Million Faces for Recognition at Scale", CVPR 2016): FaceScrub probes against up to a million
distractors, identification (rank-1, CMC) and verification (TAR at FAR = 1e-6), computed by
evaluation/megaface/protocol.py instead of the 2016 devkit binary, optionally with insightface's noise lists
for the refined "@R" numbers (ArcFace, Deng et al., CVPR 2019, section 4.1).

Inputs: aligned 112x112 crops, FaceScrub as one folder per identity and the distractors as any
folder tree; or the devkit's JSON lists (--probe-list, --distractor-list: paths relative to the
given folders, "id" naming each FaceScrub image's identity); or a features .npz (--features; the
layout of evaluation/megaface/files.py, which --save-features writes).

Features are extracted once, --chunk-size images at a time, into the resumable store of
evaluation/feature_store.py in --feature-dir (default <checkpoint folder>/megaface_features): a run
that stops -- interrupted, a bad image, --max-chunks -- resumes where it stopped when started again,
recomputing no finished chunk. Each stored feature is the L2-normalised sum of the embeddings of the
image and of its mirror image, as insightface's gen_megaface.py computes it (only the image's with
--no-flip). --devkit-out DIR also writes the devkit's per-image feature files under DIR/facescrub and
DIR/megaface (evaluation/megaface/files.py); DIR may not overlap the image folders.

Results: a table, or one JSON object with --json (rank1 and tar_at_far_1e-6 at the largest
distractor count, by default all M distractors given; the per-count table; _refined values when a
noise list is given), and then under --out-dir (default megaface/ beside the checkpoint, or beside
the features file): megaface.json with every number and curve, cmc.png (refined curves dashed),
roc.png and, with noise lists, roc_refined.png; then --save-features and --devkit-out. Every folder
written is checked writable before anything is read; the files are written after the numbers are
printed.
"""

import argparse
import json
import os
import sys

import numpy as np

from dataset import image_files
from runtime import DataFormatError, atomic_file

from ..cli import (add_model_arguments, add_store_arguments, beside_input, check_model_arguments, check_outputs,
                  load_model, resolve_device, writing_outputs)
from ..feature_store import Embedder, checkpoint_identity, store_features
from .protocol import default_distractor_counts, evaluate_megaface
from .files import (devkit_overlap, list_distractors, list_probes, load_megaface_features,
                             save_megaface_features, write_devkit_files)
from .noise import (clean_facescrub_probes, facescrub_noise_mask, megaface_noise_mask, read_facescrub_noises,
                             read_megaface_noises)
from ..thresholds import far_key

FAR = 1e-6
FAR_KEY = f"tar_at_far_{far_key(FAR)}"
CMC_RANKS = 10


def distractor_sizes(text: str) -> list:
    try:
        sizes = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts such as 10,100,1000, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"distractor counts must be positive, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data: --probes with --distractors, or --features")
    data.add_argument("--probes", metavar="DIR", help="aligned FaceScrub, one folder per identity")
    data.add_argument("--distractors", metavar="DIR", help="aligned MegaFace distractors, any folder tree")
    data.add_argument("--probe-list", metavar="JSON", help="devkit facescrub_features_list.json (paths in --probes)")
    data.add_argument("--distractor-list", metavar="JSON",
                      help="devkit megaface_features_list.json_1000000_1 (paths in --distractors)")
    data.add_argument("--features", metavar="FILE.npz", help="saved features instead of images and a model")
    add_model_arguments(parser)
    store = add_store_arguments(parser, "<checkpoint dir>/megaface_features")
    store.add_argument("--devkit-out", metavar="DIR", help="also write the devkit's per-image feature files here")
    store.add_argument("--devkit-suffix", metavar="NAME", help="devkit files end in _NAME.bin (default: backbone)")
    evaluation = parser.add_argument_group("evaluation and output")
    evaluation.add_argument("--facescrub-noises", metavar="FILE", help="insightface's facescrub_noises.txt")
    evaluation.add_argument("--megaface-noises", metavar="FILE", help="insightface's megaface_noises.txt")
    evaluation.add_argument("--sizes", type=distractor_sizes, metavar="N,N,...",
                            help="distractor counts (default 10, 100, ... below M, and M)")
    evaluation.add_argument("--seed", type=int, default=0, help="draw of the nested distractor subsets")
    evaluation.add_argument("--out-dir", help="figures and JSON (default megaface/ beside the checkpoint, or "
                                              "beside the features file)")
    evaluation.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


def check_arguments(parser, args) -> bool:
    """Whether the features come from images (else from --features), after refusing bad combinations."""
    from_images = args.probes is not None or args.distractors is not None
    if from_images == (args.features is not None) or (from_images and None in (args.probes, args.distractors)):
        parser.error("give --probes and --distractors (image folders), or --features, one of the two")
    for flag, value, folder in (("--probe-list", args.probe_list, "--probes"),
                                ("--distractor-list", args.distractor_list, "--distractors")):
        if value is not None and not from_images:
            parser.error(f"{flag} lists images under {folder}; it cannot go with --features")
    check_model_arguments(parser, args, not from_images)
    overlap = devkit_overlap(args.devkit_out, (args.probes, args.distractors)) if args.devkit_out and from_images \
        else None
    if overlap:
        parser.error(f"--devkit-out {args.devkit_out}: its {overlap[0]}/ tree would overlap the image folder "
                     f"{overlap[1]}; choose a folder outside the images")
    return from_images


def feature_folder(args) -> str:
    """The resumable store's folder: --feature-dir, or megaface_features/ beside the checkpoint."""
    return args.feature_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "megaface_features")


def check_output_folders(args, from_images: bool, out_dir: str) -> None:
    """Every folder and file the run will write, checked before anything is read."""
    check_outputs([
        (feature_folder(args) if from_images else None,
         "--feature-dir" if args.feature_dir else "feature store (default: megaface_features/ beside the checkpoint)",
         True, "give --feature-dir DIR in a folder you can write"),
        (args.devkit_out, "--devkit-out", True, "choose a folder you can write"),
        (args.save_features, "--save-features", False, "choose a file in a folder you can write"),
        (out_dir, "--out-dir" if args.out_dir is not None else "results folder (default: megaface/ beside the "
                                                               "checkpoint or the features file)",
         True, "give --out-dir DIR in a folder you can write")])


def extract_or_load(args, device):
    """(probes [P, D], labels [P], distractors [M, D] (a memory map when extracted), probe paths,
    distractor paths, network name, feature folder, a line saying where the features came from)."""
    if args.features is not None:
        probes, labels, distractors, probe_paths, distractor_paths = load_megaface_features(args.features)
        return probes, labels, distractors, probe_paths, distractor_paths, None, None, f"features {args.features}"
    probe_paths, labels = list_probes(args.probes, args.probe_list)
    distractor_paths = list_distractors(args.distractors, args.distractor_list)
    probe_images = image_files(args.probes, probe_paths, args.probe_list or args.probes)
    distractor_images = image_files(args.distractors, distractor_paths, args.distractor_list or args.distractors)
    model, name, size = load_model(args, device)
    folder = feature_folder(args)
    embed = Embedder(model, size, device, flip=not args.no_flip, precision=args.precision,
                     batch_size=args.batch_size)
    identity = checkpoint_identity(args.checkpoint, name, size)
    budget = args.max_chunks
    stores = []
    for kind, images, paths in (("probes", probe_images, probe_paths),
                                ("distractors", distractor_images, distractor_paths)):
        stores.append(store_features(folder, kind, images, embed, identity, chunk_size=args.chunk_size,
                                     names=paths, max_new_chunks=budget))
        budget = None if budget is None else budget - stores[-1].computed
    if not all(store.complete for store in stores):
        sys.exit(f"stopped after {args.max_chunks} chunks (--max-chunks); run the same command to resume")
    source = f"checkpoint {args.checkpoint} ({name}, {size}-d), features in {folder}"
    probes, distractors = (store.arrays["features"] for store in stores)
    return np.array(probes), labels, distractors, probe_paths, distractor_paths, name, folder, source


def evaluate_with_noise_lists(args, probes, labels, distractors, probe_paths, distractor_paths, options):
    """(MegaFaceResult after insightface's noise lists are applied, {what they matched})."""
    cleaned, excluded, noise = probes, None, {}
    if args.facescrub_noises:
        noisy = facescrub_noise_mask(probe_paths, read_facescrub_noises(args.facescrub_noises))
        try:
            cleaned = clean_facescrub_probes(probes, labels, noisy, seed=args.seed)
        except ValueError as error:
            raise DataFormatError(args.facescrub_noises, str(error)) from None
        noise["noisy_probes"] = int(noisy.sum())
    if args.megaface_noises:
        excluded = megaface_noise_mask(distractor_paths, read_megaface_noises(args.megaface_noises))
        noise["noisy_distractors"] = int(excluded.sum())
    return evaluate_megaface(cleaned, labels, distractors, excluded_distractors=excluded, **options), noise


def figure_files(out_dir, refined) -> dict:
    """{kind: path} of the figures save_figures writes under out_dir."""
    files = {"cmc": os.path.join(out_dir, "cmc.png"), "roc": os.path.join(out_dir, "roc.png")}
    if refined is not None:
        files["roc_refined"] = os.path.join(out_dir, "roc_refined.png")
    return files


def save_figures(files: dict, raw, refined) -> None:
    """The CMC and ROC figures, at the paths of figure_files."""
    from ..plot import save_cmc_png, save_roc_png  # matplotlib only when figures are drawn
    save_cmc_png({"": raw} if refined is None else {"": raw, " @R": refined}, files["cmc"])
    for suffix, result in (("", raw), ("_refined", refined)):
        if result is not None:
            counts = result.distractor_counts
            save_roc_png([result.roc[n] for n in counts], files[f"roc{suffix}"],
                         labels=[f"{n:,} distractors" for n in counts],
                         title=f"MegaFace Challenge 1 ROC{' (refined)' if suffix else ''}")


def table_rows(raw, refined) -> list:
    """The old README's columns per distractor count: rank-1 and TAR@FAR=1e-6, raw and refined."""
    rows = []
    for count in raw.distractor_counts:
        row = {"distractors": int(count), "rank1": raw.rank1[count], FAR_KEY: float(raw.tar_at_far[count][FAR])}
        if refined is not None:
            row["rank1_refined"] = refined.rank1[count]
            row[f"{FAR_KEY}_refined"] = float(refined.tar_at_far[count][FAR])
        rows.append(row)
    return rows


def print_table(rows, record) -> None:
    print(f"MegaFace Challenge 1: {record['probes']} FaceScrub probes of {record['identities']} identities, "
          f"{record['distractors']} distractors; {record['source']}")
    refined = "rank1_refined" in rows[0]
    header = f"{'distractors':>11}  {'rank-1':>8}  {'TAR@FAR=1e-6':>12}"
    print(header + (f"  {'rank-1 @R':>9}  {'TAR@FAR=1e-6 @R':>15}" if refined else ""))
    for row in rows:
        line = f"{row['distractors']:>11,}  {100 * row['rank1']:>7.3f}%  {100 * row[FAR_KEY]:>11.3f}%"
        if refined:
            line += f"  {100 * row['rank1_refined']:>8.3f}%  {100 * row[FAR_KEY + '_refined']:>14.3f}%"
        print(line)
    noise = record["noise"]
    if noise:
        print(f"noise lists: {noise.get('noisy_probes', 0)} probes replaced, "
              f"{noise.get('noisy_distractors', 0)} distractors neutralised")
    print("files: " + ", ".join(record["files"].values()))


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from_images = check_arguments(parser, args)
    out_dir = args.out_dir if args.out_dir is not None else beside_input(args, "megaface")
    check_output_folders(args, from_images, out_dir)
    device = resolve_device(parser, args.device)

    probes, labels, distractors, probe_paths, distractor_paths, name, folder, source = extract_or_load(args, device)
    if np.bincount(np.unique(labels, return_inverse=True)[1]).max() < 2:
        raise DataFormatError(args.features or args.probe_list or args.probes,
                              "no identity has two probe images: there is no genuine pair")
    n_distractors = len(distractors)
    sizes = args.sizes or default_distractor_counts(n_distractors)
    if sizes[-1] > n_distractors:
        parser.error(f"--sizes asks for {sizes[-1]} distractors; only {n_distractors} are given")
    noise_lists = args.facescrub_noises or args.megaface_noises
    if (noise_lists or args.devkit_out) and (probe_paths is None or distractor_paths is None):
        parser.error(f"{args.features} holds no probe_paths/distractor_paths: the noise lists and "
                     "--devkit-out need image paths")

    options = dict(distractor_counts=sizes, cmc_ranks=CMC_RANKS, far_targets=(FAR,), seed=args.seed, device=device)
    raw = evaluate_megaface(probes, labels, distractors, **options)
    refined, noise = None, {}
    if noise_lists:
        refined, noise = evaluate_with_noise_lists(args, probes, labels, distractors, probe_paths, distractor_paths,
                                                   options)

    files = {"json": os.path.join(out_dir, "megaface.json"), **figure_files(out_dir, refined)}
    if args.save_features:
        files["features"] = args.save_features
    rows = table_rows(raw, refined)
    record = {"rank1": rows[-1]["rank1"], FAR_KEY: rows[-1][FAR_KEY], "rank1_refined": rows[-1].get("rank1_refined"),
              f"{FAR_KEY}_refined": rows[-1].get(f"{FAR_KEY}_refined"), "distractors": int(sizes[-1]),
              "probes": int(len(labels)), "identities": int(np.unique(labels).size), "table": rows, "noise": noise,
              "checkpoint": args.checkpoint, "backbone": name, "feature_dir": folder, "features": args.features,
              "source": source, "devkit_out": args.devkit_out, "files": files}
    # the numbers first, then the files (every folder was checked writable at start)
    if args.json:
        print(json.dumps({**record, "raw": raw.to_json(), "refined": refined.to_json() if refined else None}),
              flush=True)
    else:
        print_table(rows, record)
        sys.stdout.flush()
    with writing_outputs():  # the results, then the (large) feature files
        with atomic_file(files["json"], "w") as handle:
            json.dump({**record, "raw": raw.to_json(include_roc=True),
                       "refined": refined.to_json(include_roc=True) if refined is not None else None}, handle)
        save_figures(files, raw, refined)
        if args.save_features:
            save_megaface_features(args.save_features, probes, labels, distractors, probe_paths, distractor_paths)
        if args.devkit_out:
            # the store's features are unit-norm already; a features file's may not be
            write_devkit_files(args.devkit_out, probe_paths, probes, distractor_paths, distractors,
                               args.devkit_suffix or name or "features", normalize=not from_images)
