"""Data: the four record kinds, ingesting sources, preference splits, and web-text cleaning (``cleaning/``)."""
