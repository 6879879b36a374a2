"""mobile-export: the MobileNet family from the papers to phones, with proven parity."""

__version__ = "0.1.0"
