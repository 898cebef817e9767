"""The demo's scene painter: shapes in an object's unit frame, fills (shaded, noisy, striped, photo-textured), the
demo's classes with their appearance modes, grey distractors, backgrounds, photometric degradation and the VOC-style
255 band at instance borders. `ms_semiseg.demo.make_data` writes its scenes to disk; `source_task` reuses the
painter with other classes."""
from functools import lru_cache
from importlib import resources

import cv2
import numpy as np

IGNORE_LABEL = 255
IGNORE_BAND_KERNEL = np.ones((3, 3), np.uint8)  # 1 px each side of an instance border
OBJECTS_PER_IMAGE = (1, 3)  # inclusive range
CLUTTER_PER_IMAGE = (0, 3)
OBJECT_HALF_EXTENT = (0.2, 0.42)  # fraction of the image side, drawn log-uniformly
CLUTTER_HALF_EXTENT = (0.04, 0.14)


# ----------------------------------------------------------------------------------------------------------
# Geometry in an object's unit frame: x, y in [-1, 1], y pointing down. A part is (polygons, fill, stroke_px):
# stroke 0 fills the polygons, stroke > 0 draws their outline that many pixels wide.

def box(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def ellipse(cx, cy, rx, ry, angle_deg=0.0, points=28):
    t = np.linspace(0.0, 2.0 * np.pi, points, endpoint=False)
    local = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    return local @ rotation(angle_deg).T + (cx, cy)


def circle(cx, cy, r):
    return ellipse(cx, cy, r, r)


def segment(x0, y0, x1, y1, width):
    """A thick line as a quadrilateral (limbs, stems)."""
    direction = np.array([x1 - x0, y1 - y0], np.float64)
    normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-12) * width / 2
    return np.array([[x0, y0] + normal, [x1, y1] + normal, [x1, y1] - normal, [x0, y0] - normal])


def rotation(angle_deg):
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


# ----------------------------------------------------------------------------------------------------------
# Fills are small tuples chosen at build time and painted over a part's bounding box:
#   ("shade", rgb, strength)            colour with a linear light ramp
#   ("noise", rgb, amplitude)           colour with smooth low-frequency noise (foliage, stone)
#   ("stripes", rgb_a, rgb_b, period)   two-colour stripes, period in pixels, random angle
#   ("photo", tint_rgb, tint_strength)  a crop of a real photograph, tinted

