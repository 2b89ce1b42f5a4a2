"""twelvefactor reference services."""
