"""Diffusion architecture benchmark harness: one fixed protocol, any ``build_model(device)`` file."""

__version__ = "0.1.0"
