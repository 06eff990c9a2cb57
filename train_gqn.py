"""Train a GQN: annealed pixel sigma and learning rate, TensorBoard logs, validation grids, checkpoints and resume.

Examples:
  python train_gqn.py --preset cpu-demo --run-dir runs/demo      (synthetic rooms, 3,000 steps: ~10 minutes on 2 cores)
  python train_gqn.py --dataset shepard_metzler_7_parts --data-dir /data/gqn --devices gpu:0,gpu:1
  python train_gqn.py --dataset rooms_ring --image-size 64 --train-scenes 2000   (renders DATA_DIR/rooms_ring-64px-2000)
  python train_gqn.py --resume runs/demo --max-steps 5000
"""
import os

from gqn import cpu  # noqa: E402  before mxnet: OpenMP threads, denormals flushed (gqn/cpu.py)

cpu.setup()

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass

import mxnet as mx
from mxnet import gluon
from tqdm import tqdm

import core
from gqn import amp, checkpoint, cli, files, locks, scene_format, training
from gqn.average import ParameterAverage
from gqn.datasets import ALL_DATASETS, SPLITS, dataset_root, max_context
from gqn.loop import Progress, Stop
from gqn.plots import plot_curves
from gqn.presets import PRESETS
from gqn.runs import RunLog, WriteFailed, ensure_dataset, new_run_dir, resolve_path, saved_config, writing
from gqn.schedules import linear_anneal, with_cooldown


LOCK = ".lock"  # RUN/.lock, held by the run's trainer (gqn/locks.py)
arg = core.option  # a field with its flag's help; the model's flags come from core.ModelConfig the same way
MODEL_FLAGS = [f for f in dataclasses.fields(core.ModelConfig) if f.name != "image_size"]  # size: from the data


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = arg("rooms_ring_camera", "dataset: DeepMind's seven, or a synthetic family rendered on first use",
                       sorted(ALL_DATASETS))
    data_dir: str = arg("datasets", "data root holding datasets as DATA_DIR/NAME/{train,test} (stored absolute)")
    max_context: int = arg(0, "most context views per scene; 0 = views per scene - 1 (the paper)", low=0)
    min_context: int = arg(1, "fewest context views of a training batch: each batch draws its k from "
                              "MIN..--max-context (validation draws from 1..--max-context)", low=1)
    batch_size: int = arg(36, "scenes per step, over all devices (paper: 36)", low=1)
    amp: bool = arg(None, "mixed precision (gqn/amp.py): bf16 on CPU (needs a CPU with bf16 kernels: AVX-512), "
                          "fp16 with dynamic loss scaling on GPU; neither --amp nor --no-amp = whichever is faster "
                          "here: bf16 where oneDNN has AMX, else fp32")
    sigma_initial: float = arg(2.0, "pixel standard deviation at step 0", above=0)
    sigma_final: float = arg(0.7, "pixel standard deviation after --sigma-steps", above=0)
    sigma_steps: int = arg(200000, "steps over which pixel sigma anneals linearly", low=1)
    lr_initial: float = arg(5e-4, "Adam learning rate at step 0", above=0)
    lr_final: float = arg(5e-5, "learning rate after --lr-steps", above=0)
    lr_steps: int = arg(1600000, "steps over which the learning rate anneals linearly", low=1)
    lr_warmup_steps: int = arg(0, "first steps, in which the learning rate rises linearly from 0 to --lr-initial "
                                  "(its decay then starts); 0 = none, as in the paper", low=0)
    lr_cooldown_steps: int = arg(0, "last steps before --max-steps, in which the learning rate falls linearly from "
                                    "its value there to --lr-cooldown-final; 0 = none", low=0)
    lr_cooldown_final: float = arg(0.0, "learning rate at --max-steps after a cool-down", low=0)
    max_steps: int = arg(2000000, "length of training in steps", low=1)
    average_steps: int = arg(0, "keep a moving average of the parameters over about this many steps, which "
                                "validation and the tools use (gqn/average.py); 0 = none, as in the paper", low=0)
    minutes: float = arg(0.0, "stop (with a checkpoint) after this many minutes; 0 = no limit", low=0)
    val_scenes: int = arg(72, "held-out scenes scored at each validation (at most the test split's)", low=1)
    val_every: int = arg(5000, "validate every this many steps", low=1)
    log_every: int = arg(100, "log training scalars every this many steps", low=1)
    checkpoint_every: int = arg(5000, "checkpoint every this many steps", low=1)
    log_dir: str = arg("runs", "runs are made in LOG_DIR/DATASET-TIME[-SUFFIX]")
    run_suffix: str = arg("", "appended to the run name")
    devices: str = arg("cpu", "comma-separated cpu, cpu:N or gpu:N, e.g. gpu:0,gpu:1: each batch is split over "
                              "them (data parallel)")
    kvstore: str = arg("device", "MXNet kvstore; dist_* for several machines (see README)",
                       ["device", "local", "dist_sync", "dist_device_sync", "dist_async"])
    micro_batch: int = arg(0, "scenes per forward/backward pass on each device: passes add their gradients, so "
                              "a step is unchanged and needs only one pass's memory; 0 = the device's whole share",
                           low=0)
    workers: int = arg(cli.DEFAULT_WORKERS, "data-decoding threads; 0 = in the training thread", low=0)
    seed: int = arg(0, "seed of data order, context draws, noise and initialisation", low=0)
    train_scenes: int = arg(2000, "training scenes of a synthetic family, rendered on first use (test split: a "
                                  "tenth; gqn/datasets.py names the dataset by them)", low=1)
    image_size: int = arg(64, "frame size rendered for a synthetic family (converted data: from its manifest)", low=4)


