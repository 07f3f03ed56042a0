"""Benchmarks: one MAE pretraining step against the mask-token baseline and transformers' ViTMAE, with model
FLOPs, MFU and the data pipeline's throughput. Run ``maskkit bench`` (or ``python -m maskkit.bench``)."""

from maskkit.bench.cli import BenchSettings, add_parser, print_report, run_benchmark

__all__ = ["BenchSettings", "add_parser", "print_report", "run_benchmark"]
