# python train.py configs/casia_ir50_arcface.py
# torchrun --nproc_per_node=4 train.py configs/casia_ir50_arcface.py   (same global batch, 128 per GPU)
# IR-50 (43.6 M parameters, 6.3 GMACs) with ArcFace on CASIA-WebFace: 512 global batch,
# 958 steps per epoch x 24 epochs, warm-up 1 epoch, lr x0.1 at epochs 10, 18, 22.
name = "casia_ir50_arcface"
train_data = "data/faces_webface_112x112"
backbone = "ir50"
embedding_size = 512
head = "arcface"
s = 64.0
m = 0.5
batch_size = 512
lr = 0.1
epochs = 24
milestones = [10, 18, 22]
warmup_epochs = 1.0
workers = 8