def jitter(rng, rgb, amount=22):
    return np.clip(np.asarray(rgb, np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def pick(rng, palette, amount=22):
    return jitter(rng, palette[rng.integers(len(palette))], amount)


def random_hue(rng, saturation=(0.55, 0.95), value=(0.45, 0.95)):
    """A saturated colour of any hue: car paint and clothing carry no class information."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(*value) * 255]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def shade(rng, palette, strength=0.25):
    return ("shade", pick(rng, palette), strength)


def noisy(rng, palette, amplitude=30.0):
    return ("noise", pick(rng, palette), amplitude)


def stripes(rng, palette_a, palette_b, period=(3.0, 7.0)):
    return ("stripes", pick(rng, palette_a), pick(rng, palette_b), rng.uniform(*period))


def photo(rng, tint_palette, strength=(0.2, 0.6)):
    return ("photo", pick(rng, tint_palette, 10), rng.uniform(*strength))


BROWNS = [(110, 70, 40), (90, 60, 35), (130, 90, 55)]
GREENS = [(40, 130, 40), (70, 160, 60), (90, 120, 40)]
DARK_GREENS = [(20, 80, 45), (30, 100, 60), (25, 70, 30)]
WALLS = [(230, 220, 190), (205, 170, 140), (185, 95, 70)]
ROOFS = [(160, 40, 30), (95, 60, 50), (60, 60, 85)]
STONE = [(150, 150, 160), (120, 110, 100), (175, 165, 150)]
GLASS = [(150, 190, 220), (60, 75, 95), (225, 215, 120)]
TYRES = [(25, 25, 25), (40, 40, 45)]
BUS_PAINT = [(240, 200, 30), (40, 90, 180), (200, 40, 40)]
FISH_ORANGE = [(240, 130, 30), (250, 170, 40)]
FISH_WHITE = [(245, 245, 245), (30, 30, 30)]
FISH_SILVER = [(140, 170, 200), (90, 120, 170), (230, 210, 80)]
DARK = [(35, 35, 45), (60, 45, 35)]
CLUTTER_COLOURS = STONE + DARK + [(200, 200, 200), (90, 90, 90)]


# ----------------------------------------------------------------------------------------------------------
# Classes and their appearance modes. Each mode builder returns the parts of one instance, back to front.

def tree_broadleaf(rng):
    canopy = noisy(rng, GREENS)
    return [([box(-0.12, 0.1, 0.12, 1.0)], shade(rng, BROWNS), 0),
            ([circle(0, -0.35, 0.55), circle(-0.4, -0.1, 0.42), circle(0.4, -0.1, 0.42)], canopy, 0)]


def tree_conifer(rng):
    tiers = [np.array([[0, top], [-half, bottom], [half, bottom]]) for top, bottom, half in
             [(-1.0, -0.3, 0.45), (-0.6, 0.15, 0.6), (-0.2, 0.6, 0.75)]]
    return [([box(-0.1, 0.5, 0.1, 1.0)], shade(rng, BROWNS), 0), (tiers, shade(rng, DARK_GREENS, 0.4), 0)]


def house_cottage(rng):
    wall = photo(rng, WALLS) if rng.random() < 0.4 else shade(rng, WALLS)
    return [([box(-0.7, -0.1, 0.7, 1.0)], wall, 0),
            ([np.array([[-0.88, -0.1], [0, -0.9], [0.88, -0.1]])], shade(rng, ROOFS), 0),
            ([box(-0.15, 0.45, 0.15, 1.0)], shade(rng, BROWNS), 0),
            ([box(0.3, 0.15, 0.55, 0.42), box(-0.55, 0.15, -0.3, 0.42)], shade(rng, GLASS), 0)]


def house_tower(rng):
    windows = [box(x, y, x + 0.2, y + 0.22) for x in (-0.28, 0.08) for y in (-0.7, -0.3, 0.1, 0.5)]
    return [([box(-0.42, -0.9, 0.42, 1.0)], noisy(rng, STONE, 20.0), 0),
            ([box(-0.5, -1.0, 0.5, -0.85)], shade(rng, ROOFS), 0),
            (windows, shade(rng, GLASS), 0)]


def car_sedan(rng):
    body = np.array([[-1, 0.05], [-0.85, -0.15], [0.85, -0.15], [1, 0.05], [1, 0.4], [-1, 0.4]])
    cabin = np.array([[-0.55, -0.15], [-0.3, -0.6], [0.35, -0.6], [0.6, -0.15]])
    return [([cabin], shade(rng, GLASS), 0), ([body], ("shade", random_hue(rng), 0.3), 0),
            ([circle(-0.58, 0.42, 0.24), circle(0.58, 0.42, 0.24)], shade(rng, TYRES), 0)]


def car_truck(rng):
    cargo = photo(rng, STONE) if rng.random() < 0.5 else stripes(rng, BUS_PAINT, STONE, (4.0, 9.0))
    return [([box(-1.0, -0.75, 0.3, 0.4)], cargo, 0),
            ([box(0.35, -0.45, 1.0, 0.4)], ("shade", random_hue(rng), 0.3), 0),
            ([box(0.55, -0.35, 0.9, -0.05)], shade(rng, GLASS), 0),
            ([circle(x, 0.45, 0.2) for x in (-0.7, -0.25, 0.68)], shade(rng, TYRES), 0)]


def fish_striped(rng):
    return [([np.array([[0.45, 0], [1.0, -0.45], [1.0, 0.45]])], shade(rng, FISH_ORANGE), 0),
            ([ellipse(-0.1, 0, 0.65, 0.38)], stripes(rng, FISH_ORANGE, FISH_WHITE), 0),
            ([circle(-0.5, -0.08, 0.07)], shade(rng, DARK), 0)]


def fish_angel(rng):
    return [([np.array([[0.4, 0], [0.9, -0.35], [0.9, 0.35]])], shade(rng, FISH_SILVER), 0),
            ([np.array([[-0.8, 0], [0, -0.8], [0.5, 0], [0, 0.8]])], shade(rng, FISH_SILVER, 0.6), 0),
            ([circle(-0.45, -0.08, 0.07)], shade(rng, DARK), 0)]


# class name -> (max rotation in degrees, {mode name: builder})
CLASSES = {
    "tree": (8, {"broadleaf": tree_broadleaf, "conifer": tree_conifer}),
    "house": (6, {"cottage": house_cottage, "tower": house_tower}),
    "car": (10, {"sedan": car_sedan, "truck": car_truck}),
    "fish": (35, {"striped": fish_striped, "angel": fish_angel}),
}
CLASS_NAMES = ("background",) + tuple(CLASSES)
def class_names_of(classes):
    return ("background",) + tuple(classes)


def clutter_parts(rng):
    """Background-labelled distractors: blobs, object-part look-alikes (discs, boxes) and thin strokes."""
    kind = rng.integers(4)
    colour_fill = ("shade", pick(rng, CLUTTER_COLOURS), 0.3)
    if kind == 0:  # irregular star-convex blob, sometimes photo-textured
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(6, 12)))
        radii = rng.uniform(0.4, 1.0, angles.size)
        blob = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        return [([blob], photo(rng, CLUTTER_COLOURS) if rng.random() < 0.4 else colour_fill, 0)]
    if kind == 1:
        return [([circle(0, 0, 1.0)], colour_fill, 0)]
    if kind == 2:
        return [([box(-1.0, -rng.uniform(0.3, 1.0), 1.0, rng.uniform(0.3, 1.0))], colour_fill, 0)]
    stroke_px = int(rng.integers(1, 3))
    polyline = rng.uniform(-1, 1, (int(rng.integers(2, 5)), 2))
    return [([polyline], colour_fill, stroke_px)]


# ----------------------------------------------------------------------------------------------------------
# Painting

@lru_cache(maxsize=1)
def photo_textures():
    """scikit-learn's two bundled sample photographs as float32 RGB (no download needed)."""
    folder = resources.files("sklearn.datasets.images")
    photos = []
    for name in ("china.jpg", "flower.jpg"):
        data = np.frombuffer(folder.joinpath(name).read_bytes(), np.uint8)
        photos.append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32))
    return tuple(photos)


