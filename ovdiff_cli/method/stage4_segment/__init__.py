"""Stage 4, paper §3 "Segmentation via prototype matching": targets resized, matched window by window, labelled."""
