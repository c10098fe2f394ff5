"""One APIRouter per resource: alerts, links (reply, approval, unsubscribe), health."""
