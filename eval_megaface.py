"""MegaFace Challenge 1 of a checkpoint (Kemelmacher-Shlizerman et al., "The MegaFace Benchmark: 1
Million Faces for Recognition at Scale", CVPR 2016): FaceScrub probes against up to a million
distractors, identification (rank-1, CMC) and verification (TAR at FAR = 1e-6), computed by
evaluation/megaface.py instead of the 2016 devkit binary, optionally with insightface's noise lists
for the refined "@R" numbers (ArcFace, Deng et al., CVPR 2019, section 4.1).

    python eval_megaface.py --checkpoint runs/NAME/backbone.pt \\
        --probes data/facescrub_112x112 --distractors data/megaface_112x112
    python eval_megaface.py --checkpoint runs/NAME/backbone.pt \\
        --probes data/facescrub_112x112 --probe-list devkit/templatelists/facescrub_features_list.json \\
        --distractors data/megaface_112x112 \\
        --distractor-list devkit/templatelists/megaface_features_list.json_1000000_1 \\
        --facescrub-noises data/facescrub_noises.txt --megaface-noises data/megaface_noises.txt --json
    python eval_megaface.py --features megaface_features.npz

Inputs: aligned 112x112 crops, FaceScrub as one folder per identity and the distractors as any
folder tree; or the devkit's JSON lists ({"path": [...], "id": [...]}, paths relative to the given
folders, "id" naming each FaceScrub image's identity); or a features .npz with probe_embeddings
[P, D], probe_labels [P] int, distractor_embeddings [M, D] and optionally probe_paths [P] and
distractor_paths [M] (strings, needed for the noise lists and --devkit-out).

Features are extracted once, --chunk-size images at a time, into the resumable store of
evaluation/cli.py in --feature-dir (default <checkpoint folder>/megaface_features): a run that stops
-- interrupted, a bad image, --max-chunks -- resumes where it stopped when started again, recomputing
no finished chunk. Each stored feature is the L2-normalised sum of the embeddings of the image and
of its mirror image, as insightface's gen_megaface.py computes it (only the image's with --no-flip).

--devkit-out DIR also writes the devkit's per-image feature files, mirroring the image lists under
DIR/facescrub and DIR/megaface as <image path>_<suffix>.bin, in the layout of insightface's
gen_megaface.py: four little-endian int32 (rows = D, cols = 1, 4 = bytes per element, 5 =
OpenCV's CV_32F), then the D float32 values. DIR may not overlap the image folders.

Results: a table, or one JSON object with --json (rank1 and tar_at_far_1e-6 at the largest
distractor count, by default all M distractors given; the per-count table; _refined values when a
noise list is given), and under --out-dir (default result/megaface): megaface.json with every number
and curve, cmc.png (refined curves dashed), roc.png and, with noise lists, roc_refined.png.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dataset import DataFormatError, scan_image_folder
from dataset.image_list import IMAGE_EXTENSIONS
from evaluation.cli import (ImageFiles, add_model_arguments, cached_features, check_float_matrix, check_model_arguments,
                            load_model, open_npz, resolve_device, run_identity)
from evaluation.megaface import evaluate_megaface
from evaluation.megaface_noise import (clean_facescrub_probes, facescrub_noise_mask, megaface_noise_mask,
                                       parse_facescrub_noises, parse_megaface_noises)
from evaluation.plot import save_roc_png
from runtime import l2_normalize, positive_int, run_cli, save_npz

FAR = 1e-6
FAR_KEY = "tar_at_far_1e-6"
CMC_RANKS = 10
DEVKIT_HEADER = struct.Struct("<4i")
CV_32F = 5


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
    store = parser.add_argument_group("feature extraction")
    store.add_argument("--feature-dir", metavar="DIR", help="resumable feature store (default <checkpoint dir>/"
                                                            "megaface_features)")
    store.add_argument("--chunk-size", type=positive_int, default=10000, help="images per resumable chunk")
    store.add_argument("--max-chunks", type=positive_int, metavar="N",
                       help="stop after computing N chunks (to test or spread out a long extraction)")
    store.add_argument("--save-features", metavar="FILE.npz", help="also write the features in --features format")
    store.add_argument("--devkit-out", metavar="DIR", help="also write the devkit's per-image feature files here")
    store.add_argument("--devkit-suffix", metavar="NAME", help="devkit files end in _NAME.bin (default: backbone)")
    evaluation = parser.add_argument_group("evaluation and output")
    evaluation.add_argument("--facescrub-noises", metavar="FILE", help="insightface's facescrub_noises.txt")
    evaluation.add_argument("--megaface-noises", metavar="FILE", help="insightface's megaface_noises.txt")
    evaluation.add_argument("--sizes", type=distractor_sizes, metavar="N,N,...",
                            help="distractor counts (default 10, 100, ... below M, and M)")
    evaluation.add_argument("--seed", type=int, default=0, help="draw of the nested distractor subsets")
    evaluation.add_argument("--out-dir", default=os.path.join("result", "megaface"), help="figures and JSON")
    evaluation.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


# ---------------------------------------------------------------- image lists

def read_devkit_list(path, with_ids: bool = False) -> tuple[list, list | None]:
    """(relative image paths, identity names or None) of a devkit *_features_list.json."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except FileNotFoundError:
        raise DataFormatError(path, "list file not found") from None
    except ValueError as error:  # JSON and UTF-8 decoding errors
        raise DataFormatError(path, f"not a JSON list ({error})") from None
    paths = content.get("path") if isinstance(content, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(item, str) for item in paths):
        raise DataFormatError(path, 'expected the devkit layout {"path": ["relative/image.jpg", ...], ...}')
    ids = content.get("id") if with_ids else None
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(paths)):
        raise DataFormatError(path, f'"id" must name one identity for each of the {len(paths)} paths')
    return paths, ids


