"""IJB-B and IJB-C, 1:1 verification and 1:N identification, as insightface's eval_ijbc.py and
ijb_evals.py compute them: template pooling, pair scores and the ROC in `protocol`, the 1:N search in
`identify`, the release's meta files in `meta` (read by `text`), the per-image features and their
store in `features`, the figures in `plot`, the command line of eval_ijb.py in `cli`."""

from .protocol import (DEFAULT_MODE, FAR_TARGETS, FPIR_TARGETS, RANKS, FeatureRows, IJBResult, Mode, TemplatePooling,
                       image_features, pair_scores)

__all__ = ["DEFAULT_MODE", "FAR_TARGETS", "FPIR_TARGETS", "RANKS", "FeatureRows", "IJBResult", "Mode",
           "TemplatePooling", "image_features", "pair_scores"]
