"""The train state, and the jitted-to-be train and eval steps."""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import daq_jax.nn as qnn
from daq_jax import quant
from daq_jax.data.info import DatasetInfo
from daq_jax.detection import Detection
from daq_jax.quant import gradient
from daq_jax.quant.exact import exact
from daq_jax.training.config import TrainConfig

AUX_LOSS_WEIGHT = 0.4  # Inception-v3's auxiliary classifier (torchvision's reference recipe)


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes, and everything a checkpoint holds."""

  step: jax.Array
  params: Any
  batch_stats: Any
  quant_state: Any
  opt_state: Any
  key: jax.Array  # raw uint32 key data, so checkpoints hold a plain array


def init_train_state(
  model: nn.Module, tx: optax.GradientTransformation, info: DatasetInfo, seed: int, sharding=None
) -> TrainState:
  """A fresh `TrainState`, initialised under jit and placed with `sharding` (the replicated
  sharding of the mesh in training; None leaves placement to JAX)."""
  placement = {} if sharding is None else {"out_shardings": sharding}
  return jax.jit(functools.partial(_fresh_state, model, tx, info, seed), **placement)()


def init_quant_state(model: nn.Module, info: DatasetInfo, seed: int, sharding=None) -> dict:
  """The quantizer state alone of a fresh `TrainState` (the same values; under jit, the
  parameters' initialisation that it does not read is compiled away)."""
  placement = {} if sharding is None else {"out_shardings": sharding}
  fresh = functools.partial(_fresh_state, model, optax.identity(), info, seed)
  return jax.jit(lambda: fresh().quant_state, **placement)()


def _fresh_state(model, tx, info, seed):
  key = jax.random.PRNGKey(seed)
  params_key, dropout_key, train_key = jax.random.split(key, 3)
  dummy = jnp.zeros((2, *info.image_shape), jnp.float32)
  variables = model.init({"params": params_key, "dropout": dropout_key}, dummy, train=False)
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    quant_state=variables.get(qnn.STATE_COLLECTION, {}),
    opt_state=tx.init(params),
    key=train_key,
  )


def normalize(images: jax.Array, info: DatasetInfo, dtype) -> jax.Array:
  """uint8 images to the model's input: (x/255 - mean) / std, on the device."""
  mean = jnp.asarray(info.mean, jnp.float32)
  std = jnp.asarray(info.std, jnp.float32)
  return ((images.astype(jnp.float32) / 255 - mean) / std).astype(dtype)


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def statistics_input(quant_state: dict) -> dict:
  """The `quant_stats` collection the step feeds, as zeros, to get the quantizer's statistics
  of the step as its cotangent (`daq_jax.nn.ops`): one `gradient.init_statistics()` in each
  quantized layer's op, where its state is in `quant_state`."""
  return jax.tree.map(
    lambda _: gradient.init_statistics(),
    quant_state,
    is_leaf=lambda node: isinstance(node, dict) and "wgrad_clip" in node,
  )


def step_loss(
  state: TrainState,
  batch,
  *,
  model,
  info,
  label_smoothing,
  input_dtype,
  detection=None,
  memory: str = "keep",
):
  """(loss_fn(params, quant_variables) -> (loss, (metrics, batch_stats)), quant_variables):
  what `train_step` differentiates, under its memory mode (`daq_jax.quant.memory`)."""
  images = normalize(batch["image"], info, input_dtype)
  labels = batch.get("label")
  dropout_key, quant_key = jax.random.split(jax.random.fold_in(state.key, state.step))

  def loss_fn(params, quant_variables):
    variables = {"params": params, "batch_stats": state.batch_stats, **quant_variables}
    out, updates = model.apply(
      variables,
      images,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": dropout_key, qnn.RNG_STREAM: quant_key},
    )
    if detection is not None:
      loss, parts = detection.loss(out, batch)
      return loss, (parts, updates.get("batch_stats", {}))
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = cross_entropy(logits, labels, label_smoothing).mean()
    if aux is not None:
      loss += AUX_LOSS_WEIGHT * cross_entropy(aux, labels, label_smoothing).mean()
    return loss, (
      {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)},
      updates.get("batch_stats", {}),
    )

  quant_variables = {
    qnn.STATE_COLLECTION: state.quant_state,
    qnn.STATS_COLLECTION: statistics_input(state.quant_state),
  }
  return quant.memory.with_mode(loss_fn, memory), quant_variables


def train_step(
  state: TrainState,
  batch,
  *,
  model,
  tx,
  info,
  label_smoothing,
  input_dtype,
  detection=None,
  memory: str = "keep",
  exact_arithmetic: bool = True,
):
  """One SGD step; the new quantization state comes out of the backward pass, and with it the
  quantizer's statistics (`metrics["quant"]`). `detection` (a `daq_jax.detection.Detection`):
  the detector's loss on the batch's boxes instead of the cross-entropy of its labels.
  `memory`: what the step keeps between its passes (`daq_jax.quant.memory.MODES`); the step's
  float products are rounded as written (`quant.exact`), so every mode gives the same bits
  (`exact_arithmetic=False`: as XLA fuses them, for benchmarks.train_step's comparison)."""
  step = functools.partial(
    _train_step,
    model=model,
    tx=tx,
    info=info,
    label_smoothing=label_smoothing,
    input_dtype=input_dtype,
    detection=detection,
    memory=memory,
  )
  return exact(step)(state, batch) if exact_arithmetic else step(state, batch)


