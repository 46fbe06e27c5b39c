# make demo   (= python tools/data/make_synthetic.py data/synthetic --lfw-pairs 600 ... && python train.py configs/demo.py)
# MobileFaceNet + ArcFace on the synthetic identities, sized for a 2-core CPU: 64 batch x 1 process,
# at most 5 minutes of training steps, evaluated before and after on the held-out LFW-like pairs.
# From scratch in a few hundred steps, AdamW with a small scale and margin converges where SGD with
# the CASIA recipe's s=32, m=0.5 barely starts (measured with the synthetic data's learnability check).
name = "demo"
train_data = "data/synthetic"
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
epochs = 2
schedule = "cosine"
warmup_epochs = 0.1
max_train_minutes = 5.0
workers = 1
test_freq = 0
save_freq = 100
log_freq = 10
eval_at_start = True
