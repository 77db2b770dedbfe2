"""The test suite, in tiers: ``unit``, ``data``, ``model`` and ``integration`` (see conftest)."""
