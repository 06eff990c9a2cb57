"""Batches of (context views, query camera, target view) from our RecordIO scene shards, for Gluon.

Shapes: B batch, K = max_context context slots, S views per scene, H = W frame size.
A batch has k real context views (k drawn per batch from 1..max_context, or fixed), placed first
in the K slots; the other slots are zeros with context_mask 0, so every batch has the same shape
(training trims the slots no scene uses: trim_context). The query view is never among the context views.
Batches are a pure function of (seed, epoch): the batch sampler draws scene order, k and a view
seed per scene, and the decoding threads decode only the k + 1 views they need.
Bad data raises scene_format.DataError naming the file and record: at open time for the manifest and the
shards' structure, when a scene is read for its checksum and frames.
"""
import itertools
import os
from collections import deque, namedtuple
from concurrent.futures import ThreadPoolExecutor

import cv2
import mxnet as mx
import numpy as np
from mxnet import gluon

from gqn import scene_format

class Batch(namedtuple("Batch", ["context_frames", "context_cameras", "context_mask",
                                 "query_camera", "target"])):
    """context_frames (B, K, 3, H, W) float32 in [0, 1]; context_cameras (B, K, 7); context_mask
    (B, K) float32, 1 for a real view; query_camera (B, 7); target (B, 3, H, W).

    Loader batches hold mx.nd arrays; build_batch's
    hold numpy arrays. as_in_context gives mx.nd arrays on the device the model runs on.
    """
    __slots__ = ()

    def as_in_context(self, ctx):
        return Batch(*(a.as_in_context(ctx) if isinstance(a, mx.nd.NDArray) else to_nd(a, ctx) for a in self))


def trim_context(batch):
    """The Batch without the context slots that are padding in every scene: (B, K, ...) -> (B, k, ...), k the most
    real views of any scene (at least 1; real views come first). The model's output is the same (padding adds zeros
    to r and gets no attention), but its representation network runs on B*k views instead of B*K: with k drawn
    from 1..5 per training batch, cpu-demo's training loop runs ~1.14x the samples/s (README, Speed). A
    hybridized model re-plans its memory when k changes, which costs little next to a step."""
    mask = batch.context_mask
    mask = mask.asnumpy() if isinstance(mask, mx.nd.NDArray) else np.asarray(mask)  # (B, K)
    real = np.flatnonzero(mask.any(axis=0))
    k = int(real[-1]) + 1 if real.size else 1
    if k == mask.shape[1]:
        return batch
    return batch._replace(context_frames=batch.context_frames[:, :k], context_cameras=batch.context_cameras[:, :k],
                          context_mask=batch.context_mask[:, :k])


def to_nd(array, ctx=mx.cpu()):
    """A numpy array -> an NDArray on `ctx`. On cpu(0) a float32 array is shared, not copied (DLPack; the numpy
    array becomes read-only): mx.nd.array's copy is synchronous and waits in the engine's queue behind every
    operation already pushed, so a training loop that makes its next batch while a step runs would stall until
    that step ends. Elsewhere, a copy."""
    if ctx == mx.cpu() and array.dtype == np.float32:
        return mx.nd.from_numpy(np.ascontiguousarray(array))
    return mx.nd.array(array, ctx=ctx, dtype=array.dtype)


def transform_cameras(raw):
    """DeepMind's cameras (..., 5) x, y, z, yaw, pitch -> the model's (..., 7)
    x, y, z, sin(yaw), cos(yaw), sin(pitch), cos(pitch)."""
    raw = np.asarray(raw, np.float32)
    yaw, pitch = raw[..., 3:4], raw[..., 4:5]
    return np.concatenate([raw[..., :3], np.sin(yaw), np.cos(yaw), np.sin(pitch), np.cos(pitch)],
                          -1)


def decode_frames(jpegs, size=None, views=None):
    """JPEG byte strings -> uint8 RGB frames (N, H, W, 3). DataError naming the first frame that does not
    decode, or is not size x size pixels when a size is given; frames are named by `views` (default 0..N-1)."""
    frames = []
    for view, jpeg in zip(range(len(jpegs)) if views is None else views, jpegs):
        frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) if len(jpeg) else None
        if frame is None:
            raise scene_format.DataError("frame %d does not decode as a JPEG" % view)
        if size and frame.shape[:2] != (size, size):
            raise scene_format.DataError("frame %d is %dx%d pixels; expected %dx%d"
                                         % (view, frame.shape[1], frame.shape[0], size, size))
        frames.append(frame)
    return np.stack(frames)[..., ::-1]  # cv2 decodes to BGR


