"""Files in and out: input images, mask formats, the palette, the output folder's rules and legend."""
