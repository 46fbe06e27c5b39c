"""The reference IJB code re-stated plainly, for tests/test_ijb*.py to compare evaluation/ijb/protocol.py with.

- eval_ijbc.py (insightface recognition/arcface_torch): the metadata readers (with the np.loadtxt
  line its own comments offer instead of pandas), Step 3's image features per mode, the
  per-template loop of image2template_feature, verification's pair scores in batches of 100,000,
  and Step 5's reading of TAR at each FAR from scikit-learn's roc_curve;
- scikit-learn's roc_curve(drop_intermediate=True) as its _ranking.py computes it: a stable
  descending sort, cumulative true positives at the last index of each distinct score, false
  positives as index + 1 - tps, points dropped where both second differences are zero, (0, 0)
  prepended;
- ijb_evals.py (insightface recognition/_evaluation_/ijb): image2template_feature for chosen
  templates, evaluation_1N and run_model_test_1N's mean over the galleries.

sklearn.preprocessing.normalize is runtime.l2_normalize, which re-states it. The one liberty: the
1:N ranking sorts with kind="stable". The reference's np.argsort(...)[::-1] uses numpy's default
sort, whose order among equal scores is the implementation's (numpy's SIMD sorts on this machine
do not keep it), so ties are ranked as a stable sort would rank them.
"""

import numpy as np

from runtime import l2_normalize

X_LABELS = [10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1]


def read_template_media_list(path):
    ijb_meta = np.loadtxt(path, dtype=str)
    return ijb_meta[:, 1].astype(int), ijb_meta[:, 2].astype(int)


def read_template_pair_list(path):
    pairs = np.loadtxt(path, dtype=str)
    return pairs[:, 0].astype(int), pairs[:, 1].astype(int), pairs[:, 2].astype(int)


def read_landmarks_and_faceness(path):
    """get_image_feature's parsing: float32 landmarks of each line, faceness from the last field."""
    with open(path) as handle:
        files = handle.readlines()
    landmarks, faceness_scores = [], []
    for each_line in files:
        name_lmk_score = each_line.strip().split(" ")
        landmarks.append(np.array([float(x) for x in name_lmk_score[1:-1]], dtype=np.float32).reshape((5, 2)))
        faceness_scores.append(name_lmk_score[-1])
    return np.array(landmarks), np.array(faceness_scores).astype(np.float32)


def read_1n_csv(path):
    """read_IJB_meta_columns_to_int(path, columns=[0, 1], skiprows=1, sep=",")."""
    meta = np.loadtxt(path, dtype=str, delimiter=",", skiprows=1)
    return meta[:, 0].astype("int"), meta[:, 1].astype("int")


