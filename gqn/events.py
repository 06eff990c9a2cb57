"""TensorBoard event files written in the caller's thread with mxboard's summaries, and cut back to a step on resume.

mxboard's SummaryWriter writes from a thread fed by a bounded queue: when a write fails (a full disk) the thread
dies and the next put() blocks the trainer for ever, deaf to SIGINT and SIGTERM. Here a failed write raises
OSError where the event is added.
"""
import glob
import os
import re
import socket
import struct
import time

from mxboard.proto.event_pb2 import Event, SessionLog
from mxboard.record_writer import masked_crc32c
from mxboard.summary import image_summary, scalar_summary

from gqn.files import write_atomically

PATTERN = "events.out.tfevents.*"
_NAME = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def encode(event):
    """One TFRecord: length, its masked CRC32C, the serialized event, its masked CRC32C."""
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def read_events(path):
    """-> (events of a file in order, whether it ended cleanly); a record cut by a kill ends the list."""
    with open(path, "rb") as f:
        data = f.read()
    events, at = [], 0
    while at + 12 <= len(data):
        length, = struct.unpack("<Q", data[at:at + 8])
        end = at + 12 + length + 4
        if end > len(data):
            break
        events.append(Event.FromString(data[at + 12:end - 4]))
        at = end
    return events, at == len(data)


def truncate_events(run_dir, step):
    """Drop the events of steps after `step` from the run's event files (written by a run killed after its
    checkpoint at `step`), so that a resumed run logs each step once."""
    for path in sorted(glob.glob(os.path.join(run_dir, PATTERN))):
        events, whole = read_events(path)
        kept = [e for e in events if e.step <= step]
        if len(kept) < len(events) or not whole:
            write_atomically(path, b"".join(map(encode, kept)))


def _next_name(run_dir, step):
    """A name that sorts after every event file of the run, its time field moved past theirs if need be.

    TensorBoard reads a run's files in name order, and a reader left running only moves on to a later name. Two
    resumes from one checkpoint within a second got one name: the second truncated the first's file and a live
    reader, past that file's old end, never saw the new run's steps.
    """
    taken = [int(m.group(1)) for m in map(_NAME.match, os.listdir(run_dir)) if m]
    seconds = max([int(time.time())] + [t + 1 for t in taken])
    return "events.out.tfevents.%010d.%s.%09d" % (seconds, socket.gethostname(), step)


class EventFile:
    """A new event file of a run starting (or resuming) at `step`.

    It opens with a file_version and a SessionLog START at step + 1: TensorBoard's readers then drop what they
    already hold of steps after `step`, so a TensorBoard left running over a resume shows each step once too.
    """

    def __init__(self, run_dir, step):
        self.path = os.path.join(run_dir, _next_name(run_dir, step))
        self.file = open(self.path, "wb")
        self.add(Event(file_version="brain.Event:2"))
        self.add(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))

    def add(self, event, step=None):
        event.wall_time = time.time()
        if step is not None:
            event.step = step
        self.file.write(encode(event))
        self.file.flush()  # a kill then loses nothing: the data is the kernel's

    def scalar(self, tag, value, step):
        self.add(Event(summary=scalar_summary(tag, value)), step)

    def image(self, tag, image, step):
        """`image` (C, H, W) uint8."""
        self.add(Event(summary=image_summary(tag, image)), step)

    def sync(self):
        os.fsync(self.file.fileno())

    def close(self):
        self.file.close()
