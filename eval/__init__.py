"""Evaluation tasks, metrics, arena and report card."""
