"""Helpers the steps share about the run they are in: reading Prefect's records of upsell runs, and the fault
hook crash tests use to kill the process around an outward call."""
