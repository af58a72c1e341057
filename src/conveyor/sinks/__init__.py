"""Where predictions land: idempotent writers shared by the batch and stream paths."""
