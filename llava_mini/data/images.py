"""Images -> pixel tensors, as CLIP's preprocessing does it: any file as upright RGB, LLaVA-1.5's pad-to-square (or
LLaVA-1's crop), resize to the tower's size, normalise with CLIP's mean and std.

    pixels = preprocess_image(load_image("data/shapes/images/test/shapes_test_000003.png"), config.vision_config)
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from llava_mini.model.config import VisionConfig

# A truncated file must be an error, not a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# The most pixels we decode: 40 megapixels (a 12 MP photo is 12). The tower sees 336 x 336 at most, and a 13000 x 13000
# PNG of a few kilobytes (a decompression bomb) would otherwise take 0.5 GB before it is resized.
MAX_IMAGE_PIXELS = 40_000_000


def load_image(path: str, background=(255, 255, 255)) -> Image.Image:
    """Open an image file as 8-bit RGB, upright. Any PIL mode works: grey (L), palette (P), CMYK, 16-bit (I;16),
    and transparent ones (RGBA, LA, P with transparency), which are laid over `background`.
    A missing, truncated, oversized or non-image file, or one that is not a regular file (a folder, a named pipe
    that would block forever, a device), raises an error naming the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"image not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"not a regular file: {path}")
    return _decode(path, path, background)


def decode_image(data: bytes, name: str, background=(255, 255, 255)) -> Image.Image:
    """load_image for bytes already in memory (an upload, a data: URL); `name` is what an error calls them."""
    return _decode(io.BytesIO(data), name, background)


def _decode(source, path: str, background) -> Image.Image:
    """Open, check the size from the header, decode and make RGB; every failure names `path`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)    # we check the size ourselves
            with Image.open(source) as im:
                w, h = im.size                      # from the header: nothing is decoded yet
                if w * h > MAX_IMAGE_PIXELS:
                    raise ValueError(f"image too large: {path} is {w} x {h} pixels, more than the "
                                     f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels we decode (resize it first)")
                im.load()                           # decode now: a truncated file fails here, not later
                im = ImageOps.exif_transpose(im)    # camera photos store "rotate me" in EXIF
    except UnidentifiedImageError:
        raise ValueError(f"not an image file: {path}") from None
    except Image.DecompressionBombError as e:      # PIL's own limit, checked while opening
        raise ValueError(f"image too large: {path} ({e})") from None
    except ValueError:
        raise
    except Exception as e:      # truncated / corrupt data (OSError, SyntaxError, struct.error, PIL's bomb check...)
        raise ValueError(f"broken image file {path}: {type(e).__name__}: {e}") from None
    return to_rgb(im, background)


def to_rgb(im: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grey: scale to 0..255 instead of clipping (PIL's convert("L") clips 16-bit values at 255).
        a = np.asarray(im, dtype=np.float64)
        top = 255.0 if a.max() <= 255 else 65535.0 if a.max() <= 65535 else a.max()
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if (im.mode == "P" and "transparency" in im.info) or im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")                        # RGB, L, 1, P, CMYK, YCbCr, LAB, HSV


def mean_color(vision_config: VisionConfig) -> tuple:
    """The image mean as 0..255 integers: (122, 116, 104) for CLIP, LLaVA-1.5's padding colour."""
    return tuple(int(m * 255) for m in vision_config.image_mean)


def expand_to_square(im: Image.Image, color) -> Image.Image:
    """Paste the image centred on a square canvas of `color` (LLaVA-1.5 "pad"), so nothing is cropped away."""
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), color)
    canvas.paste(im, ((side - w) // 2, (side - h) // 2))
    return canvas


def preprocess_image(image: Image.Image, vision_config: VisionConfig, aspect: str = "pad") -> torch.Tensor:
    """RGB PIL image -> normalised (3, S, S) float tensor, S = vision_config.image_size, as CLIP's processor:
    ("pad": first expand to a square with the mean colour), resize the short side to S (bicubic), centre-crop S x S,
    scale to [0, 1], subtract the mean and divide by the std."""
    if aspect not in ("pad", "crop"):
        raise ValueError(f"aspect must be 'pad' or 'crop', got {aspect!r}")
    image = to_rgb(image)
    if aspect == "pad":
        image = expand_to_square(image, mean_color(vision_config))
    size = vision_config.image_size
    w, h = image.size
    # Short side -> size; the long side keeps the aspect ratio, rounded down (as HF's CLIPImageProcessor does).
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.float32) / 255.0                                    # (S, S, 3)
    x = (x - np.asarray(vision_config.image_mean, np.float32)) / np.asarray(vision_config.image_std, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())                               # (3, S, S)
