"""Prefect tasks: thin wrappers over ``emotion_core``, one task run per chunk of files."""
