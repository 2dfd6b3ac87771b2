"""Web-text cleaning for English and Chinese: normalisation, boilerplate lines, PII, quality filters, dedup."""
