# torchrun --nproc_per_node=8 train.py configs/arcface_torch/glint360k_r100.py
# Reference: insightface arcface_torch, configs/glint360k_r100.py over configs/base.py, trained by train_v2.py.
# Glint360K: 17,091,657 images of 360,232 identities.
# 1024 global batch = 8 GPUs x 128; 17,091,657 // 1024 = 16,691 steps per epoch x 20 epochs = 333,820 steps.
# As train_v2.py trains it: SGD momentum 0.9 (not Nesterov), lr 0.1, weight decay 1e-4 on every parameter;
# PolynomialLRWarmup(power 1), warmup_epoch 0; clip_grad_norm_(backbone.parameters(), 5);
# CombinedMarginLoss (1.0, 0.0, 0.4) = CosFace m = 0.4, s = 64; Partial FC v2 at sample_rate 1.0 (sharded,
# N(0, 0.01)); fp16 with GradScaler(growth_interval=100); DDP with fp16 gradient compression; random flips.
name = "glint360k_r100"
train_data = "data/glint360k"
val_sets = ["lfw", "cfp_fp", "agedb_30"]
backbone = "ir100"
embedding_size = 512
head = "cosface"
s = 64.0
m = 0.4
head_init = "normal"
sharded_head = True
sample_rate = 1.0
batch_size = 1024
optimizer = "sgd"
lr = 0.1
momentum = 0.9
nesterov = False
weight_decay = 1e-4
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
