"""Helpers the steps share for reading Prefect's records of upsell runs."""
