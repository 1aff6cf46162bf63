"""Ra-NEM: neural explanation masks trained to optimise insertion/deletion curves."""
__version__ = "0.1.0"
