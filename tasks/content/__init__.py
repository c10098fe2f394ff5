"""What the upsell writes to people: the policy for untrusted text and the final check of outgoing messages."""
