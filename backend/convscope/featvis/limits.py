"""The bounds of a feature-visualisation request (no torch here: the CLI parser reads them)."""

MAX_STEPS = 4096
MIN_SIZE = 16
MAX_SIZE = 512
DEFAULT_STEPS = 256
OBJECTIVE_NAMES = ("channel", "unit", "logit")
