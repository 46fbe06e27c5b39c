"""MegaFace Challenge 1 (FaceScrub probes against up to a million distractors) without the devkit
binary: the identification and verification math in `protocol`, the devkit's feature files and
lists in `files`, insightface's noise lists in `noise`, the command line of eval_megaface.py in `cli`."""

from .noise import (clean_facescrub_probes, facescrub_noise_mask, megaface_noise_mask, parse_facescrub_noises,
                    parse_megaface_noises)
from .protocol import (DEFAULT_DISTRACTOR_COUNTS, MegaFaceResult, default_distractor_counts, distractor_order,
                       evaluate_megaface)

__all__ = ["DEFAULT_DISTRACTOR_COUNTS", "MegaFaceResult", "clean_facescrub_probes", "default_distractor_counts",
           "distractor_order", "evaluate_megaface", "facescrub_noise_mask", "megaface_noise_mask",
           "parse_facescrub_noises", "parse_megaface_noises"]