def photo_crop(rng, height, width, side_range):
    """A random crop of a sample photo with the requested aspect, resized to height x width."""
    source = photo_textures()[rng.integers(2)]
    side = rng.uniform(*side_range) * min(source.shape[:2])
    crop_h = max(2, int(side * min(1.0, height / width)))
    crop_w = max(2, int(side * min(1.0, width / height)))
    y0 = rng.integers(source.shape[0] - crop_h + 1)
    x0 = rng.integers(source.shape[1] - crop_w + 1)
    crop = cv2.resize(source[y0:y0 + crop_h, x0:x0 + crop_w], (width, height), interpolation=cv2.INTER_AREA)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def smooth_noise(rng, height, width, cells=6):
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), -1, 1)


def linear_ramp(rng, height, width):
    """A ramp in [-1, 1] along a random direction, for shading and stripes."""
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.arange(width, dtype=np.float32)[None, :] * np.cos(angle)
             + np.arange(height, dtype=np.float32)[:, None] * np.sin(angle))
    return along, (along - along.min()) / (np.ptp(along) + 1e-6) * 2 - 1


def render_fill(rng, fill, height, width):
    kind = fill[0]
    if kind == "shade":
        _, rgb, strength = fill
        _, ramp = linear_ramp(rng, height, width)
        return rgb.astype(np.float32) * (1 + strength * ramp)[..., None]
    if kind == "noise":
        _, rgb, amplitude = fill
        return rgb.astype(np.float32) + amplitude * smooth_noise(rng, height, width)[..., None]
    if kind == "stripes":
        _, rgb_a, rgb_b, period = fill
        along, _ = linear_ramp(rng, height, width)
        first = (np.sin(along * (2 * np.pi / period)) > 0)[..., None]
        return np.where(first, rgb_a, rgb_b).astype(np.float32)
    _, tint, strength = fill
    return (1 - strength) * photo_crop(rng, height, width, (0.1, 0.5)) + strength * tint.astype(np.float32)


def to_fixed_point(points):
    return np.round(points * 16).astype(np.int32)  # cv2 drawing with shift=4 keeps sub-pixel vertices


def part_mask(polygons_px, stroke_px, size):
    """Pixel bounding box (y0, y1, x0, x1) and boolean mask of a part, or None when it is off-image."""
    all_points = np.concatenate(polygons_px)
    margin = stroke_px + 1
    x0, y0 = np.maximum(np.floor(all_points.min(axis=0)).astype(int) - margin, 0)
    x1, y1 = np.minimum(np.ceil(all_points.max(axis=0)).astype(int) + margin + 1, size)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for polygon in polygons_px:
        local = [to_fixed_point(polygon - (x0, y0))]
        if stroke_px:
            cv2.polylines(mask, local, False, 1, stroke_px, cv2.LINE_8, 4)
        else:
            cv2.fillPoly(mask, local, 1, cv2.LINE_8, 4)
    return (y0, y1, x0, x1), mask.astype(bool)


def random_pose(rng, size, half_extent_range, max_rotation):
    half_extent = size * np.exp(rng.uniform(*np.log(half_extent_range)))
    centre = rng.uniform(0.05 * size, 0.95 * size, 2)
    flip = np.diag([rng.choice([-1.0, 1.0]), 1.0])
    return half_extent, centre, rotation(rng.uniform(-max_rotation, max_rotation)) @ flip


