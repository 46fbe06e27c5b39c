# python tools/data/make_synthetic.py data/noisy40 --identities 200 --images-per-identity 20 --label-noise 0.4 \
#     --lfw-pairs 1200 --agedb-pairs 0 --cfp-pairs 0 --held-out-identities 400
# python train.py configs/noisy_labels.py -- --train_data=data/noisy40 --name=noisy40_arcface
# python train.py configs/noisy_labels.py -- --train_data=data/noisy40 --name=noisy40_pfc --sample_rate=0.1 \
#     --interclass_filtering_threshold=0.4
# python train.py configs/noisy_labels.py -- --train_data=data/noisy40 --name=noisy40_subcenter --head=subcenter_arcface
# The label-noise experiment of docs/noisy-labels.md, sized for a 2-core CPU: synthetic identities with a
# fraction of the training labels flipped (make_synthetic.py --label-noise), MobileFaceNet trained from scratch
# for 5 epochs of 4,000 images at batch 64 (62 steps each, 310 in all) with the demo's optimiser, then evaluated
# on held-out identities' LFW-like pairs. The same recipe is run with plain ArcFace, with arcface_torch's
# noisy-data remedy (Partial FC at sample rate 0.1 plus inter-class filtering at 0.4), and with sub-center
# ArcFace (K = 3, Deng et al., ECCV 2020); tools/data/clean_labels.py then lists the suspect labels of a run.
name = "noisy_labels"
train_data = "data/noisy40"
val_sets = ["lfw"]
backbone = "mobilefacenet"
embedding_size = 128
head = "arcface"
s = 16.0
m = 0.1
optimizer = "adamw"
lr = 0.002
weight_decay = 0.05
batch_size = 64
epochs = 5
schedule = "cosine"
warmup_epochs = 0.2
workers = 1
test_freq = 0
save_freq = 100
log_freq = 10
seed = 0
