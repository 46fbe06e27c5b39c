# torchrun --nproc_per_node=8 train.py configs/arcface_torch/wf42m_pfc03_40epoch_8gpu_vit_b.py
# Reference: insightface arcface_torch, configs/wf42m_pfc03_40epoch_8gpu_vit_b.py over configs/base.py, trained
# by train_v2.py. WebFace42M: 42,474,557 images of 2,059,906 identities.
# 24,576 global batch = 8 GPUs x 256 x 12 accumulated micro-batches (its gradient_acc 12);
# 42,474,557 // 24,576 = 1,728 steps per epoch x 40 epochs = 69,120 steps.
# As train_v2.py trains it: AdamW lr 1e-3, weight decay 0.1 on every parameter; each micro-batch's loss
# backpropagated as it is (the step's gradient is the sum of 12); PolynomialLRWarmup(power 1) stepped per
# micro-batch: warm-up over 4 epochs (40 // 10) of 42,474,557 // 2,048 = 20,739 micro-batches, then a linear
# decay to 0 over 40 epochs (an optimizer step runs at the lr of its last micro-batch);
# clip_grad_norm_(backbone.parameters(), 5); CombinedMarginLoss (1.0, 0.0, 0.4) = CosFace m = 0.4, s = 64;
# Partial FC v2 sampling 30% of each GPU's classes per micro-batch; fp16 with GradScaler(growth_interval=100);
# DDP with fp16 gradient compression; its network "vit_b_dp005_mask_005" (drop path 0.05, token masking 0.05,
# activation checkpointing); random flips; no val sets.
name = "wf42m_pfc03_40epoch_8gpu_vit_b"
train_data = "data/WebFace42M"
val_sets = []
backbone = "vit_b"
embedding_size = 512
backbone_options = {"drop_path_rate": 0.05, "mask_ratio": 0.05}  # vit_b's own are 0.1 and 0.1
grad_checkpoint = True
head = "cosface"
s = 64.0
m = 0.4
head_init = "normal"
sharded_head = True
sample_rate = 0.3
batch_size = 24576
grad_accum = 12
grad_accum_sum = True
optimizer = "adamw"
lr = 0.001
weight_decay = 0.1
epochs = 40
schedule = "poly"
poly_power = 1.0
warmup_epochs = 4.0
clip_grad_norm = 5.0
clip_grad_scope = "backbone"
precision = "fp16"
grad_scaler_growth_interval = 100
ddp_fp16_compress = True
flip = True
save_freq = 1000
workers = 8
