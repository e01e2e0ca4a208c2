"""Multi-worker training (a TFJob with several workers): the phases of
``components.training.train`` as a custom training loop under MultiWorkerMirroredStrategy.

Keras 3's ``Model.fit`` does not run under that strategy (keras-team/keras#20585, still
open in Keras 3.15): before its first step fit reduces an input batch across the
workers with ``strategy.reduce``, which fails with "Attempt to convert a value
(PerReplica...)". What else Keras does works there (compile, predict, saving), so
the loop keeps the model, the compiled optimizer (learning-rate schedule) and loss,
the class weights and the callbacks of ``components.training.train`` (validation metrics, best
epoch, epoch log, time budget) and replaces fit's steps only. Unlike fit on GPUs, the
step is not XLA-compiled.

Every worker must run the same collectives in the same order, or one of them waits
forever. What keeps them in step:

- an epoch is the same fixed number of global batches on every worker (the dataset
  repeated, auto-sharded by element: the TFRecord files may be fewer than the workers);
- the chief decides when to stop (early stopping, time budget), and its decision is
  broadcast at every epoch end;
- batch normalization's moving statistics, which Keras 3 lets every replica update
  from its own images, are averaged at every epoch end, so that all workers validate
  (predict shares the validation images out among them) and save the same model;
- a restarted job resumes from the chief's output folder: at start each worker's
  folder becomes a copy of the chief's (the others train in scratch folders that do not
  survive a restart), so all skip the same phases and resume at the same epoch.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tarfile
import time
from pathlib import Path

import numpy as np

from components.core.errors import UserError


def replica_batch_size(global_batch_size: int, replicas: int) -> int:
    """Images each replica takes per step. ``train.batch_size`` is the global batch, as
    with fit under MirroredStrategy, and every replica takes an equal share of it (of a
    pass's last, short batch as equal as it goes): all hold the same batch, none idles."""
    if global_batch_size % replicas:
        raise UserError(
            f"train.batch_size {global_batch_size} does not split evenly over {replicas} replicas "
            f"(workers x devices each): use a multiple of {replicas}"
        )
    return global_batch_size // replicas


def wait_for_workers(timeout_s: float) -> None:
    """Return once every other worker named in TF_CONFIG accepts connections; raise
    UserError if one does not within ``timeout_s``.

    MultiWorkerMirroredStrategy waits forever for a missing worker, inside TensorFlow
    with the GIL held (no Python timer can interrupt it), so this runs before it.
    Meanwhile this worker listens on its own TF_CONFIG port, so that workers waiting
    for each other all see each other; the port is free again for TensorFlow's server
    when this returns."""
    tf_config = json.loads(os.environ["TF_CONFIG"])
    cluster, task = tf_config["cluster"], tf_config["task"]
    own = cluster[task["type"]][int(task["index"])]
    peers = {address for job in ("chief", "worker") for address in cluster.get(job, []) if address != own}
    dual_stack = socket.has_dualstack_ipv6()
    with socket.create_server(
        ("", int(own.rpartition(":")[2])),
        family=socket.AF_INET6 if dual_stack else socket.AF_INET,
        dualstack_ipv6=dual_stack,
    ):
        deadline = time.monotonic() + timeout_s
        while True:
            peers = {peer for peer in peers if not _accepts_connections(peer)}
            if not peers:
                return
            if time.monotonic() > deadline:
                raise UserError(
                    f"{task['type']} {task['index']} could not reach {', '.join(sorted(peers))} (TF_CONFIG) "
                    f"within {timeout_s:.0f} s: are all the TFJob's replicas running?"
                )
            time.sleep(1)


def _accepts_connections(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:  # not resolvable yet, refused, timed out
        return False


# ---- values from the chief -------------------------------------------------------


def _from_chief(strategy, values: np.ndarray) -> np.ndarray:
    """``values`` as the chief has them, on every worker (same shape everywhere): an
    all-reduce to which only replica 0 contributes. MultiWorkerMirroredStrategy numbers
    the chief's replicas first (worker 0's when there is no chief task, as
    ``components.training.train_job.is_chief``)."""
    import tensorflow as tf

    def keep_replica_zero(value):
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.where(first, value, tf.zeros_like(value)))

    @tf.function
    def broadcast(value):
        return strategy.run(keep_replica_zero, args=(value,))

    return strategy.experimental_local_results(broadcast(tf.constant(values)))[0].numpy()


def _tar(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def copy_folder_from_chief(strategy, folder: Path) -> None:
    """Make ``folder`` on every worker a copy of the chief's (on other workers it is a
    scratch folder). A job restarted after a failure then resumes on every worker from
    the state only the chief kept (frozen phase done, checkpoint, best epoch so far),
    instead of the chief resuming at one epoch and the others starting over."""
    own = _tar(folder)
    size = int(_from_chief(strategy, np.array([len(own)], np.int64))[0])
    padded = -(-size // 4) * 4  # bytes travel as int32 words
    words = np.frombuffer(own[:padded].ljust(padded, b"\0"), np.int32)
    chiefs = _from_chief(strategy, words).tobytes()[:size]
    if chiefs != own:
        shutil.rmtree(folder)
        folder.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(chiefs)) as tar:
            tar.extractall(folder, filter="data")


# ---- the training loop -------------------------------------------------------------


def _per_example_loss(loss):
    """The compiled loss (a Keras Loss or a loss function) without its reduction: one
    value per image, for tf.nn.compute_average_loss to weigh and average over the
    global batch."""
    import keras

    return loss.call if isinstance(loss, keras.losses.Loss) else loss


def _step_function(model, class_weight: dict | None, global_batch_size: int):
    """One global step: every replica's forward and backward pass on its share of the
    batch, gradients summed across all replicas by the optimizer. Every image weighs
    1 / global_batch_size (times its class weight), also in a pass's last, short batch.
    Returns the step's loss and the class-weighted counts of correct images and of
    images (for the accuracy fit would report)."""
    import tensorflow as tf

    strategy = model.distribute_strategy
    optimizer = model.optimizer
    per_example_loss = _per_example_loss(model.loss)
    weight_of_class = (
        tf.constant([class_weight[c] for c in range(len(class_weight))], tf.float32) if class_weight else None
    )

    def replica_step(images, labels):
        weights = tf.ones_like(labels, tf.float32) if weight_of_class is None else tf.gather(weight_of_class, labels)
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            loss = tf.nn.compute_average_loss(
                per_example_loss(labels, probabilities), sample_weight=weights, global_batch_size=global_batch_size
            )
            if model.losses:  # layer regularization, added to the loss as fit does
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled_loss = optimizer.scale_loss(loss)  # mixed precision: the loss-scale optimizer's factor
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        correct = tf.cast(tf.equal(tf.argmax(probabilities, -1), tf.cast(labels, tf.int64)), tf.float32)
        return tf.stack([loss, tf.reduce_sum(weights * correct), tf.reduce_sum(weights)])

    @tf.function
    def step(iterator):
        images, labels = next(iterator)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(images, labels)), axis=None)

    return step


