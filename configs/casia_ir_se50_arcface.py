# python train.py configs/casia_ir_se50_arcface.py
# torchrun --nproc_per_node=4 train.py configs/casia_ir_se50_arcface.py
# IR-SE-50 (squeeze-excitation in every residual unit) with ArcFace on CASIA-WebFace; the IR-50
# schedule: 512 global batch, 24 epochs, lr x0.1 at 10, 18, 22, 1 warm-up epoch.
name = "casia_ir_se50_arcface"
train_data = "data/faces_webface_112x112"
backbone = "ir_se50"
embedding_size = 512
head = "arcface"
s = 64.0
m = 0.5
batch_size = 512
epochs = 24
milestones = [10, 18, 22]
warmup_epochs = 1.0
workers = 8
