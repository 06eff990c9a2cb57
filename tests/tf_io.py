"""The only door to TensorFlow: DeepMind's own reader spec and TF's writer, to cross-check our TFRecords.

TensorFlow imported before mxnet in one process segfaults, so this module imports mxnet first;
nothing else in the toolkit imports tensorflow, and nothing imports this module at start-up
(training and conversion never need TensorFlow).
"""
import mxnet  # noqa: F401  (must precede tensorflow: the reverse order segfaults)
import numpy as np
import tensorflow as tf


def deepmind_feature_map(views):
    """The feature spec of DeepMind's data_reader.py for scenes of `views` views."""
    return {
        "frames": tf.io.FixedLenFeature(shape=[views], dtype=tf.string),
        "cameras": tf.io.FixedLenFeature(shape=[views * 5], dtype=tf.float32),
    }


def read_scenes(path, views):
    """[(frames: list of JPEG bytes, cameras (S, 5) float32)] of a TFRecord file, parsed by TF."""
    spec = deepmind_feature_map(views)
    scenes = []
    for serialized in tf.data.TFRecordDataset(path):
        example = tf.io.parse_single_example(serialized, spec)
        frames = [bytes(f) for f in example["frames"].numpy()]
        scenes.append((frames, example["cameras"].numpy().reshape(views, 5)))
    return scenes


def write_scenes(path, scenes):
    """Write [(frames, cameras (S, 5))] as a TFRecord file with TF's own Example and writer."""
    with tf.io.TFRecordWriter(path) as writer:
        for frames, cameras in scenes:
            feature = {
                "frames": tf.train.Feature(bytes_list=tf.train.BytesList(value=list(frames))),
                "cameras": tf.train.Feature(float_list=tf.train.FloatList(
                    value=np.asarray(cameras, np.float32).reshape(-1).tolist())),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
