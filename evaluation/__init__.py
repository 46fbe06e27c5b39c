"""Evaluation math: pair verification under the insightface and seed protocols, and MegaFace
Challenge 1 identification/verification. Beside it: feature extraction (features), the resumable
feature store (feature_store), MegaFace's files (megaface_files, megaface_noise), ROC and CMC
figures (plot, needs matplotlib), and the eval scripts' command lines (cli, megaface_cli)."""

from .megaface import DEFAULT_DISTRACTOR_COUNTS, MegaFaceResult, distractor_order, evaluate_megaface
from .megaface_noise import (clean_facescrub_probes, facescrub_noise_mask, megaface_noise_mask,
                             parse_facescrub_noises, parse_megaface_noises)
from .verification import PROTOCOLS, RocCurve, VerificationResult, evaluate_verification

__all__ = [
    "DEFAULT_DISTRACTOR_COUNTS", "MegaFaceResult", "PROTOCOLS", "RocCurve", "VerificationResult",
    "clean_facescrub_probes", "distractor_order", "evaluate_megaface", "evaluate_verification",
    "facescrub_noise_mask", "megaface_noise_mask", "parse_facescrub_noises", "parse_megaface_noises",
]
