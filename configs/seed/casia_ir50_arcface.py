# python train.py configs/seed/casia_ir50_arcface.py
# torchrun --nproc_per_node=4 train.py configs/seed/casia_ir50_arcface.py   (its 4 GPUs: 50 images each,
#     BatchNorm statistics per GPU, as under its DataParallel)
# Reference: the old repository (wujiyang/Face_Pytorch) train.py, its argparse defaults with --backbone Res50_IR
# (its README: LFW 99.42, AgeDB-30 94.45, CFP-FP 95.34, trained on its CASIA-WebFace list of 453,580 images).
# On insightface's faces_webface_112x112 (490,623 images of 10,572 identities): 200 global batch;
# 490,623 // 200 = 2,453 steps per epoch x 18 epochs = 44,154 steps (its loader also trains each epoch's last,
# partial batch of 23 images; here it is dropped).
# As its train.py trains: SGD lr 0.1, Nesterov momentum 0.9, weight decay 5e-4 on the net and the margin;
# MultiStepLR([6, 11, 16], 0.1) stepped at the start of each epoch: lr 0.1 in epochs 1-5, 0.01 in 6-10, 1e-3 in
# 11-15, 1e-4 in 16-18; ArcMarginProduct s = 32, m = 0.5 (exact gradient, class weights xavier_uniform);
# its IR50 (512-d; dropout 0.4 before the FC, its CBAMResNet's default); random flips;
# no warm-up, no clipping; fp32; evaluated every 3000 steps with its eval_lfw.py protocol.
name = "casia_ir50_arcface"
train_data = "data/faces_webface_112x112"
val_sets = ["lfw", "agedb_30", "cfp_fp"]
val_protocol = "seed"
backbone = "ir50"
embedding_size = 512
dropout = 0.4
head = "arcface"
s = 32.0
m = 0.5
margin_gradient = "exact"
head_init = "xavier_uniform"
batch_size = 200
optimizer = "sgd"
lr = 0.1
momentum = 0.9
nesterov = True
weight_decay = 5e-4
decay_bn_and_bias = True
epochs = 18
schedule = "multistep"
milestones = [6, 11, 16]
lr_gamma = 0.1
multistep_epoch_start = True
warmup_epochs = 0.0
clip_grad_norm = 0.0
precision = "fp32"
flip = True
test_freq = 3000
save_freq = 3000
workers = 8
