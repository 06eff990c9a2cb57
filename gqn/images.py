"""Image grids (context views | predictions | ground truth) as one pure numpy function, plus PNG and GIF writers."""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD = 2          # pixels between tiles
EMPTY = 0.5      # grey for masked-out context slots
HEADER = 12      # pixels of the legend row above a grid's tiles


def to_uint8(images):
    """Float images in [0, 1], channels first (..., 3, H, W) -> uint8 channels last (..., H, W, 3)."""
    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    return (np.moveaxis(images, -3, -1) * 255.0 + 0.5).astype(np.uint8)


def prediction_grid(context_frames, context_mask, predictions, targets):
    """One row per scene: its K context views, then P predictions, then the ground truth.

    context_frames (B, K, 3, H, W), context_mask (B, K), predictions (B, P, 3, H, W), targets (B, 3, H, W),
    all numpy floats in [0, 1] -> (B*(H+PAD)+PAD, (K+P+1)*(W+PAD)+PAD, 3) uint8.
    """
    mask = np.asarray(context_mask, dtype=np.float32)[:, :, None, None, None]     # (B, K, 1, 1, 1)
    context = context_frames * mask + EMPTY * (1.0 - mask)
    tiles = np.concatenate([context, predictions, targets[:, None]], axis=1)   # (B, K+P+1, 3, H, W)
    return tile_rows(to_uint8(tiles))


def with_header(grid, columns, tile_width):
    """A legend row above a grid: each (label, number of tile columns) in `columns`, left to right, labels cut to
    what fits their span. grid (rows, cols, 3) uint8 -> (HEADER + rows, cols, 3)."""
    header = Image.new("RGB", (grid.shape[1], HEADER), (255, 255, 255))
    draw, font = ImageDraw.Draw(header), ImageFont.load_default()
    left = PAD
    for label, count in columns:
        span = count * (tile_width + PAD) - PAD
        while label and draw.textlength(label, font=font) > span:
            label = label[:-1]
        draw.text((left, 1), label, fill=(0, 0, 0), font=font)
        left += count * (tile_width + PAD)
    return np.concatenate([np.asarray(header), grid])                          # (HEADER + rows, cols, 3)


def colour_correlation(predictions, targets):
    """Pearson correlation of the colour casts (an image's mean RGB minus its mean grey level) of predictions
    and their targets, (B, 3, H, W) x 2 -> a float in [-1, 1]: ~1 when renderings take the scene's colours,
    ~0 for grey or scene-independent colours (0 when the predictions have no cast at all)."""
    def casts(x):
        rgb = np.asarray(x, dtype=np.float64).mean(axis=(2, 3))                 # (B, 3)
        cast = (rgb - rgb.mean(axis=1, keepdims=True)).ravel()                 # (B*3,)
        return cast - cast.mean()
    p, t = casts(predictions), casts(targets)
    scale = np.sqrt((p * p).sum() * (t * t).sum())
    return float((p * t).sum() / scale) if scale > 0 else 0.0


def tile_rows(tiles):
    """uint8 (rows, cols, H, W, 3) -> one white-bordered image."""
    rows, cols, height, width, _ = tiles.shape
    canvas = np.full((rows * (height + PAD) + PAD, cols * (width + PAD) + PAD, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            top, left = PAD + r * (height + PAD), PAD + c * (width + PAD)
            canvas[top:top + height, left:left + width] = tiles[r, c]
    return canvas


def enlarge(image, factor):
    """uint8 (..., H, W, 3) -> (..., H*factor, W*factor, 3): each pixel a factor x factor block, so a 32x32 view
    can be seen on a screen without the blur of an interpolating viewer."""
    return image.repeat(factor, axis=-3).repeat(factor, axis=-2)


def save_png(image, path):
    Image.fromarray(image).save(path)


def save_gif(frames, path, seconds_per_frame=0.1):
    """uint8 (N, H, W, 3) -> an endlessly looping GIF."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(seconds_per_frame * 1000), loop=0)
