# python train.py configs/casia_mobilefacenet_arcface.py
# The old repository's recipe on CASIA-WebFace (insightface's faces_webface_112x112: 490,623 images,
# 10,572 identities). 200 batch x 1 GPU; 2,453 steps per epoch x 18 epochs; lr x0.1 at epochs 6, 11, 16.
name = "casia_mobilefacenet_arcface"
train_data = "data/faces_webface_112x112"
backbone = "mobilefacenet"
embedding_size = 128
head = "arcface"
s = 32.0
m = 0.5
