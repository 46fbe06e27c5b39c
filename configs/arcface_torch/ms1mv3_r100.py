# torchrun --nproc_per_node=8 train.py configs/arcface_torch/ms1mv3_r100.py
# Reference: insightface arcface_torch, configs/ms1mv3_r100.py over configs/base.py, trained by train_v2.py.
# MS1MV3 (ms1m-retinaface-t1): 5,179,510 images of 93,431 identities.
# 1024 global batch = 8 GPUs x 128; 5,179,510 // 1024 = 5,058 steps per epoch x 20 epochs = 101,160 steps.
# As train_v2.py trains it: SGD momentum 0.9 (not Nesterov), lr 0.1, weight decay 5e-4 on every parameter;
# PolynomialLRWarmup(power 1) stepped per step with warmup_epoch 0 (the first step at the full lr, then a
# linear decay to 0); clip_grad_norm_(backbone.parameters(), 5); CombinedMarginLoss (1.0, 0.5, 0.0) = ArcFace,
# s = 64, margin applied without gradient; Partial FC v2 at sample_rate 1.0 (class centres sharded over the
# GPUs, drawn N(0, 0.01)); fp16 with GradScaler(growth_interval=100); DDP with fp16 gradient compression;
# random horizontal flips; lfw, cfp_fp and agedb_30 checked every 2000 steps.
name = "ms1mv3_r100"
train_data = "data/ms1m-retinaface-t1"
val_sets = ["lfw", "cfp_fp", "agedb_30"]
backbone = "ir100"
embedding_size = 512
head = "arcface"
s = 64.0
m = 0.5
margin_gradient = "straight_through"
head_init = "normal"
sharded_head = True
sample_rate = 1.0
batch_size = 1024
optimizer = "sgd"
lr = 0.1
momentum = 0.9
nesterov = False
weight_decay = 5e-4
epochs = 20
schedule = "poly"
poly_power = 1.0
warmup_epochs = 0.0
clip_grad_norm = 5.0
clip_grad_scope = "backbone"
precision = "fp16"
grad_scaler_growth_interval = 100
ddp_fp16_compress = True
flip = True
test_freq = 2000
save_freq = 2000
workers = 8
