"""The contrastive losses against values computed by hand, pair by pair."""

import math

import pytest
import torch

from noiseclr_lite.loss import (center_edit_features, denoising_gain_loss, get_loss, infonce_loss, noiseclr_loss,
                               push_strength_loss, shared_edit_share)


def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def _by_hand_noiseclr(features, tau, anchor, sign_blind=False):
    n, k = features.shape[:2]
    f = features.flatten(2)
    negative = abs if sign_blind else (lambda c: c)
    pos = [math.exp(_cos(f[i, anchor], f[j, anchor]) / tau) for i in range(n) for j in range(n) if i != j]
    neg = [math.exp(negative(_cos(f[i, anchor], f[i, l])) / tau) for i in range(n) for l in range(k) if l != anchor]
    return -math.log((sum(pos) / len(pos)) / (sum(neg) / len(neg)))


def _by_hand_infonce(features, tau, anchor, sign_blind=False):
    n, k = features.shape[:2]
    f = features.flatten(2)
    negative = abs if sign_blind else (lambda c: c)
    terms = []
    for i in range(n):
        negs = sum(math.exp(negative(_cos(f[i, anchor], f[i, l])) / tau) for l in range(k) if l != anchor)
        for j in range(n):
            if i != j:
                p = math.exp(_cos(f[i, anchor], f[j, anchor]) / tau)
                terms.append(-math.log(p / (p + negs)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_noiseclr_loss_matches_hand_computation(tau):
    features = torch.randn(3, 4, 2, 5, generator=torch.Generator().manual_seed(0))
    for anchor in range(4):
        assert noiseclr_loss(features, tau, anchor).item() == pytest.approx(_by_hand_noiseclr(features, tau, anchor), rel=1e-5)
    mean_over_anchors = sum(_by_hand_noiseclr(features, tau, a) for a in range(4)) / 4
    assert noiseclr_loss(features, tau).item() == pytest.approx(mean_over_anchors, rel=1e-5)


@pytest.mark.parametrize("tau", [0.5, 0.2])
def test_infonce_loss_matches_hand_computation(tau):
    features = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(1))
    for anchor in range(3):
        assert infonce_loss(features, tau, anchor).item() == pytest.approx(_by_hand_infonce(features, tau, anchor), rel=1e-5)
    mean_over_anchors = sum(_by_hand_infonce(features, tau, a) for a in range(3)) / 3
    assert infonce_loss(features, tau).item() == pytest.approx(mean_over_anchors, rel=1e-5)


@pytest.mark.parametrize("loss, by_hand", [(noiseclr_loss, _by_hand_noiseclr), (infonce_loss, _by_hand_infonce)])
def test_sign_blind_negatives_match_hand_computation(loss, by_hand):
    features = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(2))
    for anchor in range(4):
        blind = loss(features, 0.5, anchor, sign_blind=True).item()
        assert blind == pytest.approx(by_hand(features, 0.5, anchor, sign_blind=True), rel=1e-5)
        assert blind != pytest.approx(by_hand(features, 0.5, anchor), rel=1e-3)  # these negatives include cos < 0


def test_sign_blind_negatives_prefer_unrelated_directions_to_opposite_ones():
    # two directions on 3 images: "opposite" = the two ends of one attribute, "unrelated" = orthogonal edits
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).repeat(3, 1, 1)   # [N=3, K=2, F=2]
    unrelated = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(3, 1, 1)
    tau = 0.5
    # the official loss rewards the pair that is one slider twice: its minimum, -2/tau
    assert noiseclr_loss(opposite, tau).item() == pytest.approx(-2 / tau, abs=1e-6)
    assert noiseclr_loss(opposite, tau) < noiseclr_loss(unrelated, tau)
    # sign-blind, opposite edits are as bad as identical ones (loss 0), orthogonal ones reach -1/tau
    assert noiseclr_loss(opposite, tau, sign_blind=True).item() == pytest.approx(0.0, abs=1e-6)
    assert noiseclr_loss(unrelated, tau, sign_blind=True).item() == pytest.approx(-1 / tau, abs=1e-6)
    assert infonce_loss(unrelated, tau, sign_blind=True) < infonce_loss(opposite, tau, sign_blind=True)


