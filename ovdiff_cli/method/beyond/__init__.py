"""Beyond the paper: backends that fill the stages with today's models (SDXL/SD3/FLUX generators, dense extractor
families) and refinement of the label map (PAMR, SAM 2 region votes)."""
