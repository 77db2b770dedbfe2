"""Monitoring: weekly Evidently drift and business reports from the prediction log."""
