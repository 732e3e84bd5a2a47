"""recorderd: a 24/7 camera recorder for NVR boxes."""

__version__ = "0.1.0"
