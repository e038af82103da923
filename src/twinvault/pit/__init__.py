"""Points in time: reconstructing an image as it was at an instant, a snapshot, or live."""
