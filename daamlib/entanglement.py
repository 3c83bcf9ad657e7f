"""Measures for adjectival entanglement (paper §5.2, Fig. 8–9): does a colour word leak into the background?

With the layout held fixed by attention replay (``daamlib.replay``), the seed image and a
variant differ only where the swapped adjective acts. Outside the object those changes are
entanglement: the paper shows, e.g., a "blue car" turning the street blue.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.colors import rgb_to_hsv


def _hsv(image) -> np.ndarray:
    return rgb_to_hsv(np.asarray(image, dtype=np.float32)[..., :3] / 255.0)


def hue_distance(h1, h2) -> np.ndarray:
    """Circular hue distance in degrees (hues in [0, 1))."""
    d = np.abs(np.asarray(h1) - np.asarray(h2)) % 1.0
    return 360.0 * np.minimum(d, 1.0 - d)


def background_shift(seed_image, variant_image, object_mask, target_rgb, min_saturation: float = 0.15) -> dict:
    """How the background (outside ``object_mask``) moved from the seed image to the variant.

    * ``hue_shift_deg``: mean decrease of the hue distance to ``target_rgb`` (the adjective's
      colour) over background pixels coloured in *both* images (saturation ≥ ``min_saturation``);
      positive = the background's hue moved toward the adjective's colour. A grey pixel has no
      hue (matplotlib calls it 0°, red), so it is left out here; NaN when no pixel qualifies.
    * ``toward_share``: share of those pixels whose hue moved toward the target (NaN when none).
    * ``chroma_toward``: mean over *all* background pixels of the change of the pixel's chroma
      vector (HSV chroma ``s·v`` at angle hue) projected on the target's hue direction, in [−1, 1]:
      also counts grey turning coloured (grey → blue is toward blue, grey → red toward red).
    * ``pixel_diff``: mean absolute RGB difference in [0, 1] over all background pixels.
    * ``saturation_gain``: mean saturation change of the background.
    * ``coloured_pixels``: how many pixels ``hue_shift_deg`` averages over.
    """
    bg = ~np.asarray(object_mask, dtype=bool)
    if not bg.any():
        raise ValueError("the object mask covers the whole image: there is no background to measure")
    a, b = _hsv(seed_image), _hsv(variant_image)
    target = rgb_to_hsv(np.asarray(target_rgb, dtype=np.float32)[None, None, :3] / 255.0)[0, 0, 0]
    coloured = bg & (a[..., 1] >= min_saturation) & (b[..., 1] >= min_saturation)
    moved = hue_distance(a[..., 0], target) - hue_distance(b[..., 0], target)

    def chroma(hsv):
        c, angle = hsv[..., 1] * hsv[..., 2], 2 * np.pi * hsv[..., 0]
        return np.stack([c * np.cos(angle), c * np.sin(angle)], -1)

    toward = np.array([np.cos(2 * np.pi * target), np.sin(2 * np.pi * target)])
    diff = np.abs(np.asarray(seed_image, np.float32) - np.asarray(variant_image, np.float32))[..., :3] / 255.0
    return {
        "hue_shift_deg": float(moved[coloured].mean()) if coloured.any() else float("nan"),
        "toward_share": float((moved[coloured] > 0).mean()) if coloured.any() else float("nan"),
        "chroma_toward": float(((chroma(b) - chroma(a)) @ toward)[bg].mean()),
        "pixel_diff": float(diff[bg].mean()),
        "saturation_gain": float((b[..., 1] - a[..., 1])[bg].mean()),
        "coloured_pixels": int(coloured.sum()),
        "background_pixels": int(bg.sum()),
    }


def spread_outside(heat: torch.Tensor, object_mask) -> float:
    """Share of a soft map's mass outside the object (0: all on the object; 1: all elsewhere)."""
    from .segmentation import mass_on_region

    region = torch.as_tensor(np.asarray(object_mask, dtype=bool))
    return 1.0 - mass_on_region(heat, region)
