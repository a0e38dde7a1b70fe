"""data.channels: grey digits train a timm ConvNeXt and ViT on one channel (timm's in_chans), predict reads an
image file as one channel as training did, and combinations that cannot work are one error line each."""

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from src.cli.checks import check_values
from src.errors import UserError
from src.inference.classifiers import torch_classifier
from src.inference.files import load_image
from tests.conftest import compose_config


def grey_config(tmp_path, *overrides: str):
    return compose_config(
        "train",
        ["data=digits", "data.image_size=32", "data.batch_size=8", "data.channels=1", *overrides],
        tmp_path,
    )


# the model's statistics as grey: the luma-weighted average of R, G and B (ImageNet's; 0.5 for timm's ViT)
@pytest.mark.parametrize(
    ("name", "grey_mean", "grey_std"), [("convnext_atto", 0.459, 0.2256), ("vit_tiny_patch16_224", 0.5, 0.5)]
)
def test_grey_digits_train_a_timm_model_of_one_channel_and_predict_reads_a_png_as_one(
    name, grey_mean, grey_std, tmp_path
):
    cfg = grey_config(tmp_path, "model=timm", f"model.name={name}")
    check_values(cfg)
    assert list(cfg.data.mean) == [grey_mean] and list(cfg.data.std) == [grey_std]
    datamodule, module = instantiate(cfg.data), instantiate(cfg.module)
    first_conv = next(m for m in module.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    datamodule.setup("fit")
    images, _ = next(iter(datamodule.train_dataloader()))
    assert images.shape == (8, 1, 32, 32)

    trainer = L.Trainer(
        max_steps=1, limit_val_batches=0, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1
    trainer.save_checkpoint(tmp_path / "model.ckpt")

    # a test digit written as an RGB PNG (grey in each channel), read by predict as the checkpoint says
    datamodule.setup("test")
    test = datamodule.data_test
    pixels, _ = test.dataset[test.indices[0]]  # uint8 (1, 8, 8)
    Image.fromarray(pixels[0].numpy()).convert("RGB").save(tmp_path / "digit.png")
    classifier = torch_classifier(tmp_path / "model.ckpt", torch.device("cpu"))
    image = load_image(tmp_path / "digit.png")
    assert image.mode == "RGB" and classifier.transform(image).shape == (1, 32, 32)
    with torch.inference_mode():
        expected = module.eval()(test[0][0][None]).softmax(dim=-1).numpy()
    np.testing.assert_allclose(classifier([image]), expected, atol=2e-3)


def test_the_scratch_vit_takes_grey_images(tmp_path):
    cfg = grey_config(tmp_path, "model=vit", "model.depth=1", "model.embed_dim=32", "model.mlp_dim=32")
    check_values(cfg)
    module = instantiate(cfg.module)
    assert module.backbone(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=vgg19"], "data.channels=1: model vgg19 takes RGB images only; use data.channels=3"),
        (["data=cifar10"], "data.channels=1: this data set's images are read with 3 channel(s)"),
        (["data=imagefolder", "data.data_dir=.", "data.num_classes=2", "data.channels=2"], "data.channels=2: this data set's images "
         "are read with 1 or 3 channel(s) (1: grey, 3: RGB); use data.channels=3"),
        (["model=vit", "data.mean=[0.5,0.5,0.5]"], "data.mean=[0.5, 0.5, 0.5] has 3 value(s) for data.channels=1"),
    ],
)  # fmt: skip
def test_a_channel_count_the_data_or_model_cannot_take_is_one_line(overrides, message, tmp_path):
    with pytest.raises(UserError) as raised:
        check_values(grey_config(tmp_path, *overrides))
    assert str(raised.value).startswith(message)
