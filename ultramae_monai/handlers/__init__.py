"""ultramae_monai.handlers: the ignite handlers and metrics the bundles declare in their configs."""

from ultramae_monai.handlers.classification_metrics import (
    ClassificationMetric,
    ClassificationReport,
    classification_metrics,
    confusion_matrix_png,
)
from ultramae_monai.handlers.metrics_writer import MetricsJSONWriter
from ultramae_monai.handlers.physical_hausdorff import PhysicalHausdorffDistance, PhysicalHausdorffDistanceMetric
from ultramae_monai.handlers.pretraining import (
    FAULT_KILL_ENV,
    KindSamplerHandler,
    MetricsLogger,
    PretrainCheckpoint,
    ReconstructionPreview,
    StopAtStep,
)

__all__ = [
    "FAULT_KILL_ENV",
    "ClassificationMetric",
    "ClassificationReport",
    "KindSamplerHandler",
    "MetricsJSONWriter",
    "MetricsLogger",
    "PhysicalHausdorffDistance",
    "PhysicalHausdorffDistanceMetric",
    "PretrainCheckpoint",
    "ReconstructionPreview",
    "StopAtStep",
    "classification_metrics",
    "confusion_matrix_png",
]
