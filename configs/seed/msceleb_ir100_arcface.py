# python train.py configs/seed/msceleb_ir100_arcface.py
# torchrun --nproc_per_node=4 train.py configs/seed/msceleb_ir100_arcface.py   (its 4 GPUs: 64 images each,
#     BatchNorm statistics per GPU, as under its DataParallel)
# Reference: the old repository (wujiyang/Face_Pytorch) train.py as it trained ResNet100-IR on its large protocol
# (commit 8c18c16, 2019-05-28: --backbone Res100_IR, batch 256, 22 epochs, MultiStepLR([8, 14, 20])); its README:
# LFW 99.83, AgeDB-30 98.28, CFP-FP 96.41, MegaFace rank-1 80.40, from DeepGlint's MS-Celeb-1M (3,923,399 images of
# 86,876 identities). 256 global batch; 3,923,399 // 256 = 15,325 steps per epoch x 22 epochs = 337,150 steps
# (its loader also trains each epoch's last, partial batch of 199 images; here it is dropped).
# As its train.py trains: SGD lr 0.1, Nesterov momentum 0.9, weight decay 5e-4 on the net and the margin;
# MultiStepLR([8, 14, 20], 0.1) stepped at the start of each epoch: lr 0.1 in epochs 1-7, 0.01 in 8-13, 1e-3 in
# 14-19, 1e-4 in 20-22; ArcMarginProduct s = 32, m = 0.5 (exact gradient, class weights xavier_uniform);
# its IR100 (512-d; dropout 0.4 before the FC, its CBAMResNet's default); random flips;
# no warm-up, no clipping; fp32; evaluated every 3000 steps with its eval_lfw.py protocol.
name = "msceleb_ir100_arcface"
train_data = "data/msceleb_deepglint"
val_sets = ["lfw", "agedb_30", "cfp_fp"]
val_protocol = "seed"
backbone = "ir100"
embedding_size = 512
dropout = 0.4
head = "arcface"
s = 32.0
m = 0.5
margin_gradient = "exact"
head_init = "xavier_uniform"
batch_size = 256
optimizer = "sgd"
lr = 0.1
momentum = 0.9
nesterov = True
weight_decay = 5e-4
decay_bn_and_bias = True
epochs = 22
schedule = "multistep"
milestones = [8, 14, 20]
lr_gamma = 0.1
multistep_epoch_start = True
warmup_epochs = 0.0
clip_grad_norm = 0.0
precision = "fp32"
flip = True
test_freq = 3000
save_freq = 3000
workers = 8