def test_ideal_features_reach_the_minimum_and_collapsed_features_do_not():
    # direction k does the same thing to every image, and directions are orthogonal
    basis = torch.eye(4)
    ideal = basis.unsqueeze(0).repeat(5, 1, 1)                # [N=5, K=4, F=4]
    collapsed = torch.ones(5, 4, 4)                           # every direction identical
    tau = 0.5
    # positives all cos=1, negatives all cos=0: L = -(1/tau) + 0
    assert noiseclr_loss(ideal, tau).item() == pytest.approx(-1 / tau, abs=1e-6)
    assert noiseclr_loss(collapsed, tau).item() == pytest.approx(0.0, abs=1e-6)
    assert infonce_loss(ideal, tau) < infonce_loss(collapsed, tau)


def test_gradient_pulls_positives_together():
    features = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    optimizer = torch.optim.SGD([features], lr=0.5)
    start = noiseclr_loss(features).item()
    for _ in range(50):
        optimizer.zero_grad()
        noiseclr_loss(features).backward()
        optimizer.step()
    assert noiseclr_loss(features).item() < start - 0.5


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(ValueError, match="N=1"):
        noiseclr_loss(torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="anchor 5"):
        noiseclr_loss(torch.randn(2, 3, 4), anchor=5)
    with pytest.raises(ValueError, match="infonce"):
        get_loss("simclr")
    assert get_loss("infonce") is infonce_loss


def test_similarity_matrix_is_direction_major_cosine():
    from noiseclr_lite.loss import similarity_matrix

    features = torch.randn(3, 2, 4, 2, 2)                      # N=3 images, K=2 directions
    sim = similarity_matrix(features)
    assert sim.shape == (6, 6)
    flat = torch.nn.functional.normalize(features.flatten(2), dim=-1)
    # row k * N + i is direction k on image i
    assert torch.allclose(sim[1 * 3 + 2, 0 * 3 + 1], (flat[2, 1] * flat[1, 0]).sum(), atol=1e-6)
    assert torch.allclose(sim.diagonal(), torch.ones(6), atol=1e-6)
    with pytest.raises(ValueError, match="N images, K directions"):
        similarity_matrix(torch.randn(3, 4))


def test_push_strength_loss_is_minus_the_mean_log_norm_and_blind_to_direction():
    # 2 images x 2 directions, features [2, 2, 2, 2]: norms 1, 2, 4, 8
    features = torch.zeros(2, 2, 2, 2)
    for (i, k), norm in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [1.0, 2.0, 4.0, 8.0]):
        features[i, k, 0, 0] = norm
    expected = -(math.log(1) + math.log(2) + math.log(4) + math.log(8)) / 4
    assert push_strength_loss(features).item() == pytest.approx(expected)
    # scale-free: every push twice as strong lowers it by log 2, whatever the sizes
    assert push_strength_loss(2 * features).item() == pytest.approx(expected - math.log(2))
    # it does not care where a push points, only how hard (the contrastive losses see the opposite)
    rotated = features.flip(-1)
    assert push_strength_loss(rotated).item() == pytest.approx(expected)
    assert noiseclr_loss(features).item() == pytest.approx(noiseclr_loss(3 * features).item(), abs=1e-6)
    # its gradient makes every feature longer
    grown = features.clone().requires_grad_(True)
    push_strength_loss(grown).backward()
    assert ((grown.grad * features).flatten(2).sum(-1) < 0).all()
    assert math.isfinite(push_strength_loss(torch.zeros(2, 2, 3)).item())   # zero features: finite
    with pytest.raises(ValueError, match="N images, K directions"):
        push_strength_loss(torch.zeros(4, 3))


