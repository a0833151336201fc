"""The model of a config, the train state, and the jitted-to-be train and eval steps."""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import daq_jax.nn as qnn
from daq_jax import models, quant
from daq_jax.data.info import DatasetInfo
from daq_jax.training import user_model
from daq_jax.training.config import TrainConfig

AUX_LOSS_WEIGHT = 0.4  # Inception-v3's auxiliary classifier (torchvision's reference recipe)


def _layer(cls, cfg: quant.QuantConfig | None, float_names: frozenset[str]):
  """`cls` with `quant=cfg`, except for the layers named in `float_names`."""

  def make(*args, name: str | None = None, **kwargs):
    return cls(*args, name=name, quant=None if name in float_names else cfg, **kwargs)

  return make


def create_model(cfg: TrainConfig, num_classes: int, input_shape=None):
  """The config's model: a zoo model with QConv/QDense layers of the config's method, or, for
  a user's model (`model.name` an import path) or `quant.rules`, the float model quantized by
  rules (`daq_jax.quantize`). `input_shape` (H, W, C) is needed to find a user model's first
  conv and last dense."""
  layer_cfg = cfg.quant.layer_config()
  dtype = jnp.dtype(cfg.model.dtype)
  if not (user_model.is_import_path(cfg.model.name) or cfg.quant.rules):
    float_names = frozenset(
      name
      for name, quantized in (
        ("stem_conv", cfg.quant.quantize_first_conv),
        ("head", cfg.quant.quantize_last_dense),
      )
      if not quantized
    )
    return models.create(
      cfg.model.name,
      num_classes=num_classes,
      dtype=dtype,
      conv=_layer(qnn.QConv, layer_cfg, float_names),
      dense=_layer(qnn.QDense, layer_cfg, float_names),
    )
  if user_model.is_import_path(cfg.model.name):
    model = user_model.build(user_model.import_model_class(cfg.model.name), num_classes, dtype)
  else:  # a zoo model with float layers, quantized by the rules
    model = models.create(cfg.model.name, num_classes=num_classes, dtype=dtype)
  rules = cfg.quant.rule_list()
  if not rules:
    if input_shape is None:
      raise ValueError("create_model: a user model needs input_shape to find its first conv")
    rules = user_model.default_rules(
      model,
      layer_cfg,
      input_shape,
      first_conv=cfg.quant.quantize_first_conv,
      last_dense=cfg.quant.quantize_last_dense,
    )
  wrapped = user_model.TrainingModel(qnn.quantize(model, rules))
  if input_shape is not None:
    user_model.check_outputs(wrapped, cfg.model.name, input_shape, num_classes)
  return wrapped


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


def train_step(state: TrainState, batch, *, model, tx, info, label_smoothing, input_dtype):
  """One SGD step; the new quantization state comes out of the backward pass."""
  images = normalize(batch["image"], info, input_dtype)
  labels = batch["label"]
  dropout_key, quant_key = jax.random.split(jax.random.fold_in(state.key, state.step))

  def loss_fn(params, quant_state):
    variables = {"params": params, "batch_stats": state.batch_stats}
    variables[qnn.STATE_COLLECTION] = quant_state
    out, updates = model.apply(
      variables,
      images,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": dropout_key, qnn.RNG_STREAM: quant_key},
    )
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = cross_entropy(logits, labels, label_smoothing).mean()
    if aux is not None:
      loss += AUX_LOSS_WEIGHT * cross_entropy(aux, labels, label_smoothing).mean()
    return loss, (logits, updates.get("batch_stats", {}))

  (loss, (logits, batch_stats)), grads, quant_state = quant.value_and_grad(loss_fn, has_aux=True)(
    state.params, state.quant_state
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params, quant_state=quant_state)
  metrics = {
    "loss": loss,
    "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    "grad_norm": jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))),
  }
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


def eval_step(state: TrainState, batch, *, model, info, input_dtype):
  """Sums over the unmasked examples: loss, top-1 and top-5 hits, count."""
  images = normalize(batch["image"], info, input_dtype)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  variables[qnn.STATE_COLLECTION] = state.quant_state
  logits = model.apply(variables, images, train=False, rngs={qnn.RNG_STREAM: state.key})
  labels, mask = batch["label"], batch["mask"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  rank = jnp.sum(logits > jnp.take_along_axis(logits, labels[:, None], 1), axis=-1)
  weight = mask.astype(jnp.float32)
  return {
    "loss": jnp.sum(loss * weight),
    "top1": jnp.sum((rank < 1) * weight),
    "top5": jnp.sum((rank < 5) * weight),
    "count": jnp.sum(weight),
  }


def compile_steps(model, tx, info, cfg: TrainConfig, replicated, donate: bool = True):
  """(train_step, eval_step) jitted with the state replicated over the mesh."""
  input_dtype = jnp.dtype(cfg.model.dtype)
  train = jax.jit(
    functools.partial(
      train_step,
      model=model,
      tx=tx,
      info=info,
      label_smoothing=cfg.label_smoothing,
      input_dtype=input_dtype,
    ),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,) if donate else (),
  )
  evaluate = jax.jit(
    functools.partial(eval_step, model=model, info=info, input_dtype=input_dtype),
    out_shardings=replicated,
  )
  return train, evaluate
