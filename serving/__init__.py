"""Serving: the BentoML service the CRM calls, its request schemas and the prediction log."""
