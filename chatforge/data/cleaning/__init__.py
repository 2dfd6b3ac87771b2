"""Web-text cleaning for English and Chinese: normalisation, boilerplate lines, PII, quality filters, dedup.

Documents run as datatrove pipelines on a datatrove executor (pipeline.py, executor.py); the rules live in
text.py, boilerplate.py, pii.py, filters.py and dedup.py, and blocks.py wraps them as pipeline steps.
"""