def choose_views(num_views, k, rng):
    """Indices (k + 1,) of distinct views: the query first, then k context views."""
    if not 1 <= k <= num_views - 1:
        raise ValueError("k=%d context views is not in 1..%d for %d views per scene"
                         % (k, num_views - 1, num_views))
    return rng.permutation(num_views)[:k + 1]


def make_example(frames, cameras, max_context):
    """One example from the chosen views, query first: frames (k+1, H, W, 3) uint8, raw cameras
    (k+1, 5) -> (context_frames (K, 3, H, W), context_cameras (K, 7), context_mask (K,),
    query_camera (7,), target (3, H, W)), float32 numpy."""
    k = len(frames) - 1
    if k > max_context:
        raise ValueError("%d context views do not fit max_context=%d" % (k, max_context))
    images = frames.transpose(0, 3, 1, 2).astype(np.float32) / 255  # (k+1, 3, H, W)
    cams = transform_cameras(cameras)  # (k+1, 7)
    context_frames = np.zeros((max_context,) + images.shape[1:], np.float32)
    context_cameras = np.zeros((max_context, 7), np.float32)
    context_frames[:k], context_cameras[:k] = images[1:], cams[1:]
    mask = (np.arange(max_context) < k).astype(np.float32)
    return context_frames, context_cameras, mask, cams[0], images[0]


def stack_examples(examples):
    """Batch of numpy arrays stacked from a list of make_example tuples."""
    return Batch(*(np.stack(field) for field in zip(*examples)))


def build_batch(scenes, k, max_context, rng):
    """A numpy Batch from decoded scenes [(frames (S, H, W, 3) uint8 RGB, raw cameras (S, 5))]:
    for each scene a random query view and k other views as context (for tests and evaluation)."""
    examples = []
    for frames, cameras in scenes:
        views = choose_views(len(frames), k, rng)
        examples.append(make_example(frames[views], cameras[views], max_context))
    return stack_examples(examples)


class SceneDataset(gluon.data.Dataset):
    """The scenes of root/split: item i is (JPEG byte strings (S,), raw cameras (S, 5)).

    Opening checks the manifest against the shards (scene_format.open_split); reading a scene checks its
    checksum and view count. Every read opens the shard file for itself, so any thread may read.
    """

    def __init__(self, root, split):
        self.split_dir = os.path.join(root, split)
        self.manifest, self._offsets = scene_format.open_split(self.split_dir)
        self._starts = np.cumsum([0] + [len(o) for o in self._offsets])  # scene i: shard whose range holds it

    def __len__(self):
        return int(self._starts[-1])

    def locate(self, index):
        """(.rec path, record number in it, byte offset of the record) of scene `index`."""
        if not 0 <= index < len(self):
            raise IndexError("scene %d is not in 0..%d" % (index, len(self) - 1))
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        rec = scene_format.shard_paths(self.split_dir, self.manifest["shards"][shard]["name"])[0]
        return rec, int(index - self._starts[shard]), int(self._offsets[shard][index - self._starts[shard]])

    def __getitem__(self, index):
        rec, number, offset = self.locate(index)
        frames, cameras = scene_format.read_scene(rec, offset, number)
        if len(frames) != self.manifest["views_per_scene"]:
            raise scene_format.DataError("%s: record %d: %d views; the manifest says %d"
                                         % (rec, number, len(frames), self.manifest["views_per_scene"]))
        return frames, cameras

    def where(self, index):
        """'PATH record N (scene I)', for error messages."""
        rec, number, _ = self.locate(index)
        return "%s: record %d (scene %d)" % (rec, number, index)


class QueryDataset(gluon.data.Dataset):
    """Examples keyed by (scene index, k, view seed), as drawn by ContextBatchSampler."""

    def __init__(self, scenes, max_context):
        self.scenes, self.max_context = scenes, max_context

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, key):
        index, k, view_seed = key
        jpegs, cameras = self.scenes[index]
        views = choose_views(len(jpegs), k, np.random.default_rng(view_seed))
        try:
            frames = decode_frames([jpegs[v] for v in views], self.scenes.manifest["frame_size"], views)
        except scene_format.DataError as error:
            raise scene_format.DataError("%s: %s" % (self.scenes.where(index), error)) from None
        return make_example(frames, cameras[views], self.max_context)


