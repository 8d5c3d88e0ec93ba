"""Realtime client: the registered model from MLflow, live emotion labels on tracked faces."""
