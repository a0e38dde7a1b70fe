"""Train-time augmentation policies (conf/augment/) from timm and torchvision, not re-implemented:
RandAugment (timm's `rand_augment_transform`, with DeiT's magnitude noise and 'increasing' ops), AutoAugment and
TrivialAugment (torchvision v2), and random erasing (timm's `RandomErasing`, on the normalised tensor). timm is
imported by the policies that use it: its import costs 1.3 s of start-up (src/upstream_fixes/timm.py)."""

from torchvision.transforms import v2

from src.errors import UserError

POLICIES = ("basic", "randaugment", "autoaugment", "trivialaugment")
_AUTOAUGMENT = {"imagenet": "IMAGENET", "cifar10": "CIFAR10", "svhn": "SVHN"}


def check_augment(augment: dict) -> None:
    """One error line for a setting the policies cannot take (here, not in a constructor: Hydra would wrap it)."""
    policy = augment.get("policy", "basic")
    if policy not in POLICIES:
        raise UserError(
            f"augment.policy={policy} is unknown: use augment={'|'.join(POLICIES)} (a conf/augment/ option)"
        )
    if not 0.0 <= augment.get("random_erasing", 0.0) <= 1.0:
        raise UserError(
            f"augment.random_erasing={augment['random_erasing']} is a probability: give a value in [0, 1]"
        )
    if policy == "randaugment" and not (0 <= augment["magnitude"] <= 10 and augment["num_ops"] >= 1):
        raise UserError(
            f"augment.magnitude={augment['magnitude']} / augment.num_ops={augment['num_ops']}: RandAugment "
            "takes a magnitude in 0..10 and at least one op"
        )
    if policy == "autoaugment" and augment["autoaugment_policy"] not in _AUTOAUGMENT:
        raise UserError(
            f"augment.autoaugment_policy={augment['autoaugment_policy']} is unknown: use one of "
            f"{', '.join(_AUTOAUGMENT)} (torchvision's AutoAugment policies)"
        )


def randaugment_config(augment: dict) -> str:
    """timm's RandAugment string, e.g. 'rand-m9-n2-mstd0.5-inc1' (DeiT's recipe)."""
    inc = int(bool(augment.get("increasing", False)))
    return f"rand-m{augment['magnitude']}-n{augment['num_ops']}-mstd{augment['magnitude_std']}-inc{inc}"


def policy_transform(augment: dict, image_size: int, mean) -> list:
    """The policy's transforms, for uint8 image tensors (after the geometric ones, before normalisation)."""
    policy = augment.get("policy", "basic")
    if policy == "basic":
        return []
    fill = [
        min(255, round(255 * m)) for m in mean
    ]  # pixels that ops move in take the mean colour, as timm does
    if policy == "randaugment":
        from timm.data.auto_augment import rand_augment_transform

        hparams = {"translate_const": int(image_size * 0.45), "img_mean": tuple(fill)}
        # timm 1.0.31's PosterizeIncreasing keeps 0 bits at magnitude 10 (an all-black image), which Pillow 13
        # refuses ("bits must be between or equal to 1 and 8"): magnitudes (noise included) stop just below 10
        hparams["magnitude_max"] = 9.99
        # timm's ops are PIL operations
        return [v2.ToPILImage(), rand_augment_transform(randaugment_config(augment), hparams), v2.ToImage()]
    if policy == "autoaugment":
        name = _AUTOAUGMENT[augment["autoaugment_policy"]]
        return [v2.AutoAugment(v2.AutoAugmentPolicy[name], fill=fill)]
    return [v2.TrivialAugmentWide(fill=fill)]


def erasing_transform(augment: dict) -> list:
    """Random erasing of a rectangle per image, with per-pixel normal noise (timm's mode 'pixel', as DeiT)."""
    p = augment.get("random_erasing", 0.0)
    if p == 0:
        return []
    from timm.data.random_erasing import RandomErasing

    return [RandomErasing(p, mode="pixel", device="cpu")]


def gpu_loader_refusal(augment: dict | None) -> str | None:
    """Why data.loader=gpu cannot run `augment` (None: it can). It augments whole batches on the device with its
    own pad-crop/flip/cutout: the per-image policies (PIL/uint8 ops in the DataLoader) cannot run there."""
    if not augment:
        return None
    if augment.get("policy", "basic") != "basic":
        return (
            f"augment={augment['policy']} runs per image in the DataLoader: use data.loader=torch with it "
            "(data.loader=gpu does pad-crop, flip and data.cutout only)"
        )
    if augment.get("random_erasing", 0.0) > 0:
        return (
            f"augment.random_erasing={augment['random_erasing']} runs in the DataLoader: use data.loader=torch, "
            "or data.cutout=<side> with data.loader=gpu"
        )
    return None
