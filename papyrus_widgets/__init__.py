"""papyrus-widgets: papyrus image retrieval inside Jupyter."""

__version__ = "0.1.0"