def scan_image_tree(root) -> list:
    """Relative '/'-separated paths of every image under `root`, sorted."""
    if not os.path.isdir(root):
        raise DataFormatError(root, "distractor folder not found")
    found = []
    for folder, _, names in os.walk(root):
        relative = os.path.relpath(folder, root).replace(os.sep, "/")
        found += [name if relative == "." else f"{relative}/{name}"
                  for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise DataFormatError(root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder tree")
    return sorted(found)


def list_probes(args) -> tuple[list, np.ndarray]:
    """(relative paths, int labels) of the probe images."""
    if not args.probe_list:
        paths, labels, _ = scan_image_folder(args.probes)
        return paths, labels
    paths, ids = read_devkit_list(args.probe_list, with_ids=True)
    names = ids if ids is not None else [path.replace("\\", "/").split("/")[0] for path in paths]
    return paths, np.unique(np.array([str(name) for name in names]), return_inverse=True)[1].astype(np.int64)


def read_noise_list(path) -> list:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        raise DataFormatError(path, "noise list not found") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(path, f"not a UTF-8 text list ({error.reason} at byte {error.start})") from None


# ---------------------------------------------------------------- devkit files

def check_devkit_target(parser, out_root, image_roots) -> None:
    """The devkit files go into their own tree, never beside or among the images."""
    def inside(path, folder):
        return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
    for sub in ("facescrub", "megaface"):
        target = os.path.realpath(os.path.join(out_root, sub))
        for root in image_roots:
            root = os.path.realpath(root)
            if inside(target, root) or inside(root, target):
                parser.error(f"--devkit-out {out_root}: its {sub}/ tree would overlap the image folder {root}; "
                             "choose a folder outside the images")


def write_devkit_files(out_root, probe_paths, probes, distractor_paths, distractors, suffix: str,
                       normalize: bool, block: int = 10000) -> None:
    """OUT/facescrub/<probe path>_<suffix>.bin and OUT/megaface/<distractor path>_<suffix>.bin, the
    distractors read `block` rows at a time (they may be a memory map of a million rows)."""
    created = set()
    for sub, paths, features in (("facescrub", probe_paths, probes), ("megaface", distractor_paths, distractors)):
        for start in range(0, len(paths), block):
            rows = np.asarray(features[start:start + block], dtype=np.float32)
            for relative, feature in zip(paths[start:start + block], l2_normalize(rows) if normalize else rows):
                target = os.path.join(out_root, sub, f"{relative}_{suffix}.bin")
                folder = os.path.dirname(target)
                if folder not in created:
                    os.makedirs(folder, exist_ok=True)
                    created.add(folder)
                with open(target, "wb") as handle:
                    handle.write(DEVKIT_HEADER.pack(feature.size, 1, 4, CV_32F))
                    handle.write(np.ascontiguousarray(feature, dtype="<f4").tobytes())


# ---------------------------------------------------------------- features file

def load_megaface_features(path):
    """(probes [P, D], labels [P], distractors [M, D], probe paths or None, distractor paths or None)."""
    arrays = open_npz(path, ("probe_embeddings", "probe_labels", "distractor_embeddings"),
                      ("probe_paths", "distractor_paths"))
    probes = check_float_matrix(path, "probe_embeddings", arrays["probe_embeddings"])
    labels = arrays["probe_labels"]
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (probes.shape[0],):
        raise DataFormatError(path, f"probe_labels must be {probes.shape[0]} integers, got dtype {labels.dtype} "
                                    f"shape {labels.shape}")
    distractors = check_float_matrix(path, "distractor_embeddings", arrays["distractor_embeddings"])
    if distractors.shape[1] != probes.shape[1]:
        raise DataFormatError(path, f"distractor_embeddings are {distractors.shape[1]}-d, probe_embeddings "
                                    f"{probes.shape[1]}-d")
    paths = []
    for key, rows in (("probe_paths", probes.shape[0]), ("distractor_paths", distractors.shape[0])):
        value = arrays.get(key)
        if value is not None and (value.dtype.kind != "U" or value.shape != (rows,)):
            raise DataFormatError(path, f"{key} must be {rows} strings, got dtype {value.dtype} shape {value.shape}")
        paths.append(value.tolist() if value is not None else None)
    return probes, labels.astype(np.int64), distractors, paths[0], paths[1]


# ---------------------------------------------------------------- results

def save_cmc_png(results: dict, path) -> None:
    """CMC curves (identification rate against rank), one per distractor count; refined dashed."""
    figure = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for style, (suffix, result) in zip(("-", "--"), results.items()):
        for colour, (count, curve) in enumerate(result.cmc.items()):
            axes.plot(np.arange(1, len(curve) + 1), 100 * np.asarray(curve), style, marker="o", markersize=3,
                      color=f"C{colour % 10}", label=f"{count:,} distractors{suffix}")
    axes.set_xlabel("rank")
    axes.set_ylabel("identification rate (%)")
    axes.set_title("MegaFace Challenge 1 CMC (FaceScrub probes)")
    axes.grid(True, alpha=0.4)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")


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


def extract_or_load(parser, args, device):
    """(probes [P, D], labels [P], distractors [M, D] (a memory map when extracted), probe paths,
    distractor paths, network name, feature folder, a line saying where the features came from)."""
    if args.features is not None:
        probes, labels, distractors, probe_paths, distractor_paths = load_megaface_features(args.features)
        return probes, labels, distractors, probe_paths, distractor_paths, None, None, f"features {args.features}"
    probe_paths, labels = list_probes(args)
    distractor_paths = read_devkit_list(args.distractor_list)[0] if args.distractor_list \
        else scan_image_tree(args.distractors)
    ImageFiles(args.probes, probe_paths).check_exist(args.probe_list or args.probes)
    ImageFiles(args.distractors, distractor_paths).check_exist(args.distractor_list or args.distractors)
    model, name, size = load_model(args, device)
    folder = args.feature_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "megaface_features")
    probes, computed = cached_features("probes", args.probes, probe_paths, folder,
                                       run_identity(args, name, size, probe_paths), model, device, args,
                                       args.max_chunks)
    distractors, _ = cached_features("distractors", args.distractors, distractor_paths, folder,
                                     run_identity(args, name, size, distractor_paths), model, device, args,
                                     None if args.max_chunks is None else args.max_chunks - computed)
    if probes is None or distractors is None:
        sys.exit(f"stopped after {args.max_chunks} chunks (--max-chunks); run the same command to resume")
    source = f"checkpoint {args.checkpoint} ({name}, {size}-d), features in {folder}"
    return np.array(probes), labels, distractors, probe_paths, distractor_paths, name, folder, source


def evaluate_with_noise_lists(args, probes, labels, distractors, probe_paths, distractor_paths, options):
    """(MegaFaceResult after insightface's noise lists are applied, {what they matched})."""
    cleaned, excluded, noise = probes, None, {}
    if args.facescrub_noises:
        noisy = facescrub_noise_mask(probe_paths, parse_facescrub_noises(read_noise_list(args.facescrub_noises)))
        try:
            cleaned = clean_facescrub_probes(probes, labels, noisy, seed=args.seed)
        except ValueError as error:
            raise DataFormatError(args.facescrub_noises, str(error)) from None
        noise["noisy_probes"] = int(noisy.sum())
    if args.megaface_noises:
        excluded = megaface_noise_mask(distractor_paths, parse_megaface_noises(read_noise_list(args.megaface_noises)))
        noise["noisy_distractors"] = int(excluded.sum())
    return evaluate_megaface(cleaned, labels, distractors, excluded_distractors=excluded, **options), noise


def save_figures(out_dir, raw, refined) -> dict:
    """{kind: path} of the CMC and ROC figures written under out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    files = {"cmc": os.path.join(out_dir, "cmc.png")}
    save_cmc_png({"": raw} if refined is None else {"": raw, " @R": refined}, files["cmc"])
    for suffix, result in (("", raw), ("_refined", refined)):
        if result is not None:
            files[f"roc{suffix}"] = os.path.join(out_dir, f"roc{suffix}.png")
            counts = result.distractor_counts
            save_roc_png([result.roc[n] for n in counts], files[f"roc{suffix}"],
                         labels=[f"{n:,} distractors" for n in counts],
                         title=f"MegaFace Challenge 1 ROC{' (refined)' if suffix else ''}")
    return files


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from_images = args.probes is not None or args.distractors is not None
    if from_images == (args.features is not None) or (from_images and None in (args.probes, args.distractors)):
        parser.error("give --probes and --distractors (image folders), or --features, one of the two")
    for flag, value, folder in (("--probe-list", args.probe_list, "--probes"),
                                ("--distractor-list", args.distractor_list, "--distractors")):
        if value is not None and not from_images:
            parser.error(f"{flag} lists images under {folder}; it cannot go with --features")
    check_model_arguments(parser, args, not from_images)
    if args.devkit_out and from_images:
        check_devkit_target(parser, args.devkit_out, (args.probes, args.distractors))
    device = resolve_device(parser, args.device)

    probes, labels, distractors, probe_paths, distractor_paths, name, folder, source = \
        extract_or_load(parser, args, device)
    if np.bincount(np.unique(labels, return_inverse=True)[1]).max() < 2:
        raise DataFormatError(args.features or args.probe_list or args.probes,
                              "no identity has two probe images: there is no genuine pair")
    n_distractors = len(distractors)
    sizes = args.sizes or [10 ** k for k in range(1, 7) if 10 ** k < n_distractors] + [n_distractors]
    if sizes[-1] > n_distractors:
        parser.error(f"--sizes asks for {sizes[-1]} distractors; only {n_distractors} are given")
    noise_lists = args.facescrub_noises or args.megaface_noises
    if (noise_lists or args.devkit_out) and (probe_paths is None or distractor_paths is None):
        parser.error(f"{args.features} holds no probe_paths/distractor_paths: the noise lists and "
                     "--devkit-out need image paths")

    if args.save_features:
        arrays = dict(probe_embeddings=probes, probe_labels=labels, distractor_embeddings=np.asarray(distractors))
        if probe_paths is not None and distractor_paths is not None:
            arrays.update(probe_paths=np.array(probe_paths), distractor_paths=np.array(distractor_paths))
        save_npz(args.save_features, **arrays)
    if args.devkit_out:
        # the store's features are unit-norm already; a features file's may not be
        write_devkit_files(args.devkit_out, probe_paths, probes, distractor_paths, distractors,
                           args.devkit_suffix or name or "features", normalize=not from_images)

    options = dict(distractor_counts=sizes, cmc_ranks=CMC_RANKS, far_targets=(FAR,), seed=args.seed, device=device)
    raw = evaluate_megaface(probes, labels, distractors, **options)
    refined, noise = None, {}
    if noise_lists:
        refined, noise = evaluate_with_noise_lists(args, probes, labels, distractors, probe_paths, distractor_paths,
                                                   options)

    files = {"json": os.path.join(args.out_dir, "megaface.json"), **save_figures(args.out_dir, raw, refined)}
    rows = table_rows(raw, refined)
    record = {"rank1": rows[-1]["rank1"], FAR_KEY: rows[-1][FAR_KEY], "rank1_refined": rows[-1].get("rank1_refined"),
              f"{FAR_KEY}_refined": rows[-1].get(f"{FAR_KEY}_refined"), "distractors": int(sizes[-1]),
              "probes": int(len(labels)), "identities": int(np.unique(labels).size), "table": rows, "noise": noise,
              "checkpoint": args.checkpoint, "backbone": name, "feature_dir": folder, "features": args.features,
              "source": source, "devkit_out": args.devkit_out, "files": files}
    with open(files["json"], "w", encoding="utf-8") as handle:
        json.dump({**record, "raw": raw.to_json(include_roc=True),
                   "refined": refined.to_json(include_roc=True) if refined is not None else None}, handle)
    if args.json:
        print(json.dumps({**record, "raw": raw.to_json(), "refined": refined.to_json() if refined else None}))
    else:
        print_table(rows, record)


if __name__ == "__main__":
    run_cli(main)
