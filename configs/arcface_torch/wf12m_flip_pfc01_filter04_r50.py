# torchrun --nproc_per_node=8 train.py configs/arcface_torch/wf12m_flip_pfc01_filter04_r50.py
# Reference: insightface arcface_torch, configs/wf12m_flip_pfc01_filter04_r50.py over configs/base.py, trained
# by train_v2.py: its noisy-label recipe, WebFace12M with 40% of the labels flipped (WebFace12M_FLIP40:
# 12,720,066 images of 617,970 identities), where Partial FC 0.1 with inter-class filtering at 0.4 raises
# IJB-C TAR@FAR=1e-4 from 88.35 to 96.11 (its README).
# 1024 global batch = 8 GPUs x 128; 12,720,066 // 1024 = 12,421 steps per epoch x 20 epochs = 248,420 steps.
# As train_v2.py trains it: SGD momentum 0.9 (not Nesterov), lr 0.1, weight decay 5e-4 on every parameter;
# PolynomialLRWarmup(power 1) with warmup_epoch = 20 // 10 = 2 (its first step at the full lr, then lr * i / w);
# clip_grad_norm_(backbone.parameters(), 5); CombinedMarginLoss (1.0, 0.0, 0.4) = CosFace m = 0.4, s = 64,
# interclass_filtering_threshold 0.4; Partial FC v2 sampling 10% of each GPU's classes per step;
# fp16 with GradScaler(growth_interval=100); DDP with fp16 gradient compression; random flips; no val sets.
name = "wf12m_flip_pfc01_filter04_r50"
train_data = "data/WebFace12M_FLIP40"
val_sets = []
backbone = "ir50"
embedding_size = 512
head = "cosface"
s = 64.0
m = 0.4
interclass_filtering_threshold = 0.4
head_init = "normal"
sharded_head = True
sample_rate = 0.1
batch_size = 1024
optimizer = "sgd"
lr = 0.1
momentum = 0.9
nesterov = False
weight_decay = 5e-4
epochs = 20
schedule = "poly"
poly_power = 1.0
warmup_epochs = 2.0
clip_grad_norm = 5.0
clip_grad_scope = "backbone"
precision = "fp16"
grad_scaler_growth_interval = 100
ddp_fp16_compress = True
flip = True
save_freq = 2000
workers = 8
