"""Prefect flows: one per stage, the whole-pipeline flow, and the ``emotion`` command line."""
