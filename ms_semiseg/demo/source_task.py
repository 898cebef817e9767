"""The demo's *source task*: a second synthetic segmentation task, disjoint from the demo's classes, on which the
project pretrains the demo backbone (the role ImageNet plays for PCR/U2PL; `python -m ms_semiseg.demo.pretrain`).

Same painter, backgrounds, distractors, noise and VOC layout as the demo dataset (`make_data --task source`), so
low-level statistics match, but the 8 object classes are others (flower, person, boat, bird, lamp, bicycle,
umbrella, mushroom), built the same way from parts with their own palettes and layouts. Nothing in it is a tree,
house, car or fish, and no demo image or label is used: the backbone learns parts, colours, textures and layouts,
as an ImageNet backbone brings them to VOC. (A first version with 8 abstract shapes in any colour was not
learnable in the budget: 11.8 source mIoU after 900 iterations, docs/demo.md.)
"""
import numpy as np

from . import painter as md

VERSION = 2  # bump whenever the source task's rendering changes (1: abstract shapes, not learnable in budget)
ANY_COLOUR = [(200, 60, 60), (60, 160, 70), (60, 90, 200), (220, 200, 60), (150, 70, 170), (60, 180, 190),
              (235, 140, 50), (120, 120, 120), (240, 240, 240), (40, 40, 40)]


def any_fill(rng):
    """Class-independent appearance: the shape, not the colour or texture, names the class."""
    kind = rng.integers(4)
    if kind == 0:
        return ("shade", md.random_hue(rng), 0.3)
    if kind == 1:
        return md.noisy(rng, ANY_COLOUR)
    if kind == 2:
        return md.stripes(rng, ANY_COLOUR, ANY_COLOUR, (3.0, 9.0))
    return md.photo(rng, ANY_COLOUR)


def flower(rng):
    petals = [md.circle(0.5 * np.cos(a), -0.35 + 0.5 * np.sin(a), 0.3) for a in np.arange(6) * np.pi / 3]
    return [([md.segment(0, 0.1, 0, 1.0, 0.12)], md.shade(rng, md.GREENS), 0),
            (petals, ("shade", md.random_hue(rng), 0.2), 0),
            ([md.circle(0, -0.35, 0.22)], md.shade(rng, [(240, 200, 40), (110, 70, 40)]), 0)]


def person(rng):
    skin = md.shade(rng, [(230, 190, 160), (190, 140, 100), (120, 80, 55)])
    legs = [md.segment(-0.15, 0.3, -0.25, 1.0, 0.18), md.segment(0.15, 0.3, 0.25, 1.0, 0.18)]
    arms = [md.segment(-0.3, -0.35, -0.55, 0.25, 0.14), md.segment(0.3, -0.35, 0.55, 0.25, 0.14)]
    return [(legs, md.shade(rng, [(40, 50, 110), (30, 30, 35), (90, 80, 70)]), 0), (arms, skin, 0),
            ([md.box(-0.3, -0.45, 0.3, 0.35)], any_fill(rng), 0), ([md.circle(0, -0.7, 0.2)], skin, 0)]


def boat(rng):
    hull = np.array([[-1, 0.35], [1, 0.35], [0.7, 0.8], [-0.75, 0.8]])
    return [([hull], ("shade", md.random_hue(rng), 0.3), 0), ([md.box(-0.04, -1.0, 0.04, 0.35)], md.shade(rng, md.BROWNS), 0),
            ([np.array([[0.08, -0.95], [0.08, 0.25], [0.8, 0.25]])], md.shade(rng, [(240, 240, 235), (220, 200, 160)]), 0)]


def bird(rng):
    colour = ("shade", md.random_hue(rng), 0.35)
    return [([md.ellipse(0, 0, 0.7, 0.35)], colour, 0), ([md.circle(-0.7, -0.3, 0.22)], colour, 0),
            ([np.array([[-0.9, -0.35], [-1.0, -0.2], [-1.15, -0.3]]) * (0.95, 1.0)], md.shade(rng, md.FISH_ORANGE), 0),
            ([np.array([[-0.1, -0.1], [0.5, -0.8], [0.4, 0.0]])], any_fill(rng), 0)]


def lamp(rng):
    return [([md.box(-0.06, -0.6, 0.06, 1.0), md.box(-0.3, 0.9, 0.3, 1.0)], md.shade(rng, md.STONE + md.DARK), 0),
            ([np.array([[-0.4, -0.55], [0.4, -0.55], [0.25, -0.95], [-0.25, -0.95]])],
             md.shade(rng, [(250, 230, 120), (250, 250, 220)]), 0)]


def bicycle(rng):
    wheels = [md.circle(-0.6, 0.45, 0.4), md.circle(0.6, 0.45, 0.4)]
    frame = [np.array([[-0.6, 0.45], [-0.1, 0.45], [0.35, -0.15], [-0.3, -0.15], [-0.6, 0.45]]),
             np.array([[0.6, 0.45], [0.35, -0.15], [0.3, -0.45]])]
    return [(wheels, md.shade(rng, md.TYRES), 3), (frame, ("shade", md.random_hue(rng), 0.2), 2)]


def umbrella(rng):
    t = np.linspace(np.pi, 2 * np.pi, 16)
    canopy = np.stack([np.cos(t), 0.7 * np.sin(t) - 0.1], axis=1)
    canopy_fill = md.stripes(rng, md.BUS_PAINT, [(245, 245, 245)], (4.0, 8.0)) if rng.random() < 0.5 else \
        ("shade", md.random_hue(rng), 0.3)
    return [([md.box(-0.04, -0.1, 0.04, 0.9)], md.shade(rng, md.DARK), 0), ([canopy], canopy_fill, 0)]


def mushroom(rng):
    t = np.linspace(np.pi, 2 * np.pi, 16)
    cap = np.stack([0.9 * np.cos(t), 0.6 * np.sin(t)], axis=1)
    dots = [md.circle(x, y, 0.09) for x, y in [(-0.45, -0.2), (0.0, -0.4), (0.4, -0.15), (0.15, -0.1)]]
    return [([md.box(-0.25, 0.0, 0.25, 0.9)], md.shade(rng, [(235, 225, 200), (210, 195, 170)]), 0),
            ([cap], md.shade(rng, [(200, 40, 30), (150, 90, 40)]), 0), (dots, md.shade(rng, [(245, 245, 245)]), 0)]


# class name -> (max rotation in degrees, {mode name: builder}), the layout of painter.CLASSES
SOURCE_CLASSES = {name: (rotation, {"any": builder}) for name, rotation, builder in
                  [("flower", 15, flower), ("person", 8, person), ("boat", 8, boat), ("bird", 30, bird),
                   ("lamp", 5, lamp), ("bicycle", 10, bicycle), ("umbrella", 15, umbrella), ("mushroom", 8, mushroom)]}
