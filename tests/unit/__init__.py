"""Unit tier: pure functions and small components; no training, no services, fast."""
