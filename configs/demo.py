# make demo   (or: python tools/make_synthetic.py data/synthetic && python train.py configs/demo.py)
# MobileFaceNet + ArcFace on the synthetic identities (tools/make_synthetic.py), sized for a 2-core
# CPU: 64 batch x 1 process; a few hundred steps; evaluated on the held-out LFW-like pairs.
name = "demo"
train_data = "data/synthetic"
val_sets = ["lfw", "agedb_30", "cfp_fp"]
backbone = "mobilefacenet"
embedding_size = 128
head = "arcface"
s = 32.0
m = 0.5
batch_size = 64
lr = 0.1
epochs = 4
schedule = "cosine"
warmup_epochs = 0.2
workers = 1
test_freq = 0
save_freq = 200
log_freq = 10
eval_at_start = True
