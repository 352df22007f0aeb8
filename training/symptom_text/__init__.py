"""Free-text symptom evaluation sets: phrasings, templates and generated descriptions."""
