"""Whole-product flows (the main job, the weekly report, routing jobs) as plain functions."""
