"""Tests of the classification heads and auxiliary losses in ``margin/``.

Expected values are computed independently in float64 from the angle each embedding is built at
(not from the head's own cosine), following the formulas in the papers the heads cite.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from margin import AUX_LOSSES, MARGINS, build_aux_loss, build_margin
from margin.base import angular_margin_target
from margin.sphereface import sphereface_psi

EMBEDDING_SIZE = 8
NUM_CLASSES = 5
HEADS_WITH_NORM_INPUT = {"sphereface", "adaface", "magface"}


def embeddings_at_angles(weight, labels, angles, norms, seed=0):
    """float64 embeddings: row i at angle angles[i] from weight[labels[i]], with norm norms[i]."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label, theta, norm in zip(labels.tolist(), angles, norms):
        axis = F.normalize(weight[label].double(), dim=0)
        other = torch.randn(weight.shape[1], generator=generator, dtype=torch.float64)
        other = F.normalize(other - (other @ axis) * axis, dim=0)
        rows.append(norm * (math.cos(theta) * axis + math.sin(theta) * other))
    return torch.stack(rows)


def reference_cosine(embeddings, weight):
    return F.normalize(embeddings.double(), dim=1) @ F.normalize(weight.double(), dim=1).T


def batch_on_and_off_centres(head, dtype=torch.float32):
    """Rows exactly on their class centre (cos = 1), exactly opposite (cos = -1), and random."""
    with torch.no_grad():
        head.weight.zero_()
        centres = 0.5 * torch.eye(NUM_CLASSES)
        if head.weight.dim() == 3:  # sub-center ArcFace: every sub-centre of a class on the same point
            centres = centres.unsqueeze(1)
        head.weight[..., :NUM_CLASSES] = centres
    centre = head.weight.detach().reshape(head.weight.shape[0], -1, EMBEDDING_SIZE)[:, 0]
    labels = torch.tensor([0, 1, 2, 3, 4, 2], dtype=torch.int64)
    embeddings = torch.randn(6, EMBEDDING_SIZE, generator=torch.Generator().manual_seed(3)) * 4.0
    embeddings[0] = 32.0 * centre[0]  # on the centre: cos exactly 1
    embeddings[1] = -16.0 * centre[1]  # opposite: cos exactly -1
    embeddings[2] = 64.0 * centre[2]
    return embeddings.to(dtype).requires_grad_(True), labels


def test_registry_names_and_errors():
    assert set(MARGINS) == {
        "softmax", "arcface", "cosface", "sphereface", "combined", "curricularface", "adaface", "magface",
        "subcenter_arcface",
    }
    assert set(AUX_LOSSES) == {"center", "agent_center"}
    with pytest.raises(ValueError, match="'arcfce'.*adaface, arcface, combined, cosface, curricularface"):
        build_margin("arcfce", 8, 4)
    with pytest.raises(ValueError, match="margin_size.*valid: s, m, easy_margin"):
        build_margin("arcface", 8, 4, margin_size=0.5)
    with pytest.raises(ValueError, match="'centre'.*agent_center, center"):
        build_aux_loss("centre", 4, 8)
    with pytest.raises(ValueError, match="m must be an integer"):
        build_margin("sphereface", 8, 4, m=2.5)
    assert build_margin("combined", 8, 4, m1=1.0, m2=0.2, m3=0.35).m3 == 0.35


