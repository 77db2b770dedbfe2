"""Data tier: schemas, validation, One ID and expectations on generated or ingested data."""
