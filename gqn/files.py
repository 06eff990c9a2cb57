"""Files written so that a kill or a power cut leaves the old version or the new one, never a mixture."""
import os

TMP_SUFFIX = ".tmp"  # what a cut write leaves behind; readers ignore it and writers remove it


def fsync_path(path):
    """Push a written file's data (or a directory's entries) to the disk, so a rename of it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path, data):
    """Replace the file `path` by the bytes `data`: written to PATH.tmp, synced, renamed, directory synced."""
    tmp = path + TMP_SUFFIX
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))
