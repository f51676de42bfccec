"""Model loading from spec strings (hub ids or local paths), one module per family; `roles` is the table of model roles."""
