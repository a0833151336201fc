"""A user's own linen model for the training tests: nn.Conv/nn.Dense only, no `train` flag."""

import flax.linen as nn

NOT_A_MODULE = 3


class PlainCNN(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3), name="first")(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2, name="second")(x))
    x = nn.relu(nn.Dense(32)(x.mean((1, 2))))
    return nn.Dense(self.num_classes, name="classifier")(x)


class WrongWidth(nn.Module):
  """Gives 3 logits whatever the data: refused before training."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.Conv(4, (3, 3))(x).mean((1, 2)))
