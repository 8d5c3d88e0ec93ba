"""The plain library of the emotion pipeline: image I/O, stages, manifest, datasets, models.

Nothing here imports Prefect or MLflow.
"""