def _train_step(state, batch, *, model, tx, info, label_smoothing, input_dtype, detection, memory):
  loss_fn, quant_variables = step_loss(
    state,
    batch,
    model=model,
    info=info,
    label_smoothing=label_smoothing,
    input_dtype=input_dtype,
    detection=detection,
    memory=memory,
  )
  (loss, (parts, batch_stats)), grads, new = quant.value_and_grad(loss_fn, has_aux=True)(
    state.params, quant_variables
  )
  quant_state = new[qnn.STATE_COLLECTION]
  updates, opt_state = tx.update(grads, state.opt_state, state.params, quant_state=quant_state)
  metrics = {
    "loss": loss,
    **parts,
    "grad_norm": jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))),
    "quant": new[qnn.STATS_COLLECTION],
  }
  if "stop" in batch:  # several processes: their stop requests (training.stops.AgreedStop)
    metrics["stop"] = jnp.max(batch["stop"])
  params = optax.apply_updates(state.params, updates)
  # Checked by the loop before any checkpoint: a finite loss can still give inf parameters.
  metrics["finite"] = jnp.all(jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]))
  new_state = state.replace(
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    quant_state=quant_state,
    opt_state=opt_state,
  )
  return new_state, metrics


def eval_step(state: TrainState, batch, *, model, info, input_dtype, detection=None):
  """Sums over the unmasked examples: loss, top-1 and top-5 hits, count; for clips also
  `clips`, every clip's logits with its video, label and mask (gathered, not summed). For
  `detection`: the loss sum and count, and `detections`, every image's detections with its
  index, scale and mask (gathered)."""
  images = normalize(batch["image"], info, input_dtype)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  variables[qnn.STATE_COLLECTION] = state.quant_state
  logits = model.apply(variables, images, train=False, rngs={qnn.RNG_STREAM: state.key})
  if detection is not None:
    return _eval_detection(logits, batch, detection)
  labels, mask = batch["label"], batch["mask"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  rank = jnp.sum(logits > jnp.take_along_axis(logits, labels[:, None], 1), axis=-1)
  weight = mask.astype(jnp.float32)
  sums = {
    "loss": jnp.sum(loss * weight),
    "top1": jnp.sum((rank < 1) * weight),
    "top5": jnp.sum((rank < 5) * weight),
    "count": jnp.sum(weight),
  }
  if "stop" in batch:  # as in train_step
    sums["stop"] = jnp.max(batch["stop"])
  if "video" in batch:  # clips: their logits, for the prediction per video on the host
    sums["clips"] = {"logits": logits, "video": batch["video"], "label": labels, "mask": mask}
  return sums


def _eval_detection(outputs, batch, detection) -> dict:
  weight = batch["mask"].astype(jnp.float32)
  # The loss per image (its own foreground count), summed over the real images.
  per_image = jax.vmap(
    lambda o0, o1, b: detection.loss((o0[None], o1[None]), jax.tree.map(lambda v: v[None], b))[0]
  )(*outputs, {k: batch[k] for k in ("boxes", "classes", "box_valid", "crowd")})
  sums = {"loss": jnp.sum(per_image * weight), "count": jnp.sum(weight)}
  if "stop" in batch:
    sums["stop"] = jnp.max(batch["stop"])
  found = detection.detect(outputs)
  sums["detections"] = {
    **found,
    "image_index": batch["image_index"],
    "scale": batch["scale"],
    "mask": batch["mask"],
  }
  return sums


def compile_steps(
  model, tx, info, cfg: TrainConfig, replicated, donate: bool = True, exact_arithmetic: bool = True
):
  """(train_step, eval_step) jitted with the state replicated over the mesh
  (`exact_arithmetic`: `train_step`'s)."""
  input_dtype = jnp.dtype(cfg.model.dtype)
  detection = Detection(cfg.detection, info.image_shape[0]) if info.is_detection else None
  train = jax.jit(
    functools.partial(
      train_step,
      model=model,
      tx=tx,
      info=info,
      label_smoothing=cfg.label_smoothing,
      input_dtype=input_dtype,
      detection=detection,
      memory=cfg.memory,
      exact_arithmetic=exact_arithmetic,
    ),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,) if donate else (),
  )
  evaluate = jax.jit(
    functools.partial(
      eval_step, model=model, info=info, input_dtype=input_dtype, detection=detection
    ),
    out_shardings=replicated,
  )
  return train, evaluate