def _average_moving_statistics(model):
    """A function that sets every worker's batch-normalization moving means and
    variances to their average over the replicas. Keras 3 lets each replica update them
    from its own images only (tf.keras averaged the updates): averaged at each epoch
    end, every worker validates and saves one model, with statistics of all the images
    (the moving averages are linear, so this equals averaging every step's update).
    Batch normalization that is not trainable never updates them: left alone."""
    import keras
    import tensorflow as tf

    strategy = model.distribute_strategy
    statistics = [
        variable
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        for variable in (layer.moving_mean, layer.moving_variance)
    ]

    def replica_means():
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in statistics])

    @tf.function
    def average():
        means = strategy.run(replica_means)
        for variable, mean in zip(statistics, means):
            variable.assign(strategy.experimental_local_results(mean)[0])

    return average if statistics else lambda: None


def fit_phase(
    model,
    train_ds,
    *,
    steps_per_epoch: int,
    first_epoch: int,
    last_epoch: int,
    backup_dir: Path,
    callbacks: list,
    class_weight: dict | None,
    global_batch_size: int,
) -> None:
    """Train ``model`` (compiled, under its strategy) from ``first_epoch`` to
    ``last_epoch`` as ``components.training.fit.fit_locally`` does with fit: the same callbacks,
    a checkpoint after each epoch in ``backup_dir`` to resume from (removed when the
    phase ends), epochs of ``steps_per_epoch`` global batches of ``train_ds``."""
    import keras
    import tensorflow as tf

    strategy = model.distribute_strategy
    per_replica = replica_batch_size(global_batch_size, strategy.num_replicas_in_sync)
    with strategy.scope():
        # Built here, not inside the step: variables cannot be created in a replica context.
        model.optimizer.build(model.trainable_variables)
    next_epoch = tf.Variable(first_epoch, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, next_epoch=next_epoch)
    manager = tf.train.CheckpointManager(checkpoint, str(backup_dir), max_to_keep=1)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resuming from {manager.latest_checkpoint} at epoch {int(next_epoch.numpy()) + 1}", flush=True)

    options = tf.data.Options()
    # By element, not by file: every worker reads every shard and keeps its share of each batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # Full global batches only: a pass's last, short batch could leave a replica no image,
    # and batch normalization in training fails on an empty batch. Repeated first, so no
    # image is dropped: the next pass fills the batch.
    full = train_ds.unbatch().repeat().batch(global_batch_size, drop_remainder=True)
    batches = iter(strategy.experimental_distribute_dataset(full.with_options(options)))
    step = _step_function(model, class_weight, global_batch_size)
    average_moving_statistics = _average_moving_statistics(model)
    # No Keras progress bar, as in components.training.train: epoch_log_callback prints each epoch's line.
    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=last_epoch, steps=steps_per_epoch)
    print(
        f"{strategy.num_replicas_in_sync} replicas, global batch {global_batch_size} ({per_replica} each), "
        f"{steps_per_epoch} steps per epoch",
        flush=True,
    )

    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(int(next_epoch.numpy()), last_epoch):
        callback_list.on_epoch_begin(epoch)
        totals = []
        for batch in range(steps_per_epoch):
            callback_list.on_train_batch_begin(batch)  # the learning-rate schedule
            totals.append(step(batches).numpy())
        loss, correct, seen = np.sum(totals, axis=0)
        logs = {"loss": float(loss / steps_per_epoch), "accuracy": float(correct / seen)}
        average_moving_statistics()
        next_epoch.assign(epoch + 1)
        callback_list.on_epoch_end(epoch, logs)
        manager.save()  # after the callbacks, as in components.training.train: an epoch is saved once it is logged
        model.stop_training = bool(_from_chief(strategy, np.array([model.stop_training], np.int32))[0])
        if model.stop_training:
            break
    callback_list.on_train_end()
    shutil.rmtree(backup_dir)
