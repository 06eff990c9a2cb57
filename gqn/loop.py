"""What a training loop needs beside the model: a progress bar that counts finished steps, and a stop flag that
SIGINT and SIGTERM set."""
import signal
import time

from tqdm import tqdm


class Stop:
    """Set by SIGINT/SIGTERM: the loop then saves a checkpoint and the run exits with 128 + the signal's number,
    as a shell reports a process that signal ended. A second signal ends the process at once (the last
    checkpoint is whole: saves are atomic)."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)

    def __bool__(self):
        return self.signal is not None


class Progress:
    """The terminal's progress bar, counting finished steps: a step is finished when its loss values are ready.

    MXNet's engine runs asynchronously: train_step returns as soon as the step is queued. Waiting for the previous
    step's loss before counting keeps one step queued (the engine never idles) while the bar moves at the speed
    steps really finish. With a deadline (--minutes) the bar's total is the step the run will reach by then, at
    the mean rate so far, so its ETA is the deadline.
    """

    def __init__(self, step, max_steps, deadline, enabled):
        self.max_steps, self.deadline = max_steps, deadline
        # smoothing=0: the rate is the mean since the start, validations included, so the ETA holds over the run
        self.bar = tqdm(total=max_steps, initial=step, unit="step", disable=not enabled, dynamic_ncols=True,
                        smoothing=0)
        self.started, self.start_step, self.pending = time.time(), step, None

    def queued(self, terms):
        """Count the step before the one just queued (`terms`) once it has finished."""
        if self.pending is not None:
            self.finished(self.pending)
        self.pending = terms

    def finished(self, terms):
        terms[0]["elbo"].wait_to_read()
        self.bar.update(1)
        done, now = self.bar.n - self.start_step, time.time()
        if self.deadline < float("inf") and done:
            reach = self.bar.n + done / (now - self.started) * max(self.deadline - now, 0)
            self.bar.total = int(min(self.max_steps, max(reach, self.bar.n)))

    def close(self):
        if self.pending is not None:
            self.finished(self.pending)
        self.bar.close()
