"""The small core every room uses: typed configs, MLflow tracking, atomic file I/O, launching and hashing."""
