"""Temperature scaling lowers the NLL of an over-confident model without changing its predictions; test-time
augmentation averages probabilities, equals no augmentation for the identity view, and refuses flips where the
data set's training never flips."""

import pytest
import torch

from src.data.tta import mean_probabilities, shifted, tta_views
from src.errors import UserError
from src.training.calibration import TemperatureScaled, calibration_scores, fit_temperature


def over_confident(n: int = 2000, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are right 70 % of the time but give their top class about 99.9 % of the probability."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=generator)
    wrong = torch.rand(n, generator=generator) > 0.7
    predicted = torch.where(
        wrong, (labels + torch.randint(1, classes, (n,), generator=generator)) % classes, labels
    )
    logits = torch.randn(n, classes, generator=generator)
    logits[torch.arange(n), predicted] += 10.0
    return logits, labels


def test_temperature_scaling_lowers_the_nll_of_an_over_confident_model_and_keeps_its_predictions():
    logits, labels = over_confident()
    temperature = fit_temperature(logits, labels)
    before, after = calibration_scores(logits, labels), calibration_scores(logits, labels, temperature)
    assert temperature > 2  # softened
    assert after["nll"] < 0.5 * before["nll"]
    # confidence ~0.97 against accuracy ~0.7, then much closer to it
    assert before["ece"] > 0.25 and after["ece"] < before["ece"] / 3
    assert torch.equal((logits / temperature).argmax(-1), logits.argmax(-1))
    # the optimum: the NLL rises on either side of it
    for other in (0.9 * temperature, 1.1 * temperature):
        assert calibration_scores(logits, labels, other)["nll"] > after["nll"]


def test_an_under_confident_model_gets_a_temperature_below_one():
    logits, labels = over_confident()
    assert fit_temperature(logits / 20, labels) < 1


def test_the_exported_wrapper_divides_the_logits():
    model = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(TemperatureScaled(model, 2.5)(x), model(x) / 2.5)


def tiny_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()


def test_tta_with_the_identity_view_equals_no_tta():
    model, images = tiny_classifier(), torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        plain = model(images).softmax(-1)
        torch.testing.assert_close(mean_probabilities(model, images, None), plain)
        torch.testing.assert_close(mean_probabilities(model, images, lambda batch: [batch]), plain)
        torch.testing.assert_close(
            mean_probabilities(model, images, None, 2.0), (model(images) / 2).softmax(-1)
        )


def test_crops_average_the_probabilities_of_the_image_and_four_shifts():
    model, images = tiny_classifier(), torch.randn(2, 3, 16, 16)
    views = tta_views("crops", "digits", 16)(images)
    assert len(views) == 5 and torch.equal(views[0], images)
    assert all(view.shape == images.shape for view in views)
    # a shift by the training crop's padding (16 // 8 = 2 px): the image moved, the border reflected
    torch.testing.assert_close(views[4][..., 2:], images[..., :-2])
    torch.testing.assert_close(shifted(images, 0, 2)[..., 1], images[..., 1])  # reflect: column 2 - 1 = 1
    with torch.no_grad():
        expected = torch.stack([model(view).softmax(-1) for view in views]).mean(0)
        averaged = mean_probabilities(model, images, tta_views("crops", "digits", 16))
    torch.testing.assert_close(averaged, expected)
    torch.testing.assert_close(averaged.sum(-1), torch.ones(2))


def test_hflip_mirrors_photos_and_is_refused_for_digits():
    images = torch.randn(1, 3, 8, 8)
    original, mirrored = tta_views("hflip", "cifar", 8)(images)
    assert torch.equal(mirrored, images.flip(-1)) and torch.equal(original, images)
    with pytest.raises(
        UserError,
        match=r"tta=hflip is not valid for this data set: .* never flips images, .* \(a mirrored digit is no digit\)",
    ):
        tta_views("hflip", "digits", 16)
    with pytest.raises(UserError, match="tta=flip is unknown: use tta=none, tta=crops or tta=hflip"):
        tta_views("flip", "cifar", 32)
