"""Pool worker processes that die with the process that started them and leave Ctrl-C to it; a command's exit
status that a late Ctrl-C cannot change."""
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


def exit_status(main):
    """main()'s exit status, with SIGINT ignored from then on: a script's `sys.exit(exit_status(main))`.

    While the interpreter shuts down, Python puts back the default action of every signal it handles (death by the
    signal, exit status -2 for SIGINT) but leaves an ignored signal ignored. A Ctrl-C landing in that teardown (a
    process pool's included: tens of milliseconds) turned a finished conversion into one killed by SIGINT. main()
    handles its own KeyboardInterrupt; one arriving after main() returned counts as an interruption: 130.
    """
    try:
        code = main()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = 130
    return code