def test_edit_consistency_is_the_mean_cosine_of_a_direction_across_images():
    from noiseclr_lite.loss import edit_consistency

    edit = torch.randn(4, 2, 2)
    other = torch.randn(4, 2, 2)
    features = torch.stack([
        torch.stack([edit, edit, other]),            # image 0: directions 0, 1, 2
        torch.stack([3 * edit, -edit, -other]),      # image 1: the same edit, bigger; its opposite; opposite
    ])                                               # [N=2, K=3, 4, 2, 2]
    assert torch.allclose(edit_consistency(features), torch.tensor([1.0, -1.0, -1.0]), atol=1e-6)
    # three images: the mean over the six ordered pairs i != j, by hand
    features = torch.randn(3, 2, 5)
    by_hand = [sum(_cos(features[i, k], features[j, k]) for i in range(3) for j in range(3) if i != j) / 6
               for k in range(2)]
    assert torch.allclose(edit_consistency(features), torch.tensor(by_hand), atol=1e-6)
    # it is the positives' cosine: the NoiseCLR loss is lower for a set whose consistency is higher
    consistent = torch.stack([torch.eye(2), torch.eye(2)])             # the same edit on both images
    scattered = torch.stack([torch.eye(2), torch.eye(2).flip(0)])      # each direction swaps edits
    assert edit_consistency(consistent).min() > edit_consistency(scattered).max()
    assert noiseclr_loss(consistent) < noiseclr_loss(scattered)
    with pytest.raises(ValueError, match="needs >= 2 images; got N=1"):
        edit_consistency(torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="N images, K directions"):
        edit_consistency(torch.randn(3, 4))


def test_center_edit_features_subtracts_each_images_mean_over_directions():
    # one image, three directions, two numbers each: the mean is (2, 1)
    features = torch.tensor([[[1.0, 0.0], [3.0, 3.0], [2.0, 0.0]]])
    centred = center_edit_features(features)
    assert torch.equal(centred, torch.tensor([[[-1.0, -1.0], [1.0, 2.0], [0.0, -1.0]]]))
    many = torch.randn(4, 5, 2, 3, 3, generator=torch.Generator().manual_seed(3))
    assert center_edit_features(many).shape == many.shape
    assert torch.allclose(center_edit_features(many).sum(dim=1), torch.zeros(4, 2, 3, 3), atol=1e-5)
    with pytest.raises(ValueError, match="K=1"):
        center_edit_features(torch.randn(3, 1, 4))
    with pytest.raises(ValueError, match=r"\[N images, K directions"):
        center_edit_features(torch.randn(3, 4))


@pytest.mark.parametrize("loss", [noiseclr_loss, infonce_loss])
def test_centred_losses_do_not_see_what_every_direction_does_to_an_image(loss):
    # what is specific to each direction, plus an edit every direction makes (other on every image):
    # raw, the shared part lifts every negative cosine and the loss rises; centred, it is invisible
    generator = torch.Generator().manual_seed(4)
    specific = torch.randn(3, 4, 8, generator=generator)
    shared = 3 * torch.randn(3, 1, 8, generator=generator)
    assert loss(specific + shared, 0.5).item() > loss(specific, 0.5).item() + 0.1
    assert loss(center_edit_features(specific + shared), 0.5).item() == pytest.approx(
        loss(center_edit_features(specific), 0.5).item(), abs=1e-5)


