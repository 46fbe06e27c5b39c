# torchrun --nproc_per_node=8 train.py configs/ms1m_ir100_arcface.py
# torchrun --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500 --nproc_per_node=8 \
#     train.py configs/ms1m_ir100_arcface.py                         (two machines, 16 GPUs)
# IR-100 with ArcFace on MS1MV3 (insightface's ms1m-retinaface-t1: 5,179,510 images, 93,431 ids),
# insightface arcface_torch's recipe: 1024 global batch = 8 GPUs x 128; 5,058 steps per epoch x 20
# epochs; polynomial decay with 1 warm-up epoch; the class centres sharded over the GPUs
# (Partial FC), every class in every step (sample_rate 1.0; 0.3 for Glint360K-sized sets).
name = "ms1m_ir100_arcface"
train_data = "data/ms1m-retinaface-t1"
backbone = "ir100"
embedding_size = 512
head = "arcface"
s = 64.0
m = 0.5
sharded_head = True
sample_rate = 1.0
batch_size = 1024
lr = 0.1
weight_decay = 5e-4
epochs = 20
schedule = "poly"
warmup_epochs = 1.0
workers = 8
test_freq = 5000
save_freq = 5000
