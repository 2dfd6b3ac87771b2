"""Prefect flows over the DVC stage graph; no ML logic and no paths here."""
