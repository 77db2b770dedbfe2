"""Integration tier: whole flows (service, feature store, demo, production profile, faults)."""
