"""Object detection: boxes, anchors, the assignment, losses, NMS and the task the training
steps call (RetinaNet, `daq_jax.models.retinanet`)."""

from daq_jax.detection.config import DetectionConfig
from daq_jax.detection.task import Detection

__all__ = ["Detection", "DetectionConfig"]
