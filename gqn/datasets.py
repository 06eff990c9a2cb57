"""The table of scene datasets: DeepMind's seven gqn-datasets and our synthetic families."""
import os
from collections import namedtuple

DatasetInfo = namedtuple(
    "DatasetInfo", ["name", "frame_size", "views_per_scene", "train_files", "test_files"])

# DeepMind's gqn-datasets (their data_reader.py); file counts are per split.
DEEPMIND_DATASETS = {info.name: info for info in [
    DatasetInfo("jaco", 64, 11, 3600, 400),
    DatasetInfo("mazes", 84, 300, 1080, 120),
    DatasetInfo("rooms_free_camera_with_object_rotations", 128, 10, 2034, 226),
    DatasetInfo("rooms_ring_camera", 64, 10, 2160, 240),
    DatasetInfo("rooms_free_camera_no_object_rotations", 64, 10, 2160, 240),
    DatasetInfo("shepard_metzler_5_parts", 64, 15, 900, 100),
    DatasetInfo("shepard_metzler_7_parts", 64, 15, 900, 100),
]}

# Families rendered by gqn.synthetic; they have no fixed file count (None).
SYNTHETIC_FAMILIES = {info.name: info for info in [
    DatasetInfo("rooms_ring", 64, 10, None, None),
    DatasetInfo("shepard_metzler", 64, 15, None, None),
]}

ALL_DATASETS = {**DEEPMIND_DATASETS, **SYNTHETIC_FAMILIES}

SPLITS = ("train", "test")


def get_dataset(name, table=None):
    """The DatasetInfo called `name` in `table` (default: all datasets), else ValueError."""
    table = ALL_DATASETS if table is None else table
    if name not in table:
        raise ValueError("unknown dataset %r; valid names: %s" % (name, ", ".join(table)))
    return table[name]


def expected_files(info, split):
    """How many TFRecord files DeepMind publishes for this split (None for synthetic data)."""
    if split not in SPLITS:
        raise ValueError("unknown split %r; valid splits: %s" % (split, ", ".join(SPLITS)))
    return info.train_files if split == "train" else info.test_files


def file_stem(index, count):
    """DeepMind's file stem for file `index` (from 1) of `count`: both padded to len(str(count))."""
    width = len(str(count))
    return "%0*d-of-%0*d" % (width, index, width, count)


def synthetic_test_scenes(train_scenes):
    """Scenes in the test split of a synthetic dataset with `train_scenes` training scenes: a tenth."""
    return max(1, train_scenes // 10)


def dataset_root(data_dir, dataset, image_size, train_scenes):
    """DATA_DIR/NAME of converted data; a synthetic family is named by what was rendered, NAME-SIZEpx-SCENES with
    SCENES its training scenes, so datasets of different sizes don't collide. gqn.synthetic, the converter and the
    training, evaluation and rendering tools all find a dataset here."""
    if dataset in SYNTHETIC_FAMILIES:
        return os.path.join(data_dir, "%s-%dpx-%d" % (dataset, image_size, train_scenes))
    return os.path.join(data_dir, dataset)


def max_context(requested, views, dataset):
    """K, the most context views per scene: `requested`, or 0 for views - 1 (the paper); ValueError naming the range."""
    k = requested or views - 1
    if not 1 <= k <= views - 1:
        raise ValueError("--max-context %d: valid 1..%d for %s (%d views per scene)" % (k, views - 1, dataset, views))
    return k
