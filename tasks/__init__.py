"""Prefect tasks, one module per upsell step, and the integration clients they use."""
