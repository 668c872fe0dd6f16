"""OHEM and Dice+CE on hand-made cases: values and gradients worked out by hand, no Ray."""
from __future__ import annotations

import math

import pytest
import torch

from roadseg_dist.labels import IGNORE_INDEX
from roadseg_dist.train import losses


def logits_for(probs_true: list[float], num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """One image, one row of pixels, all of class 0, whose softmax gives class 0 the probability asked."""
    rows = []
    for p in probs_true:
        rest = (1 - p) / (num_classes - 1)
        rows.append([math.log(p)] + [math.log(rest)] * (num_classes - 1))
    logits = torch.tensor(rows, dtype=torch.float64).T.reshape(1, num_classes, 1, len(probs_true))
    return logits.requires_grad_(True), torch.zeros(1, 1, len(probs_true), dtype=torch.long)


def test_ohem_keeps_only_pixels_below_the_threshold_and_averages_their_ce():
    logits, target = logits_for([0.9, 0.5, 0.2, 0.95])
    loss_sum, norm = losses.ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1)
    assert norm.item() == 2  # 0.5 and 0.2 are hard; 0.9 and 0.95 are learnt
    assert loss_sum.item() == pytest.approx(-math.log(0.5) - math.log(0.2))
    loss_sum.backward()
    grad = logits.grad[0, 0, 0]
    # easy pixels get no gradient; hard ones d(-log p)/dz_true = p - 1
    assert grad[0].item() == 0 and grad[3].item() == 0
    assert grad[1].item() == pytest.approx(0.5 - 1) and grad[2].item() == pytest.approx(0.2 - 1)


def test_ohem_min_kept_keeps_the_hardest_pixels_when_few_are_below_the_threshold():
    logits, target = logits_for([0.9, 0.8, 0.99, 0.85])
    loss_sum, norm = losses.ohem_cross_entropy(logits, target, thresh=0.7, min_kept=2)
    assert norm.item() == 2  # none below 0.7: the two hardest, 0.8 and 0.85
    assert loss_sum.item() == pytest.approx(-math.log(0.8) - math.log(0.85))


def test_ohem_ignores_255_and_an_all_ignored_batch_gives_zero():
    logits, target = logits_for([0.1, 0.5, 0.2])
    target[0, 0, 0] = IGNORE_INDEX
    loss_sum, norm = losses.ohem_cross_entropy(logits, target, thresh=0.7, min_kept=0)
    assert norm.item() == 2
    assert loss_sum.item() == pytest.approx(-math.log(0.5) - math.log(0.2))
    target[:] = IGNORE_INDEX
    loss_sum, norm = losses.ohem_cross_entropy(logits, target, thresh=0.7, min_kept=5)
    assert loss_sum.item() == 0 and norm.item() == 0


def test_ohem_with_class_weights_normalises_by_the_kept_weights():
    logits, target = logits_for([0.5, 0.2, 0.9])
    target[0, 0, 1] = 1  # p(class 1) there = 0.4
    weight = torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64)
    loss_sum, norm = losses.ohem_cross_entropy(logits, target, weight, thresh=0.7, min_kept=0)
    assert norm.item() == pytest.approx(2.0 + 3.0)
    assert loss_sum.item() == pytest.approx(-2 * math.log(0.5) - 3 * math.log(0.4))


def test_dice_is_zero_for_a_perfect_prediction_and_matches_the_hand_value():
    target = torch.tensor([[[0, 0, 1, 1]]])
    sure = torch.full((1, 2, 1, 4), -30.0, dtype=torch.float64)
    sure[0, 0, 0, :2] = 30.0
    sure[0, 1, 0, 2:] = 30.0
    assert losses.dice_loss(sure, target, smooth=0.0).item() == pytest.approx(0.0, abs=1e-9)
    # a uniform prediction: p = 1/2 everywhere; per class 2*(2*0.5) / (2 + 2) = 0.5
    uniform = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    assert losses.dice_loss(uniform, target, smooth=0.0).item() == pytest.approx(0.5)
    # classes absent from the target do not enter the mean; ignored pixels do not count
    three = torch.zeros(1, 3, 1, 4, dtype=torch.float64)
    target_ign = torch.tensor([[[0, 0, IGNORE_INDEX, IGNORE_INDEX]]])
    # class 0 only: p = 1/3 on the two labelled pixels: 2*(2/3) / (2/3 + 2) = 0.5
    assert losses.dice_loss(three, target_ign, smooth=0.0).item() == pytest.approx(0.5)


def test_dice_gradient_matches_finite_differences_and_pushes_towards_the_truth():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 3), generator=g)
    target[0, 0] = IGNORE_INDEX
    assert torch.autograd.gradcheck(lambda z: losses.dice_loss(z, target), (logits,))
    losses.dice_loss(logits, target).backward()
    true_grad = logits.grad.gather(1, target.clamp_max(3).unsqueeze(1)).squeeze(1)
    labelled = target != IGNORE_INDEX
    assert (true_grad[labelled] < 0).all()  # raising the true class's logit lowers the loss
    assert (logits.grad[0, :, 0] == 0).all()  # ignored pixels get no gradient


def test_dice_ce_is_ce_mean_plus_weighted_dice_and_splits_like_ce():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 19, 5, 6, generator=g)
    target = torch.randint(0, 19, (2, 5, 6), generator=g)
    target[1, :3] = IGNORE_INDEX
    loss_sum, norm = losses.dice_cross_entropy(logits, target, dice_weight=0.5)
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    assert (loss_sum / norm).item() == pytest.approx((ce + 0.5 * losses.dice_loss(logits, target)).item(),
                                                     rel=1e-5)
    assert norm.item() == (target != IGNORE_INDEX).sum().item()


def test_build_criterion_names_and_error():
    assert losses.build_criterion("ce") is losses.cross_entropy
    assert losses.build_criterion("ohem", ohem_thresh=0.5).keywords == {"thresh": 0.5, "min_kept": 10000}
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        losses.build_criterion("focal")
