"""Protégé: move production LLM traffic from an expensive teacher to cheap distilled students."""

__version__ = "0.1.0"
