"""The data floor: CRM tables (generated or ingested), validation, One ID and the prediction log."""