def test_label_and_embedding_validation():
    head = build_margin("arcface", EMBEDDING_SIZE, NUM_CLASSES)
    x = torch.randn(3, EMBEDDING_SIZE)
    with pytest.raises(TypeError, match="int64"):
        head(x, torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        head(x, torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"\[-1, 5\).*\[0, 5\]"):
        head(x, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        head(torch.randn(3, 7), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("name", sorted(MARGINS))
def test_forward_backward_finite_including_cos_plus_minus_one(name, autocast):
    torch.manual_seed(0)
    head = build_margin(name, EMBEDDING_SIZE, NUM_CLASSES)
    embeddings, labels = batch_on_and_off_centres(head)
    if name != "softmax":
        cos = head.cosine(embeddings.detach())
        assert cos[0, 0].item() == 1.0 and cos[1, 1].item() == -1.0 and cos[2, 2].item() == 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = head(embeddings, labels)
        loss = F.cross_entropy(logits, labels) + head.regularizer(embeddings)
    loss.backward()
    assert logits.shape == (6, NUM_CLASSES) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()
    assert head.weight.grad.abs().sum() > 0


def arcface_reference(theta, m):
    return math.cos(theta + m) if theta + m <= math.pi else math.cos(theta) - (1.0 - math.cos(m))


def combined_reference(theta, m1, m2, m3):
    limit = (math.pi - m2) / m1
    if theta <= limit:
        return math.cos(m1 * theta + m2) - m3
    return math.cos(theta) - math.cos(limit) - 1.0 - m3


def psi_reference(theta, m):
    k = min(math.floor(m * theta / math.pi), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def magface_reference(theta, norm, easy_margin, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8):
    margin = (u_m - l_m) / (u_a - l_a) * (min(max(norm, l_a), u_a) - l_a) + l_m
    if easy_margin:
        return math.cos(theta + margin) if math.cos(theta) > 0 else math.cos(theta)
    return arcface_reference(theta, margin)


def adaface_reference(theta, norm, m=0.4, h=0.333, mean=30.0, std=20.0, eps=1e-3):
    z = min(max((min(max(norm, eps), 100.0) - mean) / (std + eps) * h, -1.0), 1.0)
    theta = min(max(theta, math.acos(1 - eps)), math.acos(-1 + eps))
    return math.cos(min(max(theta - m * z, eps), math.pi - eps)) - (m * z + m)


ANGLES = [1e-4, 0.05, 0.7, math.pi / 2 - 0.01, math.pi / 2 + 0.01, 2.0, math.pi - 0.6, math.pi - 0.4,
          math.pi - 0.2, math.pi - 1e-4]
# Paired with ANGLES so that AdaFace's angle clip triggers at both ends (1e-4 with a large norm,
# pi - 1e-4 with a small one) and MagFace's continuation triggers for several norms.
NORMS = [150.0, 10.5, 25.0, 30.0, 47.0, 80.0, 5.0, 60.0, 100.0, 3.0]

# (name, hyperparameters, step, expected target logit from (theta, norm), non-target scale from norm)
FORMULA_CASES = [
    ("arcface", {"s": 64.0, "m": 0.5}, 0, lambda t, n: 64 * arcface_reference(t, 0.5), lambda n: 64.0),
    ("arcface", {"s": 64.0, "m": 0.5, "easy_margin": True}, 0,
     lambda t, n: 64 * (math.cos(t + 0.5) if math.cos(t) > 0 else math.cos(t)), lambda n: 64.0),
    ("cosface", {"s": 30.0, "m": 0.35}, 0, lambda t, n: 30 * (math.cos(t) - 0.35), lambda n: 30.0),
    ("combined", {"s": 32.0, "m1": 1.0, "m2": 0.2, "m3": 0.35}, 0,
     lambda t, n: 32 * combined_reference(t, 1.0, 0.2, 0.35), lambda n: 32.0),
    ("combined", {"s": 32.0, "m1": 1.3, "m2": 0.2, "m3": 0.15}, 0,
     lambda t, n: 32 * combined_reference(t, 1.3, 0.2, 0.15), lambda n: 32.0),
    ("sphereface", {"m": 4}, 50,
     lambda t, n: n * ((1000 / 7) * math.cos(t) + psi_reference(t, 4)) / (1 + 1000 / 7), lambda n: n),
    ("sphereface", {"m": 3, "lambda_min": 0.0}, 10**6,
     lambda t, n: n * ((1000 / 120001) * math.cos(t) + psi_reference(t, 3)) / (1 + 1000 / 120001), lambda n: n),
    ("magface", {}, 0, lambda t, n: 64 * magface_reference(t, n, True), lambda n: 64.0),
    ("magface", {"easy_margin": False}, 0, lambda t, n: 64 * magface_reference(t, n, False), lambda n: 64.0),
    ("adaface", {}, 0, lambda t, n: 64 * adaface_reference(t, n), lambda n: 64.0),
]


@pytest.mark.parametrize("name, hyper, step, target_fn, scale_fn", FORMULA_CASES)
def test_margin_changes_only_target_and_matches_formula(name, hyper, step, target_fn, scale_fn):
    torch.manual_seed(1)
    head = build_margin(name, EMBEDDING_SIZE, NUM_CLASSES, **hyper).double().eval()
    head.set_step(step)
    if name == "adaface":
        head.norm_mean.fill_(30.0)
        head.norm_std.fill_(20.0)
    labels = torch.arange(len(ANGLES), dtype=torch.int64) % NUM_CLASSES
    embeddings = embeddings_at_angles(head.weight.detach(), labels, ANGLES, NORMS)
    with torch.no_grad():
        logits = head(embeddings, labels)
    expected = reference_cosine(embeddings, head.weight) * torch.tensor([scale_fn(n) for n in NORMS]).unsqueeze(1)
    for row, (theta, norm) in enumerate(zip(ANGLES, NORMS)):
        expected[row, labels[row]] = target_fn(theta, norm)
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-7)


def test_curricularface_hard_negative_rule_and_t_update():
    torch.manual_seed(2)
    head = build_margin("curricularface", EMBEDDING_SIZE, NUM_CLASSES).double()
    angles = torch.linspace(0.05, math.pi - 0.05, 60).tolist()
    labels = torch.arange(len(angles)) % NUM_CLASSES
    embeddings = embeddings_at_angles(head.weight.detach(), labels, angles, [3.0] * len(angles))
    cos = reference_cosine(embeddings, head.weight)
    head.t.fill_(0.25)
    head.train()
    with torch.no_grad():
        logits = head(embeddings, labels)
    t = 0.01 * sum(math.cos(a) for a in angles) / len(angles) + 0.99 * 0.25
    assert head.t.item() == pytest.approx(t, abs=1e-12)
    expected, gaps = 64 * cos.clone(), []
    for row, theta in enumerate(angles):
        margined = arcface_reference(theta, 0.5)
        for column in range(NUM_CLASSES):
            if column == labels[row]:
                expected[row, column] = 64 * margined
                continue
            gaps.append(cos[row, column].item() - margined)
            if gaps[-1] > 0:
                expected[row, column] = 64 * cos[row, column] * (t + cos[row, column])
    # Hard and easy negatives, some within 0.05 of the threshold on either side.
    assert any(0 < gap < 0.05 for gap in gaps) and any(-0.05 < gap < 0 for gap in gaps)
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-7)
    head.eval()
    head(embeddings, labels)
    assert head.t.item() == pytest.approx(t, abs=1e-12)


def test_zero_margin_is_normalised_softmax_and_combined_default_is_arcface():
    torch.manual_seed(4)
    x, labels = torch.randn(7, EMBEDDING_SIZE), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    arcface = build_margin("arcface", EMBEDDING_SIZE, NUM_CLASSES, s=64.0, m=0.0)
    plain = 64.0 * arcface.cosine(x)
    torch.testing.assert_close(arcface(x, labels), plain, rtol=0, atol=1e-4)
    cosface = build_margin("cosface", EMBEDDING_SIZE, NUM_CLASSES, s=64.0, m=0.0)
    cosface.load_state_dict(arcface.state_dict())
    torch.testing.assert_close(cosface(x, labels), plain, rtol=0, atol=0)
    combined = build_margin("combined", EMBEDDING_SIZE, NUM_CLASSES, m1=1.0, m2=0.5, m3=0.0)
    arcface = build_margin("arcface", EMBEDDING_SIZE, NUM_CLASSES)
    combined.load_state_dict(arcface.state_dict())
    assert torch.equal(combined(x, labels), arcface(x, labels))


THETA_GRID = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)


def assert_decreasing_and_continuous(values, lipschitz):
    steps = values[1:] - values[:-1]
    assert (steps <= 1e-12).all(), f"increases by {steps.max().item()}"
    spacing = (THETA_GRID[1] - THETA_GRID[0]).item()
    assert steps.abs().max().item() <= lipschitz * spacing * (1 + 1e-6) + 1e-12


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_sphereface_psi_monotone_and_continuous(m):
    psi = sphereface_psi(torch.cos(THETA_GRID), m)
    assert_decreasing_and_continuous(psi, lipschitz=m)
    assert psi[0].item() == pytest.approx(1.0) and psi[-1].item() == pytest.approx(1.0 - 2 * m)


@pytest.mark.parametrize(
    "m1, m2, m3", [(1.0, 0.5, 0.0), (1.0, 0.2, 0.35), (1.0, 1.2, 0.0), (1.4, 0.3, 0.1), (0.9, 0.5, 0.0)]
)
def test_angular_margin_continuation_monotone_and_continuous(m1, m2, m3):
    # insightface's classic fallback cos(theta) - m*sin(m) jumps at theta = pi - m and fails this.
    values = angular_margin_target(torch.cos(THETA_GRID), m1, m2, m3)
    assert_decreasing_and_continuous(values, lipschitz=max(m1, 1.0))
    assert values[-1].item() == pytest.approx(combined_reference(math.pi, m1, m2, m3), abs=1e-12)


def gradcheck_head(name, hyper, norm_range, prepare=None):
    torch.manual_seed(5)
    head = build_margin(name, 4, 6, **hyper).double().eval()
    if prepare is not None:
        prepare(head)
    labels = torch.tensor([0, 3, 5])
    direction = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    x = (direction * torch.empty(3, 1, dtype=torch.float64).uniform_(*norm_range)).requires_grad_(True)
    weight = torch.randn(head.weight.shape, dtype=torch.float64, requires_grad=True)
    return torch.autograd.gradcheck(lambda e, w: functional_call(head, {"weight": w}, (e, labels)), (x, weight))


GRADCHECK_CASES = {
    "softmax": ({"bias": False}, (1.0, 3.0), None),
    "arcface": ({}, (1.0, 3.0), None),
    "cosface": ({}, (1.0, 3.0), None),
    "combined": ({"m1": 1.2, "m2": 0.3, "m3": 0.2}, (1.0, 3.0), None),
    "sphereface": ({"m": 4}, (1.0, 3.0), lambda head: head.set_step(200)),
    "curricularface": ({}, (1.0, 3.0), lambda head: head.t.fill_(0.3)),
    "magface": ({"easy_margin": False}, (20.0, 90.0), None),
    # The norm enters AdaFace's margin detached (the paper's design); with z_hat saturated at 1 the
    # margin is locally constant, so finite differences agree with autograd.
    "adaface": ({}, (5.0, 8.0), lambda head: (head.norm_mean.fill_(0.0), head.norm_std.fill_(1.0))),
    "subcenter_arcface": ({"k": 3}, (1.0, 3.0), None),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_gradcheck_embeddings_and_weights(name):
    assert set(GRADCHECK_CASES) == set(MARGINS)
    assert gradcheck_head(name, *GRADCHECK_CASES[name])


def test_adaface_gradcheck_weights_with_unsaturated_norm_scaler():
    torch.manual_seed(6)
    head = build_margin("adaface", 4, 6).double().eval()
    head.norm_mean.fill_(2.0)
    head.norm_std.fill_(1.0)
    x = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([1, 2, 4])
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: functional_call(head, {"weight": w}, (x, labels)), (weight,))


@pytest.mark.parametrize("name", sorted(HEADS_WITH_NORM_INPUT | {"arcface", "cosface", "combined", "curricularface"}))
def test_minus_one_label_rows_unmargined_and_sharding_matches_full(name):
    torch.manual_seed(7)
    head = build_margin(name, EMBEDDING_SIZE, 10).double().eval()
    x = torch.randn(6, EMBEDDING_SIZE, dtype=torch.float64) * 20
    labels = torch.tensor([0, 4, 5, 9, 2, 7])
    cos, norms = head.cosine(x), x.norm(dim=1)
    full = head.margin_logits(cos, labels, norms)
    plain = head.margin_logits(cos, torch.full_like(labels, -1), norms)
    scale = norms.unsqueeze(1) if name == "sphereface" else head.s
    torch.testing.assert_close(plain, scale * cos, rtol=0, atol=0)
    partial = head.margin_logits(cos, torch.where(labels < 5, labels, -1), norms)
    assert torch.equal(partial[labels < 5], full[labels < 5])
    assert torch.equal(partial[labels >= 5], plain[labels >= 5])
    # Two shards of 5 columns each, labels re-mapped to local columns.
    shards = []
    for start in (0, 5):
        local = torch.where((labels >= start) & (labels < start + 5), labels - start, -1)
        extra = {"target_cos": cos.gather(1, labels.unsqueeze(1)).squeeze(1)} if name == "curricularface" else {}
        shards.append(head.margin_logits(cos[:, start:start + 5], local, norms, **extra))
    torch.testing.assert_close(torch.cat(shards, dim=1), full, rtol=0, atol=1e-12)


def test_sphereface_lambda_schedule_both_parameter_sets():
    head = build_margin("sphereface", EMBEDDING_SIZE, NUM_CLASSES)
    assert head.lambda_ == 1000.0
    for step, expected in [(1, 1000 / 1.12), (100, 1000 / 13), (1000, 1000 / 121), (10000, 5.0)]:
        head.set_step(step)
        assert head.lambda_ == pytest.approx(expected, rel=1e-12)
    old = build_margin("sphereface", EMBEDDING_SIZE, NUM_CLASSES, gamma=1e-4, power=2)
    for step, expected in [(0, 1000.0), (10000, 1000 / 4), (100000, 1000 / 121), (10**6, 5.0)]:
        old.set_step(step)
        assert old.lambda_ == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("schedule_start", [0, 10**6], ids=["annealed", "lambda-min"])
def test_sphereface_trains_tiny_separable_problem(num_classes, schedule_start):
    torch.manual_seed(8)
    cluster_centres = torch.randn(num_classes, 6) * 3
    labels = torch.arange(64) % num_classes
    inputs = cluster_centres[labels] + 0.3 * torch.randn(64, 6)
    network = torch.nn.Linear(6, 3)
    head = build_margin("sphereface", 3, num_classes)
    optimizer = torch.optim.SGD([*network.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for step in range(40):
        head.set_step(schedule_start + step)
        loss = F.cross_entropy(head(network(inputs), labels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_magface_regularizer_matches_formula_and_has_gradient():
    head = build_margin("magface", EMBEDDING_SIZE, NUM_CLASSES, lambda_g=35.0)
    norms = [4.0, 10.0, 42.0, 109.0, 250.0]
    x = (F.normalize(torch.randn(5, EMBEDDING_SIZE), dim=1) * torch.tensor(norms).unsqueeze(1)).requires_grad_(True)
    clamped = [min(max(n, 10.0), 110.0) for n in norms]
    expected = 35.0 * sum(1 / a + a / 110.0**2 for a in clamped) / len(norms)
    value = head.regularizer(x)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    # d/da (1/a + a/u_a^2) at a = 42 (inside the clamp range), spread over the batch mean.
    slope = 35.0 / 5 * (-1 / 42.0**2 + 1 / 110.0**2)
    assert x.grad[2].norm().item() == pytest.approx(abs(slope), rel=1e-4)
    assert x.grad[0].abs().max().item() == 0.0 and x.grad[4].abs().max().item() == 0.0
    assert build_margin("arcface", EMBEDDING_SIZE, NUM_CLASSES).regularizer(x).item() == 0.0


def test_adaface_statistics_update_only_in_training():
    head = build_margin("adaface", EMBEDDING_SIZE, NUM_CLASSES)
    norms = torch.tensor([10.0, 20.0, 30.0, 200.0])
    x = F.normalize(torch.randn(4, EMBEDDING_SIZE), dim=1) * norms.unsqueeze(1)
    labels = torch.tensor([0, 1, 2, 3])
    head(x, labels)
    clipped = norms.clamp(max=100.0)
    assert head.norm_mean.item() == pytest.approx(0.99 * 20 + 0.01 * clipped.mean().item(), rel=1e-6)
    assert head.norm_std.item() == pytest.approx(0.99 * 100 + 0.01 * clipped.std().item(), rel=1e-6)
    before = head.norm_mean.clone(), head.norm_std.clone()
    head.eval()
    head(x, labels)
    assert torch.equal(head.norm_mean, before[0]) and torch.equal(head.norm_std, before[1])


def test_center_losses_match_definitions():
    torch.manual_seed(9)
    x, labels = torch.randn(6, EMBEDDING_SIZE, requires_grad=True), torch.tensor([0, 1, 1, 3, 4, 0])
    center = AUX_LOSSES["center"](NUM_CLASSES, EMBEDDING_SIZE)
    expected = 0.5 * ((x - center.centers[labels]) ** 2).sum(dim=1).mean()
    value = center(x, labels)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert center.centers.grad[2].abs().max() == 0 and center.centers.grad[0].abs().max() > 0
    agent = build_aux_loss("agent_center", NUM_CLASSES, EMBEDDING_SIZE, scale=2.0)
    cos = torch.stack([F.cosine_similarity(x[i], agent.centers[labels[i]], dim=0) for i in range(6)])
    torch.testing.assert_close(agent(x, labels), 2.0 * (1 - cos).mean())
    on_agents = 3.0 * agent.centers.detach()[labels]
    assert agent(on_agents, labels).abs().item() < 1e-6
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        center(x, torch.tensor([0, 1, -1, 3, 4, 0]))
