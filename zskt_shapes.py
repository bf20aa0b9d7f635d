"""The built-in `shapes` dataset, generated on the fly: the demo and the tests need no download.

Ten classes of 16x16 images that differ only by shape or texture: disk, square, triangle, plus,
ring, frame, star, stripes, checks, dots. Colour, position, size, rotation, texture frequency and
noise are random, so a classifier has to learn shapes, not pixels. Not part of the paper.
"""
import functools
import math

import torch

CLASSES = ("disk", "square", "triangle", "plus", "ring", "frame", "star", "stripes", "checks",
           "dots")
SIZES = {"train": 20_000, "test": 2_000}
SEEDS = {"train": 0, "test": 1}


def make_shapes(n, seed, size=16, chunk=2_000):
    """n images (uint8, (n, 3, size, size)) and labels, deterministic in `seed`. 16x16 makes the
    demo 3x cheaper than 32x32; textures have periods of 3.5-10 pixels, too coarse to alias."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)

    y = torch.randperm(n, generator=g) % 10
    draws = dict(cx=uniform(-.3, .3), cy=uniform(-.3, .3), scale=uniform(.55, .8),
                 angle=uniform(0, 2 * math.pi), freq=uniform(1.25, 2.5))
    fg = uniform(0, 1, n, 3)
    bg = (fg + uniform(.3, .7, n, 3)) % 1  # every channel differs from the foreground by >= 0.3
    sigma = uniform(0, .08)
    noise = torch.randn(n, 3, size, size, generator=g)
    images = []
    for i in range(0, n, chunk):
        part = slice(i, i + chunk)
        mask = shape_masks(size, {k: v[part] for k, v in draws.items()}, y[part])
        img = torch.where(mask, fg[part, :, None, None], bg[part, :, None, None])
        images.append(img + sigma[part, None, None, None] * noise[part])
    return (torch.cat(images).clamp(0, 1) * 255).round().to(torch.uint8), y


def shape_masks(size, draws, labels):
    """(n, 1, size, size) masks of each image's class, in its rotated and scaled frame."""
    lin = torch.linspace(-1, 1, size)
    py, px = torch.meshgrid(lin, lin, indexing="ij")

    def per_image(t):
        return t[:, None, None]

    dx, dy = px - per_image(draws["cx"]), py - per_image(draws["cy"])
    c, s = per_image(torch.cos(draws["angle"])), per_image(torch.sin(draws["angle"]))
    u = (c * dx + s * dy) / per_image(draws["scale"])
    v = (c * dy - s * dx) / per_image(draws["scale"])
    r, th, au, av = torch.hypot(u, v), torch.atan2(v, u), u.abs(), v.abs()
    f = per_image(draws["freq"]) * math.pi
    masks = torch.stack([
        r < 1,                                                   # disk
        (au < .8) & (av < .8),                                   # square
        (v > -.5) & (v < 1 - 3 ** .5 * au),                      # triangle
        ((au < .3) | (av < .3)) & (au < 1) & (av < 1),           # plus
        (r < 1) & (r > .6),                                      # ring
        (au < .85) & (av < .85) & ~((au < .45) & (av < .45)),    # frame
        r < .6 + .4 * torch.cos(5 * th),                         # star
        torch.sin(f * u) > 0,                                    # stripes
        (torch.sin(f * u) > 0) ^ (torch.sin(f * v) > 0),         # checks
        torch.cos(f * u) + torch.cos(f * v) > 1,                 # dots
    ], 1)
    return masks[torch.arange(len(masks)), labels].unsqueeze(1)


@functools.lru_cache(maxsize=4)  # generated once per process (reproduce.py's tests reload it often)
def split(name):
    """(images, labels, class names) of the train (20,000 images) or test (2,000) split."""
    images, labels = make_shapes(SIZES[name], seed=SEEDS[name])
    return images, labels, CLASSES
