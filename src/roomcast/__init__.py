"""roomcast: real-time rooms and server push for Django."""

__version__ = "0.1.0"