class ContextBatchSampler(gluon.data.Sampler):
    """Yields batches of (scene index, k, view seed) keys, one k per batch (min_context..max_context, or fixed_k),
    drawn from (seed, epoch).

    Each pass over the sampler is one epoch and advances `epoch`, so a resumed run that passes the
    epoch it stopped at sees the batches it would have seen.
    """

    def __init__(self, num_scenes, batch_size, max_context, shuffle=True, seed=0, fixed_k=None,
                 last_batch="discard", epoch=0, skip_batches=0, min_context=1):
        if last_batch not in ("keep", "discard"):
            raise ValueError("last_batch=%r; valid: 'keep', 'discard'" % (last_batch,))
        self.num_scenes, self.batch_size, self.max_context = num_scenes, batch_size, max_context
        self.min_context = min_context
        self.shuffle, self.seed, self.fixed_k = shuffle, seed, fixed_k
        self.last_batch, self.epoch, self.skip_batches = last_batch, epoch, skip_batches

    def __len__(self):
        if self.last_batch == "discard":
            return self.num_scenes // self.batch_size
        return -(-self.num_scenes // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        skip, self.skip_batches = self.skip_batches, 0  # a resumed epoch skips what was trained on, once
        order = rng.permutation(self.num_scenes) if self.shuffle else np.arange(self.num_scenes)
        for number, start in enumerate(range(0, len(self) * self.batch_size, self.batch_size)):
            scenes = order[start:start + self.batch_size]
            k = self.fixed_k or int(rng.integers(self.min_context, self.max_context + 1))
            view_seeds = rng.integers(0, 2 ** 63, len(scenes))
            if number >= skip:
                yield [(int(i), k, int(s)) for i, s in zip(scenes, view_seeds)]


class Loader:
    """Batches of ContextBatchSampler's keys, made by `workers` decoding threads (none: in the caller), in order.

    The decoding threads only decode and stack numpy arrays (JPEG decoding releases the GIL); the mx.nd Batch is
    made in the calling thread. At most 2 * workers batches are in flight; a loop that leaves mid-epoch ends
    the threads when the generator is closed, or at exit (concurrent.futures joins them).
    """

    def __init__(self, dataset, sampler, workers):
        self.dataset, self.sampler, self.workers = dataset, sampler, workers

    def __len__(self):
        return len(self.sampler)

    def _numpy_batch(self, keys):
        return stack_examples([self.dataset[key] for key in keys])

    def __iter__(self):
        keys = iter(self.sampler)
        if not self.workers:
            for batch_keys in keys:
                yield _to_nd(self._numpy_batch(batch_keys))
            return
        with ThreadPoolExecutor(self.workers) as pool:
            pending = deque(pool.submit(self._numpy_batch, k) for k in itertools.islice(keys, 2 * self.workers))
            while pending:
                batch = pending.popleft().result()
                batch_keys = next(keys, None)
                if batch_keys is not None:
                    pending.append(pool.submit(self._numpy_batch, batch_keys))
                yield _to_nd(batch)


def _to_nd(arrays):
    return Batch(*map(to_nd, arrays))


def _check_range(name, value, low, high):
    if not (isinstance(value, (int, np.integer)) and low <= value <= high):
        raise ValueError("%s=%r; valid: an integer in %d..%d" % (name, value, low, high))


def make_loader(root, split, batch_size, max_context, shuffle=True, num_workers=0, seed=0,
                fixed_k=None, epoch=0, last_batch="discard", skip_batches=0, min_context=1):
    """A Loader of mx.nd Batches over root/split (see the module docstring for the sampling).

    max_context: K, at most S - 1; min_context: the fewest real context views a batch draws (1..K); fixed_k: use
    exactly this many (1..K) instead of drawing k per batch; epoch: the first epoch's number (for resuming);
    last_batch: 'discard' keeps every batch the same size, 'keep' yields the remainder too;
    skip_batches: leave out the first batches of the first epoch (a resumed run), drawing the same keys.
    num_workers: decoding threads (0: decode in the caller). Threads, not processes: JPEG decoding releases the
    GIL, and forked processes inherit the trainer's signal handlers, which can hang a pool's shutdown for ever.
    """
    scenes = SceneDataset(root, split)
    views = scenes.manifest["views_per_scene"]
    _check_range("max_context", max_context, 1, views - 1)
    _check_range("batch_size", batch_size, 1, max(len(scenes), 1))
    _check_range("min_context", min_context, 1, max_context)
    if fixed_k is not None:
        _check_range("fixed_k", fixed_k, 1, max_context)
    sampler = ContextBatchSampler(len(scenes), batch_size, max_context, shuffle, seed, fixed_k,
                                  last_batch, epoch, skip_batches, min_context)
    return Loader(QueryDataset(scenes, max_context), sampler, num_workers)
