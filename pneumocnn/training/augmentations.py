"""Named training augmentations: plain settings, applied in the tf.data graph by
:mod:`pneumocnn.training.data`. TensorFlow-free, so the command line can list them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class Augmentation:
    """Random augmentation. Geometry: shear and rotation in degrees, zoom and translation as
    +- fractions, horizontal flip. Intensity (0 = off): brightness as +- a fraction of full
    scale, contrast as +- a fraction around the image mean, gamma as +- log exponent, Gaussian
    noise as a standard deviation in full-scale units. Sharpness: each image is blended with
    its Gaussian blur (sigma 1 pixel of the model input) by a weight drawn from +- sharpness;
    above 0 it is softer, below 0 sharper (unsharp masking). Mixup (0 = off): each augmented
    image and its label are blended with another of the batch by a weight drawn from
    Beta(mixup, mixup) (Zhang et al. 2018), so the targets are no longer 0 or 1. ``about``: what
    it is for, in a phrase (the command line's help lists it)."""

    shear_degrees: float = 0.2
    zoom: float = 0.2
    horizontal_flip: bool = True
    rotation_degrees: float = 0.0
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0
    sharpness: float = 0.0
    mixup: float = 0.0
    about: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        """JSON-ready form for run reports: the settings, without ``about``."""
        settings = asdict(self)
        del settings["about"]
        return settings


SEED_AUGMENTATION = Augmentation(about="the report's shear/zoom/flip")
# Differences between machines and sites (exposure, contrast curve, noise, positioning);
# no flip: it moves the heart to the other side.
SHIFT_AUGMENTATION = Augmentation(shear_degrees=2.0, zoom=0.15, horizontal_flip=False,
                                  rotation_degrees=10.0, translate=0.08, brightness=0.1,
                                  contrast=0.25, gamma=0.3, noise=0.02,
                                  about="acquisition differences")
AUGMENTATIONS = {
    "seed": SEED_AUGMENTATION,
    "shift": SHIFT_AUGMENTATION,
    "shift-flip": replace(SHIFT_AUGMENTATION, horizontal_flip=True,  # for the flip study
                          about="shift plus horizontal flip"),
    # Wider framing differences (zoom 0.7-1.3): field of view and collimation vary by site.
    "shift-zoom": replace(SHIFT_AUGMENTATION, zoom=0.3, about="shift with zoom 0.7-1.3"),
    # Detectors and their processing differ in sharpness too.
    "shift-zoom-sharpness": replace(SHIFT_AUGMENTATION, zoom=0.3, sharpness=1.0,
                                    about="shift-zoom with random blur or sharpening"),
    # Against over-confidence at a new site: mixup (alpha 0.3, in the range that calibrated
    # best in Thulasidasan et al. 2019) on the default augmentation.
    "shift-zoom-mixup": replace(SHIFT_AUGMENTATION, zoom=0.3, mixup=0.3,
                                about="shift-zoom with mixup (alpha 0.3): soft targets, no "
                                      "--class-weight"),
}
