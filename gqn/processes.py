"""Pool worker processes that die with the process that started them and leave Ctrl-C to it."""
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def init_worker(parent_pid):
    """Initializer of a process pool's workers: the kernel kills the worker when its parent dies, and the
    worker ignores SIGINT.

    Without the first, the workers of a killed parent live on as orphans and race with its rerun. Without the
    second, Ctrl-C to the process group can kill a multiprocessing.Pool worker while it holds the task
    queue's lock, and Pool.terminate then waits for that lock for ever; the parent gets the Ctrl-C and ends
    the pool. Linux ties the death signal to the thread that forked the worker: create pools in a thread
    that outlives them (the main thread).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the death signal was set
        os._exit(1)
