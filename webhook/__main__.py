"""`python -m webhook`: serve the receiver with settings from the environment (UPSELL_*)."""

from webhook.serve import serve_receiver

if __name__ == "__main__":
    serve_receiver()
