"""`ovdiff serve`, the local web demo: `session` holds the work (one `api.Pipeline`), `app` the HTTP layer."""
