"""The science of the batch-size trade-off: `noise` (estimators over tensors, torch) and
`fits` (models fitted across trials, NumPy only). Formulas and sources: docs/science.md.

Layer: science (the estimators; docs/architecture.md).
"""
