"""One writer per directory: an exclusive flock on a file in it, the file holding the writer's pid."""
import contextlib
import fcntl
import os
import time


class DirectoryLocked(Exception):
    """Another process holds the directory's lock; the message names its pid."""


def _pid_in(fd):
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except ValueError:
        return None  # the holder has not written its pid yet


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextlib.contextmanager
def directory_lock(directory, name, grace=10.0):
    """Hold DIRECTORY/NAME for the duration; DirectoryLocked naming the holder's pid when another process has it.

    The kernel drops an flock when the last process holding it dies, including the children that inherited
    it, so a lock left by a killed process is taken over. While the recorded pid is gone but its lock is still
    held (its children are being killed with it), this waits up to `grace` seconds. The file is removed on exit.
    """
    os.makedirs(directory, exist_ok=True)
    path, deadline = os.path.join(directory, name), time.monotonic() + grace
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(fd)
            os.close(fd)
            if pid is None or _alive(pid):
                raise DirectoryLocked("%s is in use by pid %s (lock file %s)" % (directory, pid or "unknown", path))
            if time.monotonic() > deadline:
                raise DirectoryLocked("%s is still held by child processes of pid %d, which is gone; stop them"
                                      % (path, pid))
            time.sleep(0.1)
            continue
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        os.close(fd)  # the holder removed the file between our open and flock: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    try:
        yield
    finally:
        os.remove(path)
        os.close(fd)


def lock_holder(directory, name):
    """The pid holding DIRECTORY/NAME ('unknown' before it wrote it), or None when nobody holds it."""
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _pid_in(fd) or "unknown"
    finally:
        os.close(fd)
