"""Per-view object masks of synthetic scenes, stored beside a split's shards, and the masks of a batch's query views.

A synthetic split holds, for shard `{i}-of-{n}`, the file `{i}-of-{n}.masks.npz`: one array `masks`
(scenes of the shard, S, H, W) bool, True where a view shows an object (gqn.render.render_with_masks), so
scene j of the split is row j of the shards' masks in order. It is written under a temporary name and renamed
when complete. Converted DeepMind data has no masks: load_masks gives None and the object figures are left out.
"""
import copy
import io
import os
import zipfile

import numpy as np

from gqn import scene_format
from gqn.files import write_atomically
from gqn.loader import choose_views

SUFFIX = ".masks.npz"


def masks_path(split_dir, stem):
    """The masks file of the shard called `stem`."""
    return os.path.join(split_dir, stem + SUFFIX)


def _npz_bytes(masks):
    """np.savez_compressed's layout, with a fixed member date so that equal masks are equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        member = zipfile.ZipInfo("masks.npy", date_time=(1980, 1, 1, 0, 0, 0))
        member.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(member, "w") as f:
            np.lib.format.write_array(f, np.ascontiguousarray(masks, bool))
    return buffer.getvalue()


def write_masks(split_dir, stem, masks):
    """Write the masks (scenes, S, H, W) bool of one shard atomically."""
    write_atomically(masks_path(split_dir, stem), _npz_bytes(masks))


def missing_masks(split_dir, manifest):
    """Names of the shards of a split that have no masks file."""
    return [s["name"] for s in manifest["shards"] if not os.path.exists(masks_path(split_dir, s["name"]))]


def load_masks(split_dir):
    """Object masks (scenes, S, H, W) bool of every scene of a split, or None when the split has none.

    ValueError, naming the file, when only some shards have masks or a masks file does not fit its shard.
    """
    manifest = scene_format.read_manifest(split_dir)
    shards = manifest["shards"]
    missing = missing_masks(split_dir, manifest)
    if len(missing) == len(shards):
        return None
    if missing:
        raise ValueError("%s: masks of %d of %d shards are missing (first: %s); rerun `python -m gqn.synthetic` "
                         "or delete the *%s files" % (split_dir, len(missing), len(shards),
                                                      masks_path(split_dir, missing[0]), SUFFIX))
    parts = []
    for shard in shards:
        path = masks_path(split_dir, shard["name"])
        with np.load(path) as archive:
            masks = archive["masks"]
        size = manifest["frame_size"]
        want = (shard["scenes"], manifest["views_per_scene"], size, size)
        if masks.shape != want or masks.dtype != bool:
            raise ValueError("%s: masks of shape %s %s; its shard needs %s bool" % (path, masks.shape, masks.dtype,
                                                                                  want))
        parts.append(masks)
    return np.concatenate(parts)


def query_masks(masks, keys):
    """Masks (B, H, W) of the query views of a batch, from the split's masks (scenes, S, H, W) and the batch's
    ContextBatchSampler keys [(scene index, k, view seed)]: the loader's own choice of views, query first."""
    views = masks.shape[1]
    return np.stack([masks[index, choose_views(views, k, np.random.default_rng(seed))[0]]
                     for index, k, seed in keys])


def keyed_batches(loader):
    """(batch, keys) pairs of a gqn.loader.Loader: each batch beside the sampler keys it was made from.

    The copy of the sampler, taken before the loader starts its epoch, draws the same keys: batches are a pure
    function of the sampler's seed and epoch.
    """
    return zip(loader, copy.copy(loader.sampler))
