"""The embedding output layer the ArcFace paper settles on (Deng et al., "ArcFace: Additive Angular
Margin Loss for Deep Face Recognition", CVPR 2019, implementation details; output "E" in the 2018
arXiv version): BN2d -> Dropout -> flatten -> FC -> BN1d, applied to the last 7x7 feature map.

The IR networks, ResNet-50 and the Residual Attention networks share it. The layers are returned
loose rather than wrapped in a module so that each network holds them under insightface's
attribute names (`bn2`, `dropout`, `fc`, `features`): the IR nets' state_dict keys are then
exactly those of insightface's published checkpoints.
"""

from torch import nn

FEATURE_MAP_SIZE = 7  # 112x112 input, four stride-2 stages


def option_e_layers(channels: int, embedding_size: int, dropout: float):
    """(bn2, dropout, fc, features) for a `channels` x 7 x 7 map -> `embedding_size` embedding."""
    features = nn.BatchNorm1d(embedding_size)
    # insightface arcface_torch fixes the last BN's scale at 1 and learns only its shift, which keeps
    # every embedding dimension at unit variance over the batch instead of letting a learnt scale
    # re-weight dimensions. It stays a parameter, so checkpoints carry it and load either way.
    features.weight.requires_grad_(False)
    return (nn.BatchNorm2d(channels), nn.Dropout(p=dropout),
            nn.Linear(channels * FEATURE_MAP_SIZE * FEATURE_MAP_SIZE, embedding_size), features)
