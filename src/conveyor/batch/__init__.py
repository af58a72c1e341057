"""Batch scoring and batch forecasting on Apache Beam: DataFrame batches in, predictions to a sink.

Importing this package does not import Beam; the pipeline modules do, through `conveyor.errors.require`.
"""
