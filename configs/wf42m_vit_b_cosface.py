# torchrun --nproc_per_node=8 train.py configs/wf42m_vit_b_cosface.py
# ViT-B with CosFace on WebFace42M (42,474,557 images, 2,059,906 ids), insightface arcface_torch's
# recipe recognition/arcface_torch/configs/wf42m_pfc03_40epoch_8gpu_vit_b.py (its network
# "vit_b_dp005_mask_005"): 24,576 global batch = 8 GPUs x 256 x 12 accumulated micro-batches;
# 1,728 steps per epoch x 40 epochs; AdamW lr 1e-3 and weight decay 0.1 on every parameter;
# linear warm-up over 4 epochs, then linear decay to 0 (its PolynomialLRWarmup, power 1); CosFace
# s=64, m=0.4 (its margin_list (1.0, 0.0, 0.4)); the class centres sharded over the GPUs with 30% of
# them sampled per step (Partial FC); gradient norm clipped at 5 (it clips the backbone's only).
# It trains in fp16 with a GradScaler; bf16 (our default) has fp32's range and needs none.
name = "wf42m_vit_b_cosface"
train_data = "data/WebFace42M"
backbone = "vit_b"
embedding_size = 512
backbone_options = {"drop_path_rate": 0.05, "mask_ratio": 0.05}  # vit_b's own are 0.1 and 0.1
grad_checkpoint = True  # as its ViT-B: activations of 24 blocks x 256 images recomputed, not stored
head = "cosface"
s = 64.0
m = 0.4
sharded_head = True
sample_rate = 0.3
batch_size = 24576
grad_accum = 12
optimizer = "adamw"
lr = 0.001
weight_decay = 0.1
epochs = 40
schedule = "poly"
poly_power = 1.0
warmup_epochs = 4.0
clip_grad_norm = 5.0
workers = 8
test_freq = 5000
save_freq = 2000
