"""Top-k dataset scans (paper Fig. 2): which images drive each feature map most.

`run_scan` scans a folder (or the bundled samples) into a store directory, in one
process or several under torchrun; `ScanRenderer` renders the crops and deconvnet
projections of the results; `montage` draws a Fig. 2-style figure.
"""

from convscope.scan.montage import montage
from convscope.scan.render import ScanRenderer, crop_box, engine_for_scan
from convscope.scan.scanner import ScanResult, default_layers, folder_source, resolve_layers, run_scan, samples_source
from convscope.scan.store import ImageSource, Manifest, ScanStore, ScanStoreError
from convscope.scan.topk import Entry, TopK

__all__ = [
    "Entry",
    "ImageSource",
    "Manifest",
    "ScanRenderer",
    "ScanResult",
    "ScanStore",
    "ScanStoreError",
    "TopK",
    "crop_box",
    "default_layers",
    "engine_for_scan",
    "folder_source",
    "montage",
    "resolve_layers",
    "run_scan",
    "samples_source",
]
