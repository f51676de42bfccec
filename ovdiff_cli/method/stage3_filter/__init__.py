"""Stage 3, paper §3 "Category pre-filtering": an image-text model keeps the classes likely present in a target."""
