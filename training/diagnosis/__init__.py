"""Symptom -> disease: knowledge base, synthetic patients, training and evaluation (issue 5)."""