def paint_layer(rng, image, instance, parts, pose, instance_id):
    """Paints parts (unit frame) at pose; returns the layer's pixel bbox [x0, y0, x1, y1] or None."""
    half_extent, centre, linear = pose
    size = image.shape[0]
    boxes = []
    for polygons, fill, stroke_px in parts:
        drawn = part_mask([p @ linear.T * half_extent + centre for p in polygons], stroke_px, size)
        if drawn is None:
            continue
        (y0, y1, x0, x1), mask = drawn
        colours = render_fill(rng, fill, y1 - y0, x1 - x0)
        image[y0:y1, x0:x1][mask] = colours[mask]
        instance[y0:y1, x0:x1][mask] = instance_id
        ys, xs = np.nonzero(mask)
        if ys.size:
            boxes.append((x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1))
    if not boxes:
        return None
    boxes = np.array(boxes)
    return [int(v) for v in (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0))]


def background(rng, size, plain=False):
    """A low-contrast photo crop (30%), a sky/ground gradient (35%) or a low-contrast stripe pattern (35%); plain:
    always the gradient."""
    choice = rng.random()
    if plain:  # the draw mapped into the gradient's range, as docs/demo.md's fifth-round data was made (same bytes)
        choice = 0.3 + 0.35 * choice
    if choice < 0.3:
        crop = photo_crop(rng, size, size, (0.3, 1.0))
        return 0.5 * crop + 0.5 * crop.mean(axis=(0, 1))
    if choice < 0.65:
        top, bottom = pick(rng, GLASS + STONE, 30), pick(rng, GREENS + BROWNS + STONE, 30)
        weight = np.clip(np.linspace(-1, 1, size) * 4 - rng.uniform(-2, 2), 0, 1).astype(np.float32)
        scene = top * (1 - weight[:, None, None]) + bottom * weight[:, None, None]
        return np.broadcast_to(scene, (size, size, 3)) + 25 * smooth_noise(rng, size, size, 8)[..., None]
    pattern = render_fill(rng, stripes(rng, CLUTTER_COLOURS, CLUTTER_COLOURS, (6.0, 20.0)), size, size)
    return 0.5 * pattern + 0.5 * pattern.mean(axis=(0, 1)) + 20 * smooth_noise(rng, size, size)[..., None]


def degrade(rng, image):
    """Mild photometric jitter, blur and sensor noise, then quantisation."""
    image = (image - image.mean()) * rng.uniform(0.8, 1.2) + image.mean() + rng.uniform(-15, 15)
    if rng.random() < 0.6:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.0))
    image = image + np.float32(rng.uniform(2, 7)) * rng.standard_normal(image.shape, np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render_scene(rng, size, classes=CLASSES, plain=False):
    """One image: (RGB uint8 HxWx3, label uint8 HxW, list of instance records). plain: a gradient background and
    no grey distractors (the demo's scenes, make_data); otherwise also photo and stripe backgrounds and 0-3
    distractors (the source task's)."""
    names = class_names_of(classes)
    image = np.ascontiguousarray(background(rng, size, plain), np.float32)
    instance = np.zeros((size, size), np.uint8)
    num_objects = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    num_clutter = int(rng.integers(CLUTTER_PER_IMAGE[0], CLUTTER_PER_IMAGE[1] + 1))
    if plain:
        num_clutter = 0  # drawn and dropped, for the same reason as in background()
    layers = rng.permutation([True] * num_objects + [False] * num_clutter)  # True = object; random depth order
    records, class_of_instance = [], [0]
    for is_object in layers:
        if is_object:
            class_id = int(rng.integers(1, len(names)))
            max_rotation, modes = classes[names[class_id]]
            mode = list(modes)[rng.integers(len(modes))]
            pose = random_pose(rng, size, OBJECT_HALF_EXTENT, max_rotation)
            bbox = paint_layer(rng, image, instance, modes[mode](rng), pose, len(class_of_instance))
            records.append({"class_id": class_id, "class": names[class_id], "mode": mode, "bbox": bbox})
            class_of_instance.append(class_id)
        else:
            pose = random_pose(rng, size, CLUTTER_HALF_EXTENT, 180)
            paint_layer(rng, image, instance, clutter_parts(rng), pose, 0)
    label, visible = labels_with_ignore_band(instance, np.array(class_of_instance, np.uint8))
    for record, pixels in zip(records, visible[1:]):
        record["visible_pixels"] = int(pixels)
    return degrade(rng, image), label, records


def labels_with_ignore_band(instance, class_of_instance):
    """Class map with 255 wherever a 3x3 window sees two instances (VOC-style outline, incl. same-class
    neighbours); also the number of non-ignored pixels left to each instance."""
    band = cv2.dilate(instance, IGNORE_BAND_KERNEL) != cv2.erode(instance, IGNORE_BAND_KERNEL)
    label = class_of_instance[instance]
    label[band] = IGNORE_LABEL
    visible = np.bincount(instance[~band], minlength=len(class_of_instance))
    return label, visible
