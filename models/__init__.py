"""Offline side of interest-stream: event logs, training, export, scoring, evaluation."""
