"""An exponential moving average of a model's parameters: the weights validation, evaluation, rendering and export use.

At a constant final learning rate the weights keep wandering around the minimum, and a run's validation MSE moves
by a few per cent from one check to the next; the average over the last few hundred steps sits nearer the middle.
`--average-steps N` keeps avg += (1 - decay) * (w - avg) with decay = 1 - 1/N per step, applied every EVERY steps
as one update of weight 1 - decay**EVERY, so that it costs a few element-wise operations per parameter every
EVERY steps rather than every step. Checkpoints hold it beside the weights (`average.params`), so a resumed run
continues the same average.
"""
import contextlib

EVERY = 10  # steps between updates


class ParameterAverage:
    """The average of `model`'s parameters over about the last `steps` steps, kept on the first device."""

    def __init__(self, model, steps):
        self.model, self.params = model, model.collect_params()
        self.rate = 1.0 - (1.0 - 1.0 / steps) ** EVERY  # weight of the current parameters in one update
        self.values = {name: p.data().copy() for name, p in self.params.items()}

    def update(self, step):
        """Called after each step's update, with the number of steps done."""
        if step % EVERY:
            return
        for name, param in self.params.items():
            average = self.values[name]
            average += self.rate * (param.data() - average)

    @contextlib.contextmanager
    def swapped_in(self):
        """The model holds the averaged parameters inside the block and its own ones again after it."""
        own = {name: p.data().copy() for name, p in self.params.items()}
        for name, param in self.params.items():
            param.set_data(self.values[name])
        try:
            yield
        finally:
            for name, param in self.params.items():
                param.set_data(own[name])

    def save(self, path):
        """Write the average as a parameter file of the model (model.load_parameters reads it)."""
        with self.swapped_in():
            self.model.save_parameters(path)

    def load(self, path, ctx):
        """Read an average written by save()."""
        with self.swapped_in():
            self.model.load_parameters(path, ctx=ctx)
            self.values = {name: p.data().copy() for name, p in self.params.items()}
