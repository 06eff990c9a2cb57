"""Annealing schedules of the paper (pixel sigma 2.0 -> 0.7 over 200K steps, learning rate 5e-4 -> 5e-5 over 1.6M),
as pure functions of the step built on MXNet's PolyScheduler (linear decay, power 1), and a final cool-down."""
from mxnet.lr_scheduler import PolyScheduler


def linear_anneal(initial, final, steps, warmup=0):
    """step -> value, linear from `initial` at step 0 to `final` at `steps`, constant after.

    With warmup > 0 the value first rises linearly from 0 to `initial` over `warmup` steps, and the decay
    to `final` then runs from step `warmup` to `steps` (PolyScheduler's warm-up).
    """
    if steps < 1:
        raise ValueError("annealing steps %r: must be a positive integer" % (steps,))
    if not 0 <= warmup < steps:
        raise ValueError("warm-up steps %r: must be 0 or more and fewer than the annealing steps %d" % (warmup, steps))
    poly = PolyScheduler(max_update=int(steps), base_lr=initial, pwr=1, final_lr=final, warmup_steps=int(warmup),
                         warmup_begin_lr=0.0)

    def schedule(step):
        # PolyScheduler keeps its last value past max_update; clamping makes this a pure function of step.
        return float(poly(min(max(int(step), 0), int(steps))))
    return schedule


def with_cooldown(schedule, end, steps, final):
    """step -> value: `schedule` up to step end - steps, then linear from its value there to `final` at `end`,
    constant after (the decay of a warm-up/stable/decay schedule); steps = 0 returns `schedule` itself."""
    if not 0 <= steps <= end:
        raise ValueError("cool-down steps %r: must be 0..%d (the last steps of the run's %d)" % (steps, end, end))
    if not steps:
        return schedule
    start = end - steps
    top = schedule(start)

    def cooled(step):
        if step <= start:
            return schedule(step)
        return top + (final - top) * min(step - start, steps) / steps
    return cooled
