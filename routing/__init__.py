"""Routing: tiers and follow-up channels matched to capacity and cost; simulation, control group."""