def image_input_features(img_feats, faceness_scores, use_norm_score, use_detector_score, use_flip_test, concat=False):
    """Step 3 of eval_ijbc.py; img_feats is [N, 2D], each image's feature then its mirror image's."""
    if use_flip_test and concat:
        img_input_feats = img_feats
    elif use_flip_test:
        img_input_feats = img_feats[:, 0:img_feats.shape[1] // 2] + img_feats[:, img_feats.shape[1] // 2:]
    else:
        img_input_feats = img_feats[:, 0:img_feats.shape[1] // 2]
    if not use_norm_score:
        img_input_feats = img_input_feats / np.sqrt(np.sum(img_input_feats ** 2, -1, keepdims=True))
    if use_detector_score:
        img_input_feats = img_input_feats * faceness_scores[:, np.newaxis]
    return img_input_feats


def image2template_feature(img_feats=None, templates=None, medias=None, choose_templates=None, choose_ids=None):
    if choose_templates is not None:  # 1:N
        unique_templates, indices = np.unique(choose_templates, return_index=True)
        unique_subjectids = choose_ids[indices]
    else:  # 1:1
        unique_templates = np.unique(templates)
        unique_subjectids = None
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count_template, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:  # image features from the same video will be aggregated into one feature
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        media_norm_feats = np.array(media_norm_feats)
        template_feats[count_template] = np.sum(media_norm_feats, axis=0)
    template_norm_feats = l2_normalize(template_feats)
    return template_norm_feats, unique_templates, unique_subjectids


def verification(template_norm_feats=None, unique_templates=None, p1=None, p2=None):
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    batchsize = 100000
    sublists = [total_pairs[i:i + batchsize] for i in range(0, len(p1), batchsize)]
    for s in sublists:
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        similarity_score = np.sum(feat1 * feat2, -1)
        score[s] = similarity_score.flatten()
    return score


def roc_curve(y_true, y_score):
    y_true = np.asarray(y_true) == 1
    y_score = np.asarray(y_score)
    desc_score_indices = np.argsort(y_score, kind="mergesort")[::-1]
    y_score = y_score[desc_score_indices]
    y_true = y_true[desc_score_indices]
    distinct_value_indices = np.where(np.diff(y_score))[0]
    threshold_idxs = np.r_[distinct_value_indices, y_true.size - 1]
    tps = np.cumsum(y_true.astype(np.float64))[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    thresholds = y_score[threshold_idxs]
    if len(fps) > 2:
        optimal_idxs = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[optimal_idxs], tps[optimal_idxs], thresholds[optimal_idxs]
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def tpr_at_fpr(label, score):
    """Step 5 of eval_ijbc.py: one TAR per x_label, as fractions."""
    fpr, tpr, _ = roc_curve(label, score)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)  # select largest tpr at same fpr
    row = []
    for fpr_iter in np.arange(len(X_LABELS)):
        _, min_index = min(list(zip(abs(fpr - X_LABELS[fpr_iter]), range(len(fpr)))))
        row.append(tpr[min_index])
    return row


def evaluation_1N(query_feats, gallery_feats, query_ids, reg_ids, fars=(0.01, 0.1)):
    similarity = np.dot(query_feats, gallery_feats.T)
    top_1_count, top_5_count, top_10_count = 0, 0, 0
    pos_sims, neg_sims, non_gallery_sims = [], [], []
    for index, query_id in enumerate(query_ids):
        if query_id in reg_ids:
            gallery_label = np.argwhere(reg_ids == query_id)[0, 0]
            index_sorted = np.argsort(similarity[index], kind="stable")[::-1]
            top_1_count += gallery_label in index_sorted[:1]
            top_5_count += gallery_label in index_sorted[:5]
            top_10_count += gallery_label in index_sorted[:10]
            pos_sims.append(similarity[index][reg_ids == query_id][0])
            neg_sims.append(similarity[index][reg_ids != query_id])
        else:
            non_gallery_sims.append(similarity[index])
    pos_sims, neg_sims, non_gallery_sims = np.array(pos_sims), np.array(neg_sims), np.array(non_gallery_sims)
    correct_pos_cond = pos_sims > neg_sims.max(1)
    non_gallery_sims_sorted = np.sort(non_gallery_sims.max(1))[::-1]
    threshes, recalls = [], []
    for far in fars:
        thresh = non_gallery_sims_sorted[max(int((non_gallery_sims_sorted.shape[0]) * far) - 1, 0)]
        recall = np.logical_and(correct_pos_cond, pos_sims > thresh).sum() / pos_sims.shape[0]
        threshes.append(thresh)
        recalls.append(recall)
    return top_1_count, top_5_count, top_10_count, threshes, recalls


def run_1n(img_input_feats, templates, medias, galleries, probe_templates, probe_ids, npoints=100):
    """run_model_test_1N: ({"top_1", "top_5", "top_10"} over all probes, mean TPIR at each point of
    its FAR grid, per-gallery evaluation_1N results on that grid; its table shows grid points
    0, 25, 50, 75 and 100, i.e. 1e-4, 1e-3, 0.01, 0.1 and 1)."""
    fars = [10 ** ii for ii in np.arange(-4, 0, 4 / npoints)] + [1]
    probe_feats, _, probe_unique_ids = image2template_feature(img_input_feats, templates, medias, probe_templates,
                                                              probe_ids)
    per_gallery = []
    for gallery_templates, gallery_ids in galleries:
        gallery_feats, _, gallery_unique_ids = image2template_feature(img_input_feats, templates, medias,
                                                                      gallery_templates, gallery_ids)
        per_gallery.append(evaluation_1N(probe_feats, gallery_feats, probe_unique_ids, gallery_unique_ids, fars))
    query_num = probe_feats.shape[0]
    tops = {k: sum(g[i] for g in per_gallery) / query_num for i, k in enumerate(("top_1", "top_5", "top_10"))}
    mean_tpirs = (np.array(per_gallery[0][4]) + np.array(per_gallery[1][4])) / 2
    return tops, mean_tpirs, per_gallery
