"""ultramae_monai.handlers: ignite handlers and metrics used by the fine-tuning bundles."""

from ultramae_monai.handlers.classification_metrics import (
    ClassificationMetric,
    ClassificationReport,
    classification_metrics,
    confusion_matrix_png,
)
from ultramae_monai.handlers.metrics_writer import MetricsJSONWriter

__all__ = [
    "ClassificationMetric",
    "ClassificationReport",
    "MetricsJSONWriter",
    "classification_metrics",
    "confusion_matrix_png",
]
