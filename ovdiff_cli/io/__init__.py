"""Files in and out: input images, mask formats, the palette, the output folder's rules and legend, what
a folder job writes per image (`outputs`), and contact sheets of support sets (`sheets`)."""
