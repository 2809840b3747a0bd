"""neuralflow viewer side (torch-free)."""
