"""ovdiff: open-vocabulary segmentation from diffusion-generated prototypes (OVDiff).

The package is importable without loading torch; heavy modules import lazily so that
`ovdiff --help` stays instant.
"""

__version__ = "0.1.0"