def test_shared_edit_share_is_one_for_equal_edits_one_over_k_for_unrelated_and_zero_when_they_cancel():
    def share(*rows):  # one image, one direction per row
        return shared_edit_share(torch.tensor([rows], dtype=torch.float32)).item()

    assert share([1.0, 2.0], [1.0, 2.0], [1.0, 2.0]) == pytest.approx(1.0)
    assert share([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]) == pytest.approx(1 / 3)
    assert share([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(0.0)
    assert share([0.0, 0.0], [0.0, 0.0]) == 0.0                       # no edit shares nothing
    # (3, 1) and (1, -1): mean (2, 0), energy 4; mean energy (10 + 2) / 2 = 6
    assert share([3.0, 1.0], [1.0, -1.0]) == pytest.approx(4 / 6)
    # the mean over images, and nothing is left once the edits are centred
    two_images = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [-1.0, 0.0]]])
    assert shared_edit_share(two_images).item() == pytest.approx(0.5)
    assert shared_edit_share(center_edit_features(torch.randn(3, 4, 5))).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[N images, K directions"):
        shared_edit_share(torch.randn(3, 4))


def test_cross_set_cosines_compare_two_sets_direction_by_direction_on_the_same_images():
    from noiseclr_lite.loss import cross_set_cosines

    # one image; set A: x and y edits; set B: -x, (x + y) / sqrt 2 and z
    a = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    b = torch.tensor([[[-3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]]])
    expected = torch.tensor([[-1.0, 0.5 ** 0.5, 0.0], [0.0, 0.5 ** 0.5, 0.0]])
    torch.testing.assert_close(cross_set_cosines(a, b), expected)
    torch.testing.assert_close(cross_set_cosines(b, a), expected.T)
    # the mean over images: the second image's pair is orthogonal
    two = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    other = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])
    assert cross_set_cosines(two, other).item() == pytest.approx(0.5)
    # any trailing shape, flattened; a set against itself has ones on its diagonal
    features = torch.randn(4, 3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    self_cosines = cross_set_cosines(features, features)
    assert self_cosines.shape == (3, 3) and torch.allclose(self_cosines.diagonal(), torch.ones(3))
    with pytest.raises(ValueError, match=r"same images.*\(4, 3, 2, 5, 5\) and \(3, 3, 2, 5, 5\)"):
        cross_set_cosines(features, features[:3])
    with pytest.raises(ValueError, match="one trailing shape"):
        cross_set_cosines(features, features.flatten(2))


def test_two_sided_gain_on_every_image_prefers_a_pure_attribute_to_a_mixture():
    # Four images whose residuals are +-a +-b, every combination: two balanced attributes along
    # orthonormal a and b.  A pure edit (a) and a mixture (a + b), each at its best push.
    a, b = torch.eye(2)
    residual = torch.stack([sa * a + sb * b for sa in (1, -1) for sb in (1, -1)])       # [4, 2]
    pure = torch.stack([a] * 4).unsqueeze(1)                                          # [4, 1, 2]: gain 1/2 each way
    mixture = torch.stack([(a + b) / 2] * 4).unsqueeze(1)                             # the mixture's best push
    full_mixture = torch.stack([a + b] * 4).unsqueeze(1)                              # explains its quarter fully

    def gain(edits, share, two_sided):
        return -denoising_gain_loss(edits, residual, share, two_sided).item()

    # two-sided on every image: the pure edit gains 1/2 everywhere, the best mixture 1/4 on average
    assert gain(pure, 1.0, True) == pytest.approx(0.5)
    assert gain(mixture, 1.0, True) == pytest.approx(0.25) and gain(full_mixture, 1.0, True) == pytest.approx(0.0)
    # one-sided at a quarter (the default) the full mixture wins: it explains its one image completely
    assert gain(full_mixture, 0.25, False) == pytest.approx(1.0)
    assert gain(pure, 0.25, False) == pytest.approx(0.5)
    # and two-sided at a half it wins too (its two images, one each way), so the share matters
    assert gain(full_mixture, 0.5, True) == pytest.approx(1.0) and gain(pure, 0.5, True) == pytest.approx(0.5)
    # one-sided at a half the pure edit wins again: the images it explains are its half
    assert gain(pure, 0.5, False) == pytest.approx(0.5) and gain(mixture, 0.5, False) == pytest.approx(0.25)
    assert gain(full_mixture, 0.5, False) == pytest.approx(0.0)
    # at every push of the equal mixture c(a + b), not just those two: two-sided on three quarters or all
    # of the images, and one-sided on half, none reaches the pure edit's 1/2 (the best, at three quarters, 4/9)
    for push in torch.linspace(0.05, 2.0, 40):
        scaled = push * full_mixture
        assert max(gain(scaled, 0.75, True), gain(scaled, 1.0, True), gain(scaled, 0.5, False)) < 0.5 - 0.05


def test_denoising_gain_loss_scores_each_direction_on_the_images_it_explains_best():
    # 4 images, residuals r_i; features [4, 3, 2, 3]
    residual = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))
    features = torch.zeros(4, 3, 2, 3)
    features[0, 0] = residual[0]              # direction 0 explains image 0 completely: gain 1 there, 0 elsewhere
    features[:, 1] = residual[1]              # direction 1 pushes image 1's residual onto every image
    # direction 2 does nothing: no gain on any image
    by_hand = torch.zeros(4, 3)
    for i in range(4):
        for k in range(3):
            r, d = residual[i].flatten(), features[i, k].flatten()
            by_hand[i, k] = (r.pow(2).sum() - (r - d).pow(2).sum()) / r.pow(2).sum()
    assert by_hand[0, 0] == pytest.approx(1.0) and by_hand[1, 1] == pytest.approx(1.0)
    for share, top in ((0.25, 1), (0.5, 2), (1.0, 4), (0.01, 1)):   # ceil(share * N) images, at least one
        expected = -by_hand.topk(top, dim=0).values.mean()
        assert denoising_gain_loss(features, residual, share).item() == pytest.approx(expected.item(), rel=1e-5)
    # no edit gains nothing; the same edit on every image (direction 1) still gains where it points
    # along an image's residual: all of image 1's error, and it loses on the others
    assert denoising_gain_loss(features[:, 2:], residual, 0.25).item() == pytest.approx(0.0)
    assert denoising_gain_loss(features[:, 1:2], residual, 0.25).item() == pytest.approx(-1.0)
    assert denoising_gain_loss(features[:, 1:2], residual, 1.0).item() == pytest.approx(-by_hand[:, 1].mean().item())
    assert (by_hand[[0, 2, 3], 1] < 1).all()
    assert denoising_gain_loss(features[:, :1], residual, 0.25).item() == pytest.approx(-1.0)
    # at most 1 per image: bounded below by -1; pushing too hard loses
    assert denoising_gain_loss(3 * features[:, :1], residual, 1.0).item() == pytest.approx(3 / 4)   # 2*3 - 9 = -3
    # its gradient pulls an edit towards the residual of the images it explains
    pulled = torch.zeros(4, 1, 2, 3, requires_grad=True)
    denoising_gain_loss(pulled, residual, 0.25).backward()
    assert (pulled.grad.flatten(1) * residual.flatten(1)).sum() < 0
    with pytest.raises(ValueError, match="top_share=0"):
        denoising_gain_loss(features, residual, 0.0)
    # two-sided by hand: each image scored by +D or -D, whichever explains it better
    flipped = torch.where(torch.arange(4).view(4, 1, 1, 1) % 2 == 0, features, -features)
    two_by_hand = torch.zeros(4, 3)
    for i in range(4):
        for k in range(3):
            r, d = residual[i].flatten(), flipped[i, k].flatten()
            two_by_hand[i, k] = (2 * (r @ d).abs() - d.pow(2).sum()) / r.pow(2).sum()
    for share, top in ((0.25, 1), (0.5, 2), (1.0, 4)):
        expected = -two_by_hand.topk(top, dim=0).values.mean()
        assert denoising_gain_loss(flipped, residual, share, two_sided=True).item() == pytest.approx(expected.item(),
                                                                                                    rel=1e-5)
    # the sign of an edit no longer matters, and a two-sided score is never below the one-sided one
    assert denoising_gain_loss(-flipped, residual, 0.5, True).item() == pytest.approx(
        denoising_gain_loss(flipped, residual, 0.5, True).item())
    assert denoising_gain_loss(flipped, residual, 0.5, True) < denoising_gain_loss(flipped, residual, 0.5)
    with pytest.raises(ValueError, match="the residual must be"):
        denoising_gain_loss(features, residual[:3], 0.25)
    with pytest.raises(ValueError, match="N images, K directions"):
        denoising_gain_loss(torch.zeros(4, 3), residual, 0.25)
