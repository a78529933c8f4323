"""chatd: a self-hostable WhatsApp-style messaging server on trio."""

__version__ = "0.1.0"
