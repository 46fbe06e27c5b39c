# python train.py configs/demo_vit.py   (after make demo has written data/synthetic)
# ViT-T (vit_t: 256 wide, 12 blocks, 19 M parameters, 1.5 GMACs) + ArcFace on the synthetic
# identities, sized for a 2-core CPU: 64 batch x 1 process, at most 15 minutes of training steps,
# evaluated before and after on the held-out LFW-like pairs. An image costs ViT-T about 7x what it
# costs MobileFaceNet (configs/demo.py), hence the longer budget. AdamW at 1e-3, the usual ViT rate
# (arcface_torch's too), with a short warm-up; the small scale and margin of the MobileFaceNet demo.
name = "demo_vit"
train_data = "data/synthetic"
val_sets = ["lfw"]
backbone = "vit_t"
embedding_size = 512
head = "arcface"
s = 16.0
m = 0.1
optimizer = "adamw"
lr = 0.001
weight_decay = 0.05
batch_size = 64
epochs = 2
schedule = "cosine"
warmup_epochs = 0.2
max_train_minutes = 15.0
workers = 1
test_freq = 0
save_freq = 100
log_freq = 10
eval_at_start = True
