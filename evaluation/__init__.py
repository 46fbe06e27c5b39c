"""Evaluation: one sub-package per protocol, and the pieces they share beside them.

Protocols (each with its math in `protocol` and its command line in `cli`):
- `verification`: pair verification on LFW, CFP-FP, AgeDB-30 or any insightface .bin, 10-fold, under
  the insightface and the seed protocols (eval_lfw.py, eval_agedb30.py, eval_cfp.py; train.py's
  validation);
- `megaface`: MegaFace Challenge 1, identification and verification against up to a million
  distractors (eval_megaface.py);
- `ijb`: IJB-B and IJB-C, 1:1 verification and 1:N identification over templates (eval_ijb.py).
A new protocol is a new sub-package beside these, built on the shared pieces.

Shared: `features` (embeddings of an image sequence, with mirrored images), `feature_store` (the
resumable on-disk store for sets too large to embed in one go), `model_loading` (a checkpoint -> its
network), `thresholds` (K-fold splits, the threshold at a FAR, ROC curves), `npz_files` (checking
saved feature arrays), `plot` (ROC and CMC figures; needs matplotlib), `cli` (the eval scripts'
shared options). Shared modules never import a protocol; protocols never import each other.
"""
