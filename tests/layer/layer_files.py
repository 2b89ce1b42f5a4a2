"""The layer's device-file list, where the offline install check loads it by path.

The list lives in refimage/layer_files.py (the builder and the tests import it
from there); ../shared/tools/bitbake/install-check/compare.py puts this folder
and the repository on its path and imports `layer_files`, so this name stays.
"""

from refimage.layer_files import REPO, DeviceFile, device_files

__all__ = ["REPO", "DeviceFile", "device_files"]