FLAG_NAMES = {"steps": "generation-steps"}  # L, beside --max-steps, --lr-steps and --sigma-steps


def add_flag(parser, f):
    """One flag of a config field: --x/--no-x for a boolean, else typed and checked against its valid range."""
    flag, meta = "--" + FLAG_NAMES.get(f.name, f.name.replace("_", "-")), f.metadata
    help = "%s (default: %s)" % (meta["help"], f.default)
    if f.type is bool:
        parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                            help=meta["help"])
    elif f.name == "devices":
        parser.add_argument(flag, dest=f.name, type=lambda text: cli.format_devices(cli.device_list(text)),
                            default=f.default, metavar="LIST", help=help)
    else:
        kind = f.type if f.type is str else cli.bounded(f.type, meta["low"], above=meta["above"])
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=meta["choices"], help=help)


def parse_args(argv=None):
    """-> (args, TrainConfig, {model flag: value}); the model's flags are core.ModelConfig's fields. Every value is
    checked here, before anything is written or rendered."""
    parser = cli.Parser(__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="defaults for a purpose (flags still win): "
                        + "; ".join("%s: %s" % (k, v) for k, v in PRESETS.items()))
    parser.add_argument("--resume", metavar="RUN", help="continue the run in directory RUN from its checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="same as --preset dry-run: seconds, tiny data")
    parser.add_argument("--run-dir", metavar="RUN", help="the new run's directory (default: "
                        "LOG_DIR/DATASET-TIME[-SUFFIX])")
    for f in list(dataclasses.fields(TrainConfig)) + MODEL_FLAGS:
        add_flag(parser, f)
    args = parser.parse_args(argv)
    preset = "dry-run" if args.dry_run else args.preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
        args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    model = {f.name: getattr(args, f.name) for f in MODEL_FLAGS}
    if not values["lr_warmup_steps"] < values["lr_steps"]:
        parser.error("--lr-warmup-steps %d: valid 0..%d (fewer than --lr-steps)"
                     % (values["lr_warmup_steps"], values["lr_steps"] - 1))
    if values["image_size"] % core.SCALE:
        parser.error("--image-size %d: must be a multiple of %d" % (values["image_size"], core.SCALE))
    problem = cli.gpu_problem(cli.device_list(values["devices"]))
    if problem:
        parser.error(problem)
    return args, TrainConfig(**values), model


def prepare_data(config):
    """-> (root, train manifest) of the dataset; a synthetic family is rendered on first use."""
    root = dataset_root(config.data_dir, config.dataset, config.image_size, config.train_scenes)
    try:
        ensure_dataset(root, config.dataset, config.image_size, config.train_scenes, SPLITS, config.workers)
        return root, scene_format.read_manifest(os.path.join(root, "train"))
    except (OSError, ValueError) as error:  # OSError: e.g. no permission to write a synthetic split
        raise SystemExit("train_gqn.py: %s" % error)


# What a resume may change: schedules, lengths, logging cadence, and how the work is run (devices, precision: a
# process picks these at start anyway). The rest makes the run what it is (model, data, batch, seed): changing it
# is a new run.
RESUMABLE = ("sigma_initial", "sigma_final", "sigma_steps", "lr_initial", "lr_final", "lr_steps", "lr_warmup_steps",
             "lr_cooldown_steps", "lr_cooldown_final", "max_steps", "minutes", "val_every", "log_every",
             "checkpoint_every", "workers", "micro_batch", "devices", "amp", "data_dir")


def flag(name):
    return "--" + FLAG_NAMES.get(name, name.replace("_", "-"))


def resume_config(args, config, model_values, argv):
    """(saved TrainConfig with the RESUMABLE flags given on the command line, saved model dict) of --resume RUN_DIR;
    SystemExit naming a flag given with another value than the run's that a resume cannot change."""
    found = checkpoint.find_checkpoint(os.path.join(args.resume, "checkpoint"))
    if found is None:
        raise SystemExit("train_gqn.py: --resume %s: no checkpoint there (expected %s/checkpoint/state.json)"
                         % (args.resume, args.resume))
    state = checkpoint.load_state(found)
    unknown = core.ModelConfig.unknown(state["model"])
    if unknown:
        raise SystemExit("train_gqn.py: --resume %s: %s has model settings %s that this version does not know"
                         % (args.resume, os.path.join(found, checkpoint.STATE), ", ".join(unknown)))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = TrainConfig(**{name: value for name, value in saved_config(state).items() if name in known})
    given = {token.split("=", 1)[0] for token in (argv if argv is not None else sys.argv[1:])}
    changes = {}
    for name, value, before in ([(n, getattr(config, n), getattr(saved, n)) for n in sorted(known)]
                                + [(n, v, state["model"][n]) for n, v in sorted(model_values.items())]):
        if not {flag(name), "--no-" + flag(name)[2:]} & given or value == before:
            continue
        if name not in RESUMABLE:
            raise SystemExit("train_gqn.py: --resume %s: %s %s differs from the run's %s and cannot change on resume "
                             "(a new run can); a resume may change %s"
                             % (args.resume, flag(name), value, before, " ".join(map(flag, RESUMABLE))))
        changes[name] = value
    return dataclasses.replace(saved, **changes), state["model"]


@dataclass
class Run:
    """What the loop works with: the config, model and trainer, data, devices and the run's log."""
    config: TrainConfig
    model: core.GQN
    trainer: gluon.Trainer
    ctxs: list
    root: str                 # the dataset's DATA_DIR/NAME
    k: int                    # most context views per scene
    rank: int                 # this worker's rank (0 without dist_*)
    dir: str
    val: list                 # the fixed validation batches
    val_masks: list           # the object masks of their query views (None: the data has none)
    log: RunLog
    last_good: int = None     # step of the last checkpoint saved
    average: ParameterAverage = None  # the parameters' moving average (--average-steps), or None


def save(run, step):
    """Checkpoint the parameters after checking they are finite, and the logs up to `step` with them; rank 0 only."""
    training.check_parameters(run.model, step, run.dir, run.last_good)
    if run.rank == 0:
        run.log.sync()
        state = {"step": step, "config": dataclasses.asdict(run.config), "model": run.model.config.to_dict(),
                 "max_context": run.k, "time": time.time()}
        directory = os.path.join(run.dir, "checkpoint")
        try:
            checkpoint.save_checkpoint(directory, run.model, run.trainer, state, run.average)
        except (OSError, mx.base.MXNetError) as error:
            reason = error.strerror if isinstance(error, OSError) else str(error).strip().splitlines()[-1]
            raise WriteFailed("cannot write the checkpoint of step %d to %s (%s)" % (step, directory, reason))
    run.last_good = step


def train(run, step, stop):
    """The loop, in a fixed order: schedule -> forward/backward -> step -> log -> validate -> checkpoint."""
    config, log = run.config, run.log
    sigma_at = linear_anneal(config.sigma_initial, config.sigma_final, config.sigma_steps)
    lr_at = with_cooldown(linear_anneal(config.lr_initial, config.lr_final, config.lr_steps, config.lr_warmup_steps),
                          config.max_steps, config.lr_cooldown_steps, config.lr_cooldown_final)
    deadline = time.time() + 60 * config.minutes if config.minutes > 0 else float("inf")
    batches = training.training_batches(run.root, config.batch_size, run.k, config.seed + run.rank, config.workers,
                                        step, config.min_context)
    progress = Progress(step, config.max_steps, deadline, run.rank == 0)
    tick, tick_step, terms, validated = time.time(), step, None, None
    while step < config.max_steps and not stop and time.time() < deadline:
        sigma, lr = sigma_at(step), lr_at(step)
        run.trainer.set_learning_rate(lr)
        mx.random.seed(training.noise_seed(config.seed, run.rank, step))
        terms = training.train_step(run.model, run.trainer, next(batches), run.ctxs, sigma, config.batch_size,
                                    config.micro_batch)
        step += 1
        if run.average is not None:
            run.average.update(step)
        progress.queued(terms)
        if step % config.log_every == 0:
            values = training.mean_terms(terms)
            training.check_finite(values, step, run.dir, run.last_good)
            speed = (step - tick_step) * config.batch_size / (time.time() - tick)
            tick, tick_step = time.time(), step
            log.scalars("train", dict(values, samples_per_s=speed), step)
            log.scalars("schedule", {"lr": lr, "sigma": sigma}, step)
            progress.bar.set_postfix(elbo="%.1f" % values["elbo"], kl="%.3g" % values["kl"],
                                     mse="%.4f" % values["mse"], samples_s="%.1f" % speed)
        if step % config.val_every == 0 and run.rank == 0:
            run_validation(run, step, sigma)
            validated = step
        if step % config.checkpoint_every == 0:
            save(run, step)
    progress.close()
    if terms is not None and run.last_good != step:
        save(run, step)
        if run.rank == 0 and validated != step:
            run_validation(run, step, sigma_at(step))
    return step


def run_validation(run, step, sigma):
    with run.average.swapped_in() if run.average is not None else contextlib.nullcontext():  # what the tools use
        metrics, grid = training.validate(run.model, run.val, sigma, seed=run.config.seed + 777,
                                          query_masks=run.val_masks)
    run.log.scalars("val", metrics, step)
    run.log.grid(grid, step)
    tqdm.write("step %d  validation: %s" % (step, "  ".join("%s %.4g" % kv for kv in metrics.items())))


def devices(config):
    problem = cli.gpu_problem(cli.device_list(config.devices))  # again: a resumed run brings its own --devices
    if problem:
        raise SystemExit("train_gqn.py: %s" % problem)
    ctxs = cli.contexts(cli.device_list(config.devices))
    if config.batch_size % len(ctxs):
        raise SystemExit("train_gqn.py: --batch-size %d does not split evenly over %d devices (--devices %s)"
                         % (config.batch_size, len(ctxs), config.devices))
    return ctxs


def build(config, model_config, ctxs, kv):
    """Model (hybridized, with its prior twin) and Adam trainer of the paper."""
    mx.random.seed(config.seed)
    model = core.GQN(model_config, mixed_precision=amp.enabled())
    model.initialize(mx.init.Xavier(), ctx=ctxs)
    model.hybridize(static_alloc=True, static_shape=True)
    model.generator().hybridize(static_alloc=True, static_shape=True)
    adam = {"learning_rate": config.lr_initial, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}
    distributed = not isinstance(kv, str)
    trainer = gluon.Trainer(model.collect_params(), "adam", adam, kvstore=kv,
                            update_on_kvstore=False if distributed else None)
    amp.init_trainer(trainer)  # fp16 only: MXNet's dynamic loss scaler
    if distributed:
        training.start_kvstore(trainer, kv)
    training.accumulate_gradients(model, config.batch_size // len(ctxs), config.micro_batch)
    return model, trainer


def main(argv=None):
    args, config, model_values = parse_args(argv)
    if args.resume:
        # read before the lock: the kvstore decides which process takes it; the lock then refuses a second trainer
        config, model_values = resume_config(args, config, model_values, argv)
        if args.run_dir:
            raise SystemExit("train_gqn.py: --run-dir %s with --resume %s: --resume names the run directory; give it "
                             "alone" % (args.run_dir, args.resume))
    if config.lr_cooldown_steps > config.max_steps:
        raise SystemExit("train_gqn.py: --lr-cooldown-steps %d: valid 0..%d (the run's --max-steps)"
                         % (config.lr_cooldown_steps, config.max_steps))
    # Paths are stored absolute, so the run resumes, evaluates and renders from any current directory; a
    # resumed run's relative ones (shipped or older runs) are relative to its directory.
    base = args.resume or os.getcwd()
    config = dataclasses.replace(config, data_dir=resolve_path(config.data_dir, base),
                                 log_dir=resolve_path(config.log_dir, base))
    run_dir = os.path.abspath(args.resume or args.run_dir or new_run_dir(config.log_dir, config.dataset,
                                                                         config.run_suffix))
    kv, rank, num_workers = training.make_kvstore(config.kvstore)
    new_dir = rank == 0 and not os.path.exists(run_dir)
    held = contextlib.ExitStack()
    if rank == 0:  # one trainer per run directory; the other workers of a dist_* run only read it
        try:
            held.enter_context(locks.directory_lock(run_dir, LOCK))
        except locks.DirectoryLocked as error:
            raise SystemExit("train_gqn.py: %s: another trainer runs there; wait for it to end or stop it" % error)
    try:
        with held:
            if rank == 0:
                claim_run_dir(run_dir, args.resume)
            start(args, config, model_values, run_dir, kv, rank, num_workers)
    finally:
        if new_dir:  # a run that failed before writing anything leaves no empty directory behind
            with contextlib.suppress(OSError):
                os.rmdir(run_dir)


def claim_run_dir(run_dir, resume):
    """Refuse a new run over a finished one; remove what cut saves left (this process holds the lock)."""
    directory = os.path.join(run_dir, "checkpoint")
    if not resume and checkpoint.find_checkpoint(directory):
        raise SystemExit("train_gqn.py: --run-dir %s already holds a run; continue it with --resume %s, or choose "
                         "another directory" % (run_dir, run_dir))
    checkpoint.remove_stale(directory)


def start(args, config, model_values, run_dir, kv, rank, num_workers):
    """Data, model, the run's log, the loop, and the run's end."""
    ctxs = devices(config)
    use_amp, why = amp.choose(config.amp, ctxs[0])
    try:
        training.check_micro_batch(config.batch_size // len(ctxs), config.micro_batch)
        if use_amp:  # process-wide, before any model is built or any backward pass runs
            amp.init(ctxs[0])
    except (ValueError, amp.AmpUnsupported) as error:
        raise SystemExit("train_gqn.py: %s" % error)
    if rank == 0:  # one writer of a synthetic dataset; the other workers read it after the barrier
        root, manifest = prepare_data(config)
    if num_workers > 1:
        kv._barrier()
    if rank != 0:
        root, manifest = prepare_data(config)
    try:
        k = max_context(config.max_context, manifest["views_per_scene"], config.dataset)
    except ValueError as error:
        raise SystemExit("train_gqn.py: %s" % error)
    if config.min_context > k:
        raise SystemExit("train_gqn.py: --min-context %d: valid 1..%d (the most context views, --max-context)"
                         % (config.min_context, k))
    model_config = core.ModelConfig(**dict(model_values, image_size=manifest["frame_size"]))
    model, trainer = build(config, model_config, ctxs, kv)
    found = checkpoint.find_checkpoint(os.path.join(run_dir, "checkpoint")) if args.resume else None
    step = checkpoint.load_checkpoint(found, model, trainer, ctxs)["step"] if found else 0
    average = ParameterAverage(model, config.average_steps) if config.average_steps else None
    if average is not None and found:
        checkpoint.load_average(found, average, ctxs)
    try:
        if rank == 0:
            with writing(os.path.join(run_dir, "config.json")) as path:
                files.write_atomically(path, json.dumps(
                    {"config": dataclasses.asdict(config), "model": model_config.to_dict()}, indent=1).encode())
        log = RunLog(run_dir, rank == 0, step)
    except WriteFailed as error:
        raise SystemExit("train_gqn.py: %s" % error)
    if rank == 0:
        print("run %s (%s step %d)\n%s\n%s\n%s; precision %s\n%s" % (
            run_dir, "resumed at" if found else "new, from", step, json.dumps(dataclasses.asdict(config)),
            json.dumps(model_config.to_dict()), cpu.isa(), why, cpu.wait_policy()), flush=True)
    per_device = config.micro_batch or config.batch_size // len(ctxs)
    try:
        val, val_masks = training.validation_batches(root, config.val_scenes, k, per_device, ctxs[0])
    except ValueError as error:
        raise SystemExit("train_gqn.py: %s" % error)
    run = Run(config, model, trainer, ctxs, root, k, rank, run_dir, last_good=step if found else None,
              val=val, val_masks=val_masks, log=log, average=average)
    if rank == 0:
        from gqn.board import write_layout  # late, as RunLog's events: mxboard's protos clash with tensorboard's
        write_layout(log.events)
    stop = Stop()
    try:
        step = train(run, step, stop)
    except (training.NonFiniteLoss, scene_format.DataError) as error:  # DataError names the shard and record
        raise SystemExit("train_gqn.py: %s" % error)
    except WriteFailed as error:
        raise SystemExit("train_gqn.py: %s; stopping. %s, when it can be written again"
                         % (error, training.where_to_go_on(run.dir, run.last_good)))
    finally:
        log.close()
    finish(run, step, stop, num_workers)


def finish(run, step, stop, num_workers):
    """Per-worker parameters of a dist_* run, the curves, and the exit status: 128 + the signal's number after a
    signal, so a script tells an interrupted run from a finished one."""
    if num_workers > 1:
        run.model.save_parameters(os.path.join(run.dir, "rank%d.params" % run.rank))
    if run.rank == 0:
        plot_curves(os.path.join(run.dir, "metrics.jsonl"), os.path.join(run.dir, "curves.png"), run.dir)
        print("stopped at step %d%s; run in %s (curves.png, val-grid-latest.png)"
              % (step, " (signal %d)" % stop.signal if stop else "", run.dir))
    if stop:
        raise SystemExit(128 + stop.signal)


if __name__ == "__main__":
    main()
