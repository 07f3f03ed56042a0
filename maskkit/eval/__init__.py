"""Evaluation of frozen encoders: feature extraction, weighted kNN, and MAE's linear probe.

>>> feats, labels = extract_features(encoder, train_loader, device="cuda", pool="mean")
>>> knn_accuracy(feats, labels, test_feats, test_labels, k=20, temperature=0.07)
>>> linear_probe(feats, labels, test_feats, test_labels).top1
"""

from maskkit.eval.features import extract_features, pool_tokens
from maskkit.eval.knn import knn_accuracy, knn_predict
from maskkit.eval.linear import LinearProbeResult, linear_probe, make_probe_head

__all__ = [
    "extract_features",
    "pool_tokens",
    "knn_predict",
    "knn_accuracy",
    "linear_probe",
    "LinearProbeResult",
    "make_probe_head",
]
